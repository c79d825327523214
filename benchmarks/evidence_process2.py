"""Section process2 of the GPU evidence (benchmarks/gpu_evidence.py): students under DeepSpeed
ZeRO-2 in bf16, streaming the cache that section process1 wrote (a vit_large teacher's latents
at 16×224²), with the paper's predictor (384 wide, 12 deep, 12 heads).

Each row is one `salt train-student` process (benchmarks/evidence_student.py) whose batches
alternate in windows: WINDOW steps streamed from the cache by the loader's workers, then the very
same WINDOW steps again from memory (salt/tools/replayed_student.py), the first pair dropped as
the warm-up (and, with run.compile, the compilation). From its metrics: ms/step from the cache
and from memory, their paired ratio (goal <= 1.05: the cache costs the step nothing), the
loader's wait share, FLOPs per step (torch's counter, forward × 3, as the run logs them), MFU
against the GPU's dense bf16 peak, peak device memory, GPU utilisation over the measured
windows. Rows in order of value: vit_large and vit_base eager, then both with run.compile.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evidence_common import GpuSampler, Rows, SectionFile, device, mfu, run_logged, section_args, tail
from evidence_process1 import STUDENT_CACHE


@dataclass(frozen=True)
class Sizes:
    rows: tuple[tuple[str, int, bool], ...]  # (student arch, micro-batch, run.compile), in order of value
    predictor: tuple[int, int, int]  # width, depth, heads
    workers: int  # loader workers reading the cache
    window: int  # steps per streamed / replayed window
    pairs: int  # measured window pairs, after one warm-up pair
    decode_frames: str  # where the stored JPEG frames are decoded: nvJPEG on the GPU, or the workers
    precision: str  # bf16 on the GPU; a smoke run takes what the CPU has (auto)


FULL = Sizes(
    (("vit_large", 64, False), ("vit_base", 64, False), ("vit_large", 64, True), ("vit_base", 64, True)),
    (384, 12, 12),
    max(1, min(12, (os.cpu_count() or 2) - 2)),
    6,
    2,
    "device",
    "bf16",
)
SMOKE = Sizes((("vit_tiny", 2, False), ("vit_tiny", 2, True)), (64, 2, 2), 1, 2, 1, "device", "auto")
ESTIMATE_S = {("vit_large", False): 60, ("vit_base", False): 45, ("vit_large", True): 150, ("vit_base", True): 120}


def student_config(sizes: Sizes, manifest: dict, cache: Path, arch: str, batch: int, compiled: bool, out: Path) -> dict:
    width, depth, heads = sizes.predictor
    geometry = manifest["geometry"]
    return {
        "targets": "cache",
        "cache": {"path": str(cache), "format": "wds", "on_error": "raise"},
        "geometry": {k: geometry[k] for k in ("frames", "frame_step", "size")},
        "data": {"batch_size": batch, "workers": sizes.workers, "decode_frames": sizes.decode_frames},
        "encoder": {"arch": arch, "checkpoint_activations": False},
        "predictor": {"width": width, "depth": depth, "num_heads": heads},
        "optim": {"steps": 2 * sizes.window * (sizes.pairs + 1), "warmup_steps": sizes.window},
        "engine": {"zero_stage": 2, "precision": sizes.precision},
        "health_every": 0,  # no feature-health numbers inside the timed windows
        "run": {
            "out_dir": str(out),
            "log_every": sizes.window,
            "checkpoint_every": 10**6,  # one checkpoint, at the end, outside the windows
            "progress": False,
            "compile": compiled,
        },
    }


def windows(records: list[dict]) -> dict:
    """Streamed / replayed window pairs of one run's records (the first pair dropped)."""
    streamed = [1 / r["steps_per_s"] for r in records[2::2]]
    replayed = [1 / r["steps_per_s"] for r in records[3::2]]
    ratios = [a / b for a, b in zip(streamed, replayed)]
    first, last = records[1], records[-1]
    return {
        "ms_per_step_cache": statistics.mean(streamed) * 1000,
        "ms_per_step_in_memory": statistics.mean(replayed) * 1000,
        "cache_vs_in_memory": statistics.mean(ratios),
        "cache_vs_in_memory_se": statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else None,
        "cache_vs_in_memory_ratios": ratios,
        "data_wait_share": statistics.mean(r["data_wait_share"] for r in records[2::2]),
        "flops_per_step": (last["flops_trained"] - first["flops_trained"]) / (last["step"] - first["step"]),
        "loss_last": last["loss"],
    }


