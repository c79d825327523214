"""What the GPU evidence's sections share (benchmarks/gpu_evidence.py runs each as its own
process): the section's JSON rewritten after every row, rows that keep their error or the
reason they were skipped, a GPU sampler, subprocesses with a log and a time limit."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s, as benchmarks/gpu_bench.py


def section_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder shared by the sections")
    parser.add_argument("--json", type=Path, required=True, help="this section's JSON, rewritten after every row")
    parser.add_argument("--clips", type=Path, required=True, help="folder of the carried clips and their videos.csv")
    parser.add_argument("--deadline", type=float, required=True, help="wall-clock time (epoch s) the section ends by")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, nothing compiled")
    parser.add_argument("--smoke-compile", action="store_true", help="with --smoke: the compiled rows too")
    return parser.parse_args()


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def peak_bf16_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def mfu(flops_per_s: float) -> float | None:
    peak = peak_bf16_flops()
    return flops_per_s / peak if peak else None


def fresh_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


class SectionFile:
    """{"settings", "results", "notes"}, rewritten atomically after every change: the driver
    polls it, so a section stopped at its cap keeps every row that finished."""

    def __init__(self, path: Path, settings: dict):
        self.path = path
        self.data = {"settings": settings, "results": {}, "notes": []}
        self.write()

    def put(self, key: str, value) -> None:
        self.data["results"][key] = value
        self.write()

    def append(self, key: str, row: dict) -> None:
        self.data["results"].setdefault(key, []).append(row)
        self.write()

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        self.write()

    def write(self) -> None:
        write_json(self.path, self.data)


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, default=str))
    os.replace(partial, path)


class Rows:
    """Rows of a section, each kept with its status: ok (with its numbers), failed (with the
    error), or skipped (with the reason: too little of the section's time left, or a smoke run)."""

    def __init__(self, file: SectionFile, deadline: float):
        self.file, self.deadline = file, deadline

    def left(self) -> float:
        return self.deadline - time.time()

    def skip(self, key: str, what: dict, reason: str) -> None:
        print(f"{key} {what}: skipped ({reason})", flush=True)
        self.file.append(key, {**what, "status": "skipped", "reason": reason})

    def run(self, key: str, what: dict, estimate_s: float, fn, *args, **kwargs) -> dict | None:
        if self.left() < estimate_s:
            self.skip(key, what, f"{self.left():.0f} s left of the section's cap; the row needs ~{estimate_s:.0f} s")
            return None
        print(f"{key} {what}: running", flush=True)
        started = time.perf_counter()
        try:
            row = fn(*args, **kwargs)
        except Exception as err:  # keep the other rows of a short lease
            traceback.print_exc()
            self.file.append(key, {**what, "status": "failed", "error": f"{type(err).__name__}: {err}"[-3000:]})
            return None
        row = {**what, **row, "status": "ok", "row_s": time.perf_counter() - started}
        print(f"{key}: {json.dumps(row, default=str)}", flush=True)
        self.file.append(key, row)
        return row


class GpuSampler:
    """GPU utilisation (% of time a kernel ran) and memory in use, sampled by NVML on a thread
    every `period` s while the section runs; `window(start, end)` averages any stretch of it.
    Without a GPU (or NVML) there are no samples and every field is None."""

    def __init__(self, period: float = 0.2):
        self.period, self.samples, self.handle = period, [], None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:
            self.handle = None

    def __enter__(self) -> "GpuSampler":
        if self.handle is not None:
            threading.Thread(target=self._sample, name="gpu-sampler", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _sample(self) -> None:
        while not self._stop.wait(self.period):
            try:
                util = self._nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
                used = self._nvml.nvmlDeviceGetMemoryInfo(self.handle).used
            except Exception:
                continue
            self.samples.append((time.time(), util, used))

    def window(self, start: float, end: float) -> dict:
        chosen = [s for s in self.samples if start <= s[0] <= end]
        return {
            "gpu_util_mean": sum(s[1] for s in chosen) / len(chosen) / 100 if chosen else None,
            "gpu_memory_used_peak_gib": max(s[2] for s in chosen) / 2**30 if chosen else None,
            "gpu_samples": len(chosen),
        }


def run_logged(argv: list[str], log: Path, timeout: float, env: dict | None = None) -> int:
    """Run `argv` with its output appended to `log`, in its own process group (killed whole,
    its workers with it, after `timeout` s); its exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        handle.write(f"$ {' '.join(map(str, argv))}\n".encode())
        handle.flush()
        # process_group (Python >= 3.11, as on both machines), not preexec_fn: unsafe beside the sampler's thread
        argv = list(map(str, argv))
        child = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, process_group=0)
        try:
            return child.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            raise TimeoutError(f"stopped at the section's cap, after {timeout:.0f} s (log: {log.name})") from None


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
