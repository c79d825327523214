"""`salt bench student`: the student's step time with targets from the cache, from the online
teacher and from memory (paired in time), the loader's CPU cost by part, data wait by worker
count, peak RSS by teacher width."""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from salt.tools.bench import save_record


def _run_student(config: Path, overrides: list[str], replay_window: int = 0) -> list[dict]:
    """One student run in a fresh process (clean RSS); returns its metric records. With
    `replay_window`, windows of that many steps alternate streamed / replayed (salt/tools/replayed_student.py)."""
    from salt.tools.run_records import metric_records, salt_command

    sets = [a for o in overrides for a in ("--set", o)]
    if replay_window:
        argv = salt_command(replay_window, "--config", config, *sets, module="salt.tools.replayed_student")
    else:
        argv = salt_command("train-student", "--config", config, *sets)
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"student run failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    out_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run.out_dir="))
    return metric_records(Path(out_dir) / "metrics.jsonl")


def _loader_costs(cache_path: Path, batch_size: int, grid: tuple[int, int, int], batches: int = 24) -> dict:
    """CPU ms per batch of the loader's parts, one core, in this process: what a loader worker
    takes from the cores that train on a CPU-only machine."""
    from salt.masks import DEFAULT_MASKS, MultiBlockMasker
    from salt.training.data import CacheBatches, ReaderShare

    torch.set_num_threads(1)

    def per_batch(decode_frames: str) -> float:
        dataset = CacheBatches(
            cache_path=str(cache_path),
            cache_format="wds",
            batch_size=batch_size,
            seed=0,
            share=ReaderShare(),
            mask_configs=list(DEFAULT_MASKS),
            token_grid=grid,
            decode_frames=decode_frames,
        )
        stream = iter(dataset)
        next(stream)
        start = time.process_time()
        for _ in range(batches):
            next(stream)
        return (time.process_time() - start) / batches * 1000

    masker = MultiBlockMasker(grid, list(DEFAULT_MASKS), seed=0)
    start = time.process_time()
    for step in range(batches):
        masker(batch_size, step)
    masks_ms = (time.process_time() - start) / batches * 1000
    whole, undecoded = per_batch("workers"), per_batch("device")
    torch.set_num_threads(os.cpu_count() or 1)
    return {
        "batch_ms": whole,
        "bytes_only_batch_ms": undecoded,
        "jpeg_decode_ms": max(0.0, whole - undecoded),
        "masks_ms": masks_ms,
        "read_and_latents_ms": max(0.0, undecoded - masks_ms),
    }


@dataclass(frozen=True)
class StudentSizes:
    """What `salt bench student` trains on what: the student and its predictor, the geometry, the
    small and the larger teacher whose caches it reads, and the videos (`clips`: a CSV of videos
    made earlier; else a synthetic set is made, which needs PyAV)."""

    arch: str = "vit_tiny"
    predictor: tuple[int, int, int] = (128, 4, 4)  # width, depth, heads
    frames: int = 16
    size: int = 64
    teachers: tuple[str, str] = ("vit_tiny", "vit_small")
    videos: int = 24
    clips: str | None = None

    @property
    def grid(self) -> tuple[int, int, int]:
        from salt.models import resolve_arch, token_grid

        arch = resolve_arch(self.arch, img_size=self.size, num_frames=self.frames)
        return tuple(token_grid(arch, self.frames, self.size, self.size))


def bench_student(
    steps: int,
    batch_size: int,
    results_dir: str,
    repeats: int = 3,
    window: int = 8,
    pairs: int = 8,
    sizes: StudentSizes = StudentSizes(),
) -> dict:
    """Step time with targets from the cache, from the online teacher and from memory; the
    loader's CPU cost by part; data-wait share with 0/1/2 workers; peak RSS with a small and a
    larger teacher's cache.

    Cache vs in memory is paired in time within each run (salt/tools/replayed_student.py): windows of
    `window` steps alternate between the loader's batches and the very same batches again from
    memory, so the machine's drifting load (which moved whole runs by ±25 % here) falls on both
    sides of every pair; `repeats` such runs of `pairs` measured pairs, each its own process."""
    paired_steps = 2 * window * (pairs + 1)  # the first pair is the warm-up
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caches = _teacher_caches(tmp, sizes)
        runs = _StudentRuns(tmp, steps, batch_size, caches["small"], sizes)
        decoded_in_training = ["targets=cache", "data.workers=2", "data.decode_frames=device"]
        paired_runs = {
            "cache": runs.paired(["targets=cache", "data.workers=2"], repeats, window, paired_steps),
            "cache, frames decoded in the training process": runs.paired(
                decoded_in_training, repeats, window, paired_steps
            ),
        }
        step_time = {"teacher": runs.measure(["targets=teacher", "data.workers=2"])}
        workers = {w: runs.measure(["targets=cache", f"data.workers={w}"]) for w in (0, 1, 2)}
        rss = {
            name: {
                **runs.measure(["targets=cache", "data.workers=0", f"cache.path={cache['path']}"]),
                "teacher_dim": cache["dim"],
                "teacher_weights_mb": cache["teacher_params_mb"],
            }
            for name, cache in caches.items()
        }
        costs = _loader_costs(caches["small"]["path"], batch_size, sizes.grid)
    caches_dims = {name: cache["dim"] for name, cache in caches.items()}
    results = _results(paired_runs, step_time, workers, rss, costs, batch_size, sizes)
    settings = {
        "steps": steps,
        "paired_steps": paired_steps,
        "window": window,
        "pairs": pairs,
        "batch_size": batch_size,
        "repeats": repeats,
        "student": f"{sizes.arch} (predictor {sizes.predictor[0]}x{sizes.predictor[1]})",
        "geometry": f"{sizes.frames}x{sizes.size}²",
        "teachers": {
            name: f"{arch} (dim {caches_dims[name]})" for name, arch in zip(("small", "large"), sizes.teachers)
        },
        "videos": sizes.clips or f"{sizes.videos} synthetic",
    }
    save_record("student", settings, results, results_dir)
    return {"settings": settings, "results": results}


