"""`salt bench …`: benchmarks that measure real work side by side, in one run.

Each prints a table and appends one JSON record (machine, versions, git commit, settings,
numbers) to `benchmarks/results/<name>.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def environment() -> dict:
    import timm

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except OSError:
        commit = ""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "commit": commit,
    }


def save_record(name: str, settings: dict, results: dict, results_dir: str | Path = "benchmarks/results") -> Path:
    path = Path(results_dir) / f"{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"benchmark": name, **environment(), "settings": settings, "results": results}) + "\n")
    return path


def bench_cache(
    *,
    videos: int,
    views: int,
    arch: str,
    size: int,
    frames: int,
    workers: int,
    batch_size: int,
    seconds: int,
    results_dir: str,
    engine: str = "local",
    clips: str | None = None,
) -> dict:
    """Views/s of `salt cache-latents` vs. its stages alone, on the same videos; bytes per view.
    With engine "ray", the Ray engine runs too (on a local cluster started first, its start-up
    timed apart), after the local engine on the same videos. With `clips` (a CSV of videos made
    earlier), the first `videos` of those are used and none is made (making them needs PyAV)."""
    from salt.cache_latents import CacheJob
    from salt.cache_latents.teacher import local_device
    from salt.models import build_encoder, save_encoder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv = _benchmark_videos(tmp / "videos", videos, seconds, clips)
        encoder = build_encoder(arch, img_size=size, num_frames=frames).eval().requires_grad_(False)
        save_encoder(tmp / "teacher.pt", encoder, kind="teacher")
        job = CacheJob(
            teacher=str(tmp / "teacher.pt"),
            data=str(csv),
            out=str(tmp / "cache"),
            views=views,
            workers=workers,
            batch_size=batch_size,
            shard_videos=max(1, videos // 4),
            max_videos=videos,
            progress=False,
        )
        results = _measure_cache(job, encoder, frames, size, engine)
    settings = {
        "videos": videos,
        "views": views,
        "arch": arch,
        "size": size,
        "frames": frames,
        "workers": workers,
        "batch_size": batch_size,
        "video": f"640x360 H.264, {seconds} s" if clips is None else f"from {clips}",
        "engine": engine,
        "teacher_device": str(local_device()),
    }
    save_record("cache" if engine == "local" else f"cache-{engine}", settings, results, results_dir)
    return {"settings": settings, "results": results}


def _measure_cache(job, encoder, frames: int, size: int, engine: str) -> dict:
    """Each stage of the command alone, then the whole command by each engine, on `job`'s videos."""
    from salt.cache_latents import run_cache
    from salt.precision import resolve_precision

    precision = resolve_precision("auto")
    decoding = decode_alone(job, encoder, frames, size)
    latents, forward_s = forward_alone(encoder, decoding.items, job.batch_size, precision)
    start = time.perf_counter()
    run_cache(job)
    stage_s = {
        "whole command": time.perf_counter() - start,
        "decode + augment + JPEG": decoding.seconds,
        "teacher forward": forward_s,
    }
    ray_startup_s = None
    if engine == "ray":
        ray_job = dataclasses.replace(job, out=str(Path(job.out).with_name("cache_ray")))
        ray_startup_s, stage_s["whole command, ray engine"] = _ray_engine_run(ray_job)
    views = [view for item in decoding.items for view in item["views"]]
    return {
        **_cache_rates(decoding.views, stage_s),  # the same videos and views in every stage
        "ray_startup_s": ray_startup_s,
        "jpeg_frame_bytes_per_view": float(np.mean([sum(len(b) for b in v["encoded"]) for v in views])),
        "storage": _storage_by_codec(latents[:8]),
        "precision": precision,
    }


def _cache_rates(total_views: int, seconds: dict[str, float]) -> dict:
    """Views/s of each stage and of the whole command, and how far the whole command falls
    short of its slowest stage (the share of time that stage sits idle)."""
    rates = {name: total_views / s for name, s in seconds.items()}
    slowest = min(rates["decode + augment + JPEG"], rates["teacher forward"])
    ray_s = seconds.get("whole command, ray engine")
    return {
        "views_per_s": rates,
        "slowest_stage_idle_share": max(0.0, 1 - rates["whole command"] / slowest),
        "whole_vs_slowest": rates["whole command"] / slowest,
        "ray_vs_local": seconds["whole command"] / ray_s if ray_s else None,
    }


@dataclasses.dataclass
class Decoding:
    """What `decode_alone` decoded and how fast: `items` kept (all, or the first `keep` videos),
    the whole time, and the steady part: from the first video's views to the last."""

    items: list[dict]
    seconds: float
    views: int
    steady_seconds: float
    steady_views: int

    @property
    def steady_views_per_s(self) -> float | None:
        return self.steady_views / self.steady_seconds if self.steady_seconds > 0 else None