class Process2:
    def __init__(self, args, sizes: Sizes, rows: Rows, sampler: GpuSampler, cache: Path):
        self.args, self.sizes, self.rows, self.sampler, self.cache = args, sizes, rows, sampler, cache
        self.manifest = json.loads((cache / "manifest.json").read_text())
        self.work, self.logs = args.work / "process2", args.work / "logs"

    def student(self, arch: str, batch: int, compiled: bool) -> dict:
        import yaml

        from salt.tools.run_records import metric_records

        mode = "compiled" if compiled else "eager"
        out = self.work / f"student_{arch}_{mode}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        config = out.parent / f"student_{arch}_{mode}.yaml"
        config.write_text(
            yaml.safe_dump(student_config(self.sizes, self.manifest, self.cache, arch, batch, compiled, out))
        )
        log, peak = self.logs / f"student-{arch}-{mode}.log", out.parent / f"peak_{arch}_{mode}.json"
        argv = [sys.executable, Path(__file__).parent / "evidence_student.py", peak, self.sizes.window]
        started = time.time()
        rc = run_logged([*argv, "--config", config], log, timeout=self.rows.left())
        wall = time.time() - started
        records = metric_records(out / "metrics.jsonl")
        if records:
            shutil.copy(out / "metrics.jsonl", self.logs / f"student-{arch}-{mode}.metrics.jsonl")
        shutil.rmtree(out, ignore_errors=True)  # its checkpoint: GBs at full size
        if rc != 0:
            raise RuntimeError(f"the student run exited with {rc}:\n{tail(log)}")
        if len(records) < 4:
            raise RuntimeError(f"the student run logged {len(records)} windows, not a warm-up pair and a measured one")
        row = windows(records)
        per_step = row["flops_per_step"]
        return {
            "batch": batch,
            "steps": records[-1]["step"],
            "wall_s": wall,
            **row,
            "tflop_per_step": per_step / 1e12,
            "mfu_in_memory": mfu(per_step / row["ms_per_step_in_memory"] * 1000),
            "mfu_cache": mfu(per_step / row["ms_per_step_cache"] * 1000),
            **json.loads(peak.read_text()),
            **self.sampler.window(records[1]["time"], records[-1]["time"]),
        }


def main() -> None:
    args = section_args(__doc__.splitlines()[0])
    sizes = SMOKE if args.smoke else FULL
    settings = {
        **asdict(sizes),
        "zero_stage": 2,
        "steps": 2 * sizes.window * (sizes.pairs + 1),
        "device": device(),
    }
    file = SectionFile(args.json, settings)
    rows = Rows(file, args.deadline)
    pointer = args.work / STUDENT_CACHE
    if not pointer.exists():
        for arch, batch, compiled in sizes.rows:
            rows.skip("student", {"arch": arch, "compiled": compiled}, "no cache: section process1 wrote none")
        return
    cache = Path(pointer.read_text())
    manifest = json.loads((cache / "manifest.json").read_text())
    file.data["settings"].update(
        cache=str(cache),
        cache_views=manifest["sample_count"],
        teacher_dim=manifest["dim"],
        geometry=manifest["geometry"],
    )
    with GpuSampler() as sampler:
        p = Process2(args, sizes, rows, sampler, cache)
        for arch, batch, compiled in sizes.rows:
            what = {"arch": arch, "compiled": compiled}
            if compiled and args.smoke and not args.smoke_compile:
                rows.skip("student", what, "smoke run: nothing compiles in CI")
                continue
            estimate = 0 if args.smoke else ESTIMATE_S.get((arch, compiled), 60)
            rows.run("student", what, estimate, p.student, arch, batch, compiled)


if __name__ == "__main__":
    main()