def _teacher_caches(tmp: Path, sizes: StudentSizes) -> dict[str, dict]:
    """The videos cached by a small and a larger random teacher."""
    from salt.cache_latents import CacheJob, run_cache
    from salt.models import build_encoder, save_encoder

    if sizes.clips:
        data = sizes.clips
    else:
        from salt.video.synthetic import SyntheticSpec, make_synthetic

        # Synthetic videos of 80² (or of the clip size): the training split holds 3 of every 4.
        spec = SyntheticSpec(videos=math.ceil(sizes.videos * 4 / 3), size=max(80, sizes.size))
        make_synthetic(tmp / "data", spec)
        data = str(tmp / "data" / "train.csv")
    caches = {}
    for name, arch in zip(("small", "large"), sizes.teachers):
        torch.manual_seed(0)
        teacher = build_encoder(arch, img_size=sizes.size, num_frames=sizes.frames)
        save_encoder(tmp / f"{name}.pt", teacher, kind="teacher")
        job = CacheJob(
            teacher=str(tmp / f"{name}.pt"),
            data=data,
            out=str(tmp / name),
            views=2,
            shard_videos=4,
            workers=2,
            max_videos=sizes.videos,
            progress=False,
        )
        run_cache(job)
        caches[name] = {
            "path": tmp / name,
            "teacher": tmp / f"{name}.pt",
            "dim": teacher.embed_dim,
            "teacher_params_mb": sum(p.numel() for p in teacher.parameters()) * 4 / 2**20,
        }
    return caches