def decode_alone(job, encoder, frames: int, size: int, keep: int | None = None) -> Decoding:
    """Stage 1 of the command alone: decode + augment + JPEG round trip, in the same workers.
    The steady rate leaves out the workers' start (until the first video arrives)."""
    from salt.cache_latents import CachePlan, VideoViews
    from salt.latents import ShardId
    from salt.runtime.loader_workers import owned_loader
    from salt.video.sources import load_records
    from salt.video.views import ViewConfig

    records = load_records(job.data)[: job.max_videos or None]
    view = ViewConfig(frames=frames, frame_step=job.frame_step, size=size, seed=job.seed)
    plan = CachePlan(job, Path(job.out), records, view, encoder, {}, [ShardId(0, len(records), 0, job.views)])
    loader = owned_loader(VideoViews(plan), job.workers, batch_size=None)
    kept, views, first = [], 0, None
    start = time.perf_counter()
    for item in loader:
        if isinstance(item["views"], str):
            raise RuntimeError(f"{records[item['video']].name} did not decode: {item['views']}")
        if first is None:
            first = (time.perf_counter(), len(item["views"]))
        views += len(item["views"])
        if keep is None or len(kept) < keep:
            kept.append(item)
    end = time.perf_counter()
    return Decoding(kept, end - start, views, end - first[0], views - first[1])


def forward_alone(
    encoder, decoded: list[dict], batch_size: int, precision: str, compile: bool = False, repeats: int = 1
) -> tuple[torch.Tensor, float]:
    """Stage 2 of the command alone: the teacher forward as the command runs it (`TeacherForward`:
    on this machine's GPU when it has one, the copies to and from it included), on those clips
    (`repeats` times over), batched; after two warm-up batches (the first compiles, with `compile`;
    the first compiled model of a process paid once more on its second call: 30 s, 5.3 s, then
    0.03 s per call here for vit_tiny on the CPU)."""
    from salt.cache_latents.teacher import TeacherForward

    frames = np.stack([v["frames"] for item in decoded for v in item["views"]])
    teacher = TeacherForward(encoder, precision, batch_size, compile=compile)
    for _ in range(2):  # warm-up; its outputs come back to the CPU, so each call has finished
        teacher(frames[:batch_size])
    start = time.perf_counter()
    outputs = [teacher(frames) for _ in range(repeats)]  # each call ends with its latents on the CPU
    return torch.cat(outputs), time.perf_counter() - start


def _benchmark_videos(folder: Path, videos: int, seconds: int, clips: str | None) -> Path:
    if clips is not None:
        return Path(clips)
    from salt.video.synthetic import make_benchmark_videos

    return make_benchmark_videos(folder, videos, seconds)


def _ray_engine_run(job) -> tuple[float, float]:
    """(start-up of a local Ray instance, the whole command by the Ray engine on it), seconds."""
    from salt.cache_latents import run_cache
    from salt.cache_latents.ray_engine import import_ray

    ray = import_ray()
    start = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    startup_s = time.perf_counter() - start
    try:
        start = time.perf_counter()
        run_cache(dataclasses.replace(job, engine="ray"))
        return startup_s, time.perf_counter() - start
    finally:
        ray.shutdown()


def _storage_by_codec(latents: torch.Tensor) -> list[dict]:
    """Bytes per view and error by dtype and codec, on real teacher outputs."""
    from salt.latents import LatentCodec, normalise_targets
    from salt.latents.codecs import CODECS

    reference = normalise_targets(latents)
    storage = []
    for dtype in ("fp16", "bf16", "int8"):
        for codec_name in ("blosc-zstd", "zstd", "none"):
            codec = LatentCodec(dtype, CODECS[codec_name])
            sizes, raw, errors = [], [], []
            for tokens, target in zip(latents, reference):
                stored = codec.to_stored(tokens)
                sizes.append(sum(len(v) for v in codec.encode(stored).values()))
                raw.append(stored.values.nbytes + (stored.scales.nbytes if stored.scales is not None else 0))
                restored = normalise_targets(codec.from_stored(stored.values, stored.scales))
                errors.append((restored - target).abs().mean().item())
            storage.append(
                {
                    "dtype": dtype,
                    "codec": codec_name,
                    "bytes_per_view": float(np.mean(sizes)),
                    "compression_ratio": float(np.sum(raw) / np.sum(sizes)),
                    "mean_abs_err_layernormed": float(np.mean(errors)),
                }
            )
    return storage


def format_cache(report: dict) -> str:
    s, r = report["settings"], report["results"]
    lines = [
        f"salt bench cache: {s['videos']} videos ({s['video']}) x {s['views']} views, teacher {s['arch']} at "
        f"{s['frames']}x{s['size']}², {s['workers']} workers, batch {s['batch_size']}, {r['precision']}",
        f"{'stage':<28}{'views/s':>10}",
    ]
    lines += [f"{name:<28}{rate:>10.2f}" for name, rate in r["views_per_s"].items()]
    lines.append(
        f"whole command / slowest stage alone: {r['whole_vs_slowest']:.2f} "
        f"(slowest stage idle {r['slowest_stage_idle_share']:.0%})"
    )
    if r.get("ray_vs_local") is not None:
        lines.append(
            f"ray engine / local engine views/s: {r['ray_vs_local']:.2f} (local "
            f"Ray cluster start-up {r['ray_startup_s']:.1f} s, not counted)"
        )
    lines.append(f"JPEG frames: {r['jpeg_frame_bytes_per_view'] / 1e3:.1f} kB per view")
    lines.append(f"{'dtype':<6}{'codec':<12}{'kB/view':>10}{'ratio':>8}{'mean|Δ| (layer-normed)':>25}")
    for row in r["storage"]:
        lines.append(
            f"{row['dtype']:<6}{row['codec']:<12}{row['bytes_per_view'] / 1e3:>10.1f}{row['compression_ratio']:>8.2f}"
            f"{row['mean_abs_err_layernormed']:>25.5f}"
        )
    return "\n".join(lines)
