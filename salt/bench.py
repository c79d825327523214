"""`salt bench …`: benchmarks that measure real work side by side, in one run.

Each prints a table and appends one JSON record (machine, versions, git commit, settings,
numbers) to `benchmarks/results/<name>.jsonl`.
"""

from __future__ import annotations

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
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
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


def bench_cache(videos: int, views: int, arch: str, size: int, frames: int, workers: int, batch_size: int,
                seconds: int, results_dir: str) -> dict:
    """Views/s of `salt cache-latents` vs. its stages alone, on the same videos; bytes per view."""
    from torch.utils.data import DataLoader

    from salt.cache_latents import CODECS, CacheJob, VideoViews, run_cache
    from salt.latents import LatentCodec, normalise_targets
    from salt.models import build_encoder, save_encoder
    from salt.training.loop import resolve_precision
    from salt.video.sources import load_records
    from salt.video.synthetic import make_benchmark_videos
    from salt.video.views import ViewConfig, to_model_input

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv = make_benchmark_videos(tmp / "videos", videos, seconds)
        encoder = build_encoder(arch, img_size=size, num_frames=frames).eval().requires_grad_(False)
        save_encoder(tmp / "teacher.pt", encoder, kind="teacher")
        view = ViewConfig(frames=frames, frame_step=4, size=size)
        records = load_records(csv)
        precision = resolve_precision("auto")
        total_views = videos * views

        # Stage 1 alone: decode + augment + JPEG round trip, in the same workers.
        items = [(0, r, (0, views)) for r in records]
        loader = DataLoader(VideoViews(items, view, "jpeg", 90, 60.0), batch_size=None, num_workers=workers,
                            multiprocessing_context="forkserver" if workers else None)
        start = time.perf_counter()
        decoded = [item for item in loader]
        decode_s = time.perf_counter() - start

        # Stage 2 alone: the teacher forward on those clips, batched.
        clips = torch.from_numpy(np.stack([v["frames"] for item in decoded for v in item["views"]]))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            encoder(to_model_input(clips[:batch_size]))  # warm-up
            start = time.perf_counter()
            outputs = [encoder(to_model_input(clips[i : i + batch_size])).float() for i in range(0, len(clips), batch_size)]
            forward_s = time.perf_counter() - start
        latents = torch.cat(outputs)

        # The whole command.
        start = time.perf_counter()
        run_cache(CacheJob(teacher=str(tmp / "teacher.pt"), data=str(csv), out=str(tmp / "cache"), views=views,
                           workers=workers, batch_size=batch_size, shard_videos=max(1, videos // 4), progress=False))
        whole_s = time.perf_counter() - start

        # Bytes per view and error by dtype and codec, on real teacher outputs.
        reference = normalise_targets(latents[:8])
        storage = []
        for dtype in ("fp16", "bf16", "int8"):
            for codec_name in ("blosc-zstd", "zstd", "none"):
                codec = LatentCodec(dtype, CODECS[codec_name])
                sizes, raw, errors = [], [], []
                for tokens, target in zip(latents[:8], reference):
                    stored = codec.to_stored(tokens)
                    fields = codec.encode(stored)
                    sizes.append(sum(len(v) for v in fields.values()))
                    raw.append(stored.values.nbytes + (stored.scales.nbytes if stored.scales is not None else 0))
                    restored = normalise_targets(codec.from_stored(stored.values, stored.scales))
                    errors.append((restored - target).abs().mean().item())
                storage.append({"dtype": dtype, "codec": codec_name, "bytes_per_view": float(np.mean(sizes)),
                                "compression_ratio": float(np.sum(raw) / np.sum(sizes)), "mean_abs_err_layernormed": float(np.mean(errors))})
        frame_bytes = float(np.mean([sum(len(b) for b in v["encoded"]) for item in decoded for v in item["views"]]))

    rates = {"whole command": total_views / whole_s, "decode + augment + JPEG": total_views / decode_s,
             "teacher forward": total_views / forward_s}
    slowest = min(rates["decode + augment + JPEG"], rates["teacher forward"])
    results = {
        "views_per_s": rates,
        "slowest_stage_idle_share": max(0.0, 1 - rates["whole command"] / slowest),
        "whole_vs_slowest": rates["whole command"] / slowest,
        "jpeg_frame_bytes_per_view": frame_bytes,
        "storage": storage,
        "precision": precision,
    }
    settings = {"videos": videos, "views": views, "arch": arch, "size": size, "frames": frames, "workers": workers,
                "batch_size": batch_size, "video": f"640x360 H.264, {seconds} s"}
    save_record("cache", settings, results, results_dir)
    return {"settings": settings, "results": results}


def format_cache(report: dict) -> str:
    s, r = report["settings"], report["results"]
    lines = [f"salt bench cache: {s['videos']} videos ({s['video']}) x {s['views']} views, teacher {s['arch']} at "
             f"{s['frames']}x{s['size']}², {s['workers']} workers, batch {s['batch_size']}, {r['precision']}",
             f"{'stage':<28}{'views/s':>10}"]
    lines += [f"{name:<28}{rate:>10.2f}" for name, rate in r["views_per_s"].items()]
    lines.append(f"whole command / slowest stage alone: {r['whole_vs_slowest']:.2f} (slowest stage idle {r['slowest_stage_idle_share']:.0%})")
    lines.append(f"JPEG frames: {r['jpeg_frame_bytes_per_view'] / 1e3:.1f} kB per view")
    lines.append(f"{'dtype':<6}{'codec':<12}{'kB/view':>10}{'ratio':>8}{'mean|Δ| (layer-normed)':>25}")
    for row in r["storage"]:
        lines.append(f"{row['dtype']:<6}{row['codec']:<12}{row['bytes_per_view'] / 1e3:>10.1f}{row['compression_ratio']:>8.2f}"
                     f"{row['mean_abs_err_layernormed']:>25.5f}")
    return "\n".join(lines)