class _StudentRuns:
    """Student runs on the small teacher's cache, each in a fresh process and folder."""

    def __init__(self, tmp: Path, steps: int, batch_size: int, cache: dict, sizes: StudentSizes):
        import yaml

        self.tmp, self.count = tmp, 0
        self.config = tmp / "student.yaml"
        width, depth, heads = sizes.predictor
        self.config.write_text(
            yaml.safe_dump(
                {
                    "geometry": {"frames": sizes.frames, "frame_step": 4, "size": sizes.size},
                    "encoder": {"arch": sizes.arch},
                    "predictor": {"width": width, "depth": depth, "num_heads": heads},
                    "optim": {"steps": steps, "warmup_steps": 5},
                    "engine": {"zero_stage": 1},
                    "run": {"log_every": max(1, steps // 4), "checkpoint_every": 10**6, "progress": False},
                }
            )
        )
        self.base = [f"data.batch_size={batch_size}", f"cache.path={cache['path']}", f"teacher={cache['teacher']}"]

    def run(self, extra: list[str], replay_window: int = 0) -> list[dict]:
        self.count += 1
        return _run_student(
            self.config, self.base + extra + [f"run.out_dir={self.tmp / f'run{self.count}'}"], replay_window
        )

    def measure(self, extra: list[str]) -> dict:
        rows = self.run(extra)[1:]  # drop the warm-up window
        return {
            "step_s": float(np.mean([1 / r["steps_per_s"] for r in rows])),
            "data_wait_share": float(np.mean([r["data_wait_share"] for r in rows])),
            "peak_rss_mb": rows[-1]["peak_rss_mb"],
        }

    def paired(self, extra: list[str], repeats: int, window: int, steps: int) -> dict:
        """Streamed / replayed window pairs of `repeats` runs, the first pair of each dropped."""
        streamed, replayed, waits = [], [], []
        for _ in range(repeats):
            rows = self.run(extra + [f"optim.steps={steps}", f"run.log_every={window}"], replay_window=window)
            seconds = [1 / r["steps_per_s"] for r in rows]
            streamed += seconds[2::2]
            replayed += seconds[3::2]
            waits += [r["data_wait_share"] for r in rows[2::2]]
        ratios = np.array(streamed) / np.array(replayed)
        return {
            "streamed_s": float(np.mean(streamed)),
            "replayed_s": float(np.mean(replayed)),
            "data_wait_share": float(np.mean(waits)),
            "ratio": float(ratios.mean()),
            "ratio_se": float(ratios.std(ddof=1) / np.sqrt(len(ratios))),
            "ratios": ratios.tolist(),
        }


def _results(
    paired_runs: dict, step_time: dict, workers: dict, rss: dict, costs: dict, batch_size: int, sizes: StudentSizes
) -> dict:
    # What the larger teacher's dim should add: the predictor's output layer (weights and bias,
    # grads, two Adam moments, fp32) and the target tensors of a batch.
    extra_dim = rss["large"]["teacher_dim"] - rss["small"]["teacher_dim"]
    tokens = int(np.prod(sizes.grid))
    expected_mb = ((sizes.predictor[0] + 1) * extra_dim * 4 * 4 + batch_size * tokens * extra_dim * 4 * 3) / 2**20
    memory_s = paired_runs["cache"]["replayed_s"]
    return {
        "pairs": paired_runs,
        "step_time": step_time,
        "workers": {str(k): v for k, v in workers.items()},
        "rss": rss,
        "cache_vs_in_memory": paired_runs["cache"]["ratio"],
        "cache_vs_in_memory_se": paired_runs["cache"]["ratio_se"],
        "loader_cpu_ms_per_batch": costs,
        # Two cores train; the loader's CPU time per step, spread over them, is what a CPU-only
        # machine cannot hide: the share the step should grow by.
        "loader_cpu_share_of_step": costs["batch_ms"] / 1000 / (memory_s * (os.cpu_count() or 1)),
        "teacher_minus_cache_s": step_time["teacher"]["step_s"] - workers[2]["step_s"],
        "rss_difference_mb": rss["large"]["peak_rss_mb"] - rss["small"]["peak_rss_mb"],
        "rss_difference_expected_mb": expected_mb,
    }


def format_student(report: dict) -> str:
    s, r = report["settings"], report["results"]
    lines = [
        f"salt bench student: {s['student']} at {s['geometry']}, batch {s['batch_size']}; cache vs in memory: "
        f"{s['repeats']} runs of {s['paired_steps']} steps, windows of {s['window']} steps alternating streamed / "
        f"the same batches replayed from memory (first pair dropped)"
    ]
    lines.append(f"{'frames decoded in':<48}{'streamed':>10}{'in memory':>11}{'ratio':>17}{'data wait':>11}")
    for name, row in r["pairs"].items():
        lines.append(
            f"{name:<48}{row['streamed_s'] * 1000:>10.1f}{row['replayed_s'] * 1000:>11.1f}"
            f"{row['ratio']:>9.3f} ± {row['ratio_se']:.3f}{row['data_wait_share']:>11.1%}"
        )
    lines.append(
        f"cache / in-memory step time: {r['cache_vs_in_memory']:.3f} ± {r['cache_vs_in_memory_se']:.3f} "
        f"(s.e. over {len(r['pairs']['cache']['ratios'])} window pairs; goal <= 1.05)"
    )
    lines.append(f"{'separate runs, ' + str(s['steps']) + ' steps':<48}{'ms/step':>9}{'data wait':>11}")
    for name, row in [(f"online teacher ({s['teachers']['small']}), 2 workers", r["step_time"]["teacher"])] + [
        (f"cache, {w} workers", row) for w, row in r["workers"].items()
    ]:
        lines.append(f"{name:<48}{row['step_s'] * 1000:>9.1f}{row['data_wait_share']:>11.1%}")
    lines.append(f"teacher − cache (2 workers): {r['teacher_minus_cache_s'] * 1000:.1f} ms")
    c = r["loader_cpu_ms_per_batch"]
    lines.append(
        f"loader CPU per batch, one core: {c['batch_ms']:.1f} ms = read + CRC + latents "
        f"{c['read_and_latents_ms']:.1f}, JPEG decode {c['jpeg_decode_ms']:.1f}, masks "
        f"{c['masks_ms']:.1f}; bytes only (decode on the device) {c['bytes_only_batch_ms']:.1f} "
        f"ms; {r['loader_cpu_share_of_step']:.1%} of the cores' step time"
    )
    for name, row in r["rss"].items():
        lines.append(
            f"peak RSS, {name} teacher's cache (dim {row['teacher_dim']}, weights "
            f"{row['teacher_weights_mb']:.1f} MB): {row['peak_rss_mb']:.0f} MB"
        )
    lines.append(
        f"RSS difference {r['rss_difference_mb']:.0f} MB; predictor output layer "
        f"+ target buffers predict {r['rss_difference_expected_mb']:.1f} MB"
    )
    return "\n".join(lines)
