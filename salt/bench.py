"""`salt bench …`: benchmarks that measure real work side by side, in one run.

Each prints a table and appends one JSON record (machine, versions, git commit, settings,
numbers) to `benchmarks/results/<name>.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
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
) -> dict:
    """Views/s of `salt cache-latents` vs. its stages alone, on the same videos; bytes per view.
    With engine "ray", the Ray engine runs too (on a local cluster started first, its start-up
    timed apart), after the local engine on the same videos."""
    from salt.cache_latents import CacheJob, CachePlan, VideoViews, run_cache
    from salt.latents import LatentCodec, ShardId, normalise_targets
    from salt.latents.codecs import CODECS
    from salt.models import build_encoder, save_encoder
    from salt.precision import resolve_precision
    from salt.video.sources import load_records
    from salt.video.synthetic import make_benchmark_videos
    from salt.video.views import ViewConfig, to_model_input
    from salt.worker_processes import owned_loader

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
        job = CacheJob(
            teacher=str(tmp / "teacher.pt"),
            data=str(csv),
            out=str(tmp / "cache"),
            views=views,
            workers=workers,
            batch_size=batch_size,
            shard_videos=max(1, videos // 4),
            progress=False,
        )
        plan = CachePlan(job, tmp / "cache", records, view, encoder, {}, [ShardId(0, len(records), 0, views)])
        loader = owned_loader(VideoViews(plan), workers, batch_size=None)
        start = time.perf_counter()
        decoded = [item for item in loader]
        decode_s = time.perf_counter() - start

        # Stage 2 alone: the teacher forward on those clips, batched.
        clips = torch.from_numpy(np.stack([v["frames"] for item in decoded for v in item["views"]]))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            encoder(to_model_input(clips[:batch_size]))  # warm-up
            start = time.perf_counter()
            outputs = [
                encoder(to_model_input(clips[i : i + batch_size])).float() for i in range(0, len(clips), batch_size)
            ]
            forward_s = time.perf_counter() - start
        latents = torch.cat(outputs)

        # The whole command, by each engine.
        start = time.perf_counter()
        run_cache(job)
        whole_s = {"local": time.perf_counter() - start}
        ray_startup_s = None
        if engine == "ray":
            from salt.cache_latents.ray_engine import import_ray

            ray = import_ray()
            start = time.perf_counter()
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
            ray_startup_s = time.perf_counter() - start
            try:
                start = time.perf_counter()
                run_cache(dataclasses.replace(job, engine="ray", out=str(tmp / "cache_ray")))
                whole_s["ray"] = time.perf_counter() - start
            finally:
                ray.shutdown()

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
                storage.append(
                    {
                        "dtype": dtype,
                        "codec": codec_name,
                        "bytes_per_view": float(np.mean(sizes)),
                        "compression_ratio": float(np.sum(raw) / np.sum(sizes)),
                        "mean_abs_err_layernormed": float(np.mean(errors)),
                    }
                )
        frame_bytes = float(np.mean([sum(len(b) for b in v["encoded"]) for item in decoded for v in item["views"]]))

    rates = {
        "whole command": total_views / whole_s["local"],
        "decode + augment + JPEG": total_views / decode_s,
        "teacher forward": total_views / forward_s,
    }
    if "ray" in whole_s:
        rates["whole command, ray engine"] = total_views / whole_s["ray"]
    slowest = min(rates["decode + augment + JPEG"], rates["teacher forward"])
    results = {
        "views_per_s": rates,
        "slowest_stage_idle_share": max(0.0, 1 - rates["whole command"] / slowest),
        "whole_vs_slowest": rates["whole command"] / slowest,
        "ray_vs_local": whole_s["local"] / whole_s["ray"] if "ray" in whole_s else None,
        "ray_startup_s": ray_startup_s,
        "jpeg_frame_bytes_per_view": frame_bytes,
        "storage": storage,
        "precision": precision,
    }
    settings = {
        "videos": videos,
        "views": views,
        "arch": arch,
        "size": size,
        "frames": frames,
        "workers": workers,
        "batch_size": batch_size,
        "video": f"640x360 H.264, {seconds} s",
        "engine": engine,
    }
    save_record("cache" if engine == "local" else f"cache-{engine}", settings, results, results_dir)
    return {"settings": settings, "results": results}


def format_cache(report: dict) -> str:
    s, r = report["settings"], report["results"]
    lines = [
        f"salt bench cache: {s['videos']} videos ({s['video']}) x {s['views']} views, teacher {s['arch']} at "
        f"{s['frames']}x{s['size']}², {s['workers']} workers, batch {s['batch_size']}, {r['precision']}",
        f"{'stage':<28}{'views/s':>10}",
    ]
    lines += [f"{name:<28}{rate:>10.2f}" for name, rate in r["views_per_s"].items()]
    lines.append(
        f"whole command / slowest stage alone: {r['whole_vs_slowest']:.2f} (slowest stage idle "
        f"{r['slowest_stage_idle_share']:.0%})"
    )
    if r.get("ray_vs_local") is not None:
        lines.append(
            f"ray engine / local engine views/s: {r['ray_vs_local']:.2f} (local Ray cluster start-up "
            f"{r['ray_startup_s']:.1f} s, not counted)"
        )
    lines.append(f"JPEG frames: {r['jpeg_frame_bytes_per_view'] / 1e3:.1f} kB per view")
    lines.append(f"{'dtype':<6}{'codec':<12}{'kB/view':>10}{'ratio':>8}{'mean|Δ| (layer-normed)':>25}")
    for row in r["storage"]:
        lines.append(
            f"{row['dtype']:<6}{row['codec']:<12}{row['bytes_per_view'] / 1e3:>10.1f}{row['compression_ratio']:>8.2f}"
            f"{row['mean_abs_err_layernormed']:>25.5f}"
        )
    return "\n".join(lines)


def _run_student(config: Path, overrides: list[str], replay_window: int = 0) -> list[dict]:
    """One student run in a fresh process (clean RSS); returns its metric records. With
    `replay_window`, windows of that many steps alternate streamed / replayed (salt/replayed_student.py)."""
    import sys

    entry = ["salt.replayed_student", str(replay_window)] if replay_window else ["salt.cli", "train-student"]
    result = subprocess.run(
        [sys.executable, "-m", *entry, "--config", str(config), *[a for o in overrides for a in ("--set", o)]],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"student run failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    out_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run.out_dir="))
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


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


def bench_student(
    steps: int, batch_size: int, results_dir: str, repeats: int = 3, window: int = 8, pairs: int = 8
) -> dict:
    """Step time with targets from the cache, from the online teacher and from memory; the
    loader's CPU cost by part; data-wait share with 0/1/2 workers; peak RSS with a small and a
    larger teacher's cache.

    Cache vs in memory is paired in time within each run (salt/replayed_student.py): windows of
    `window` steps alternate between the loader's batches and the very same batches again from
    memory, so the machine's drifting load (which moved whole runs by ±25 % here) falls on both
    sides of every pair; `repeats` such runs of `pairs` measured pairs, each its own process."""
    import yaml

    from salt.cache_latents import CacheJob, run_cache
    from salt.models import build_encoder, save_encoder
    from salt.video.synthetic import SyntheticSpec, make_synthetic

    paired_steps = 2 * window * (pairs + 1)  # the first pair is the warm-up
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_synthetic(tmp / "data", SyntheticSpec(videos=32, size=80))
        caches = {}
        for name, arch in (("small", "vit_tiny"), ("large", "vit_small")):
            torch.manual_seed(0)
            teacher = build_encoder(arch, img_size=64, num_frames=16)
            save_encoder(tmp / f"{name}.pt", teacher, kind="teacher")
            run_cache(
                CacheJob(
                    teacher=str(tmp / f"{name}.pt"),
                    data=str(tmp / "data" / "train.csv"),
                    out=str(tmp / name),
                    views=2,
                    shard_videos=4,
                    workers=2,
                    progress=False,
                )
            )
            caches[name] = {
                "path": tmp / name,
                "teacher": tmp / f"{name}.pt",
                "dim": teacher.embed_dim,
                "teacher_params_mb": sum(p.numel() for p in teacher.parameters()) * 4 / 2**20,
            }
        config = tmp / "student.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "geometry": {"frames": 16, "frame_step": 4, "size": 64},
                    "encoder": {"arch": "vit_tiny"},
                    "predictor": {"width": 128, "depth": 4, "num_heads": 4},
                    "optim": {"steps": steps, "warmup_steps": 5},
                    "engine": {"zero_stage": 1},
                    "run": {"log_every": max(1, steps // 4), "checkpoint_every": 10**6, "progress": False},
                }
            )
        )
        base = [
            f"data.batch_size={batch_size}",
            f"cache.path={caches['small']['path']}",
            f"teacher={caches['small']['teacher']}",
        ]
        runs = 0

        def run(extra: list[str], replay_window: int = 0) -> list[dict]:
            nonlocal runs
            runs += 1
            return _run_student(config, base + extra + [f"run.out_dir={tmp / f'run{runs}'}"], replay_window)

        def measure(extra: list[str]) -> dict:
            rows = run(extra)[1:]  # drop the warm-up window
            return {
                "step_s": float(np.mean([1 / r["steps_per_s"] for r in rows])),
                "data_wait_share": float(np.mean([r["data_wait_share"] for r in rows])),
                "peak_rss_mb": rows[-1]["peak_rss_mb"],
            }

        def paired(extra: list[str]) -> dict:
            """Streamed / replayed window pairs of `repeats` runs, the first pair of each dropped."""
            streamed, replayed, waits = [], [], []
            for _ in range(repeats):
                rows = run(extra + [f"optim.steps={paired_steps}", f"run.log_every={window}"], replay_window=window)
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

        paired_runs = {
            "cache": paired(["targets=cache", "data.workers=2"]),
            "cache, frames decoded in the training process": paired(
                ["targets=cache", "data.workers=2", "data.decode_frames=device"]
            ),
        }
        step_time = {"teacher": measure(["targets=teacher", "data.workers=2"])}
        workers = {w: measure(["targets=cache", f"data.workers={w}"]) for w in (0, 1, 2)}
        rss = {}
        for name, cache in caches.items():
            rss[name] = {
                **measure(["targets=cache", "data.workers=0", f"cache.path={cache['path']}"]),
                "teacher_dim": cache["dim"],
                "teacher_weights_mb": cache["teacher_params_mb"],
            }
        costs = _loader_costs(caches["small"]["path"], batch_size, (8, 4, 4))
    # What the larger teacher's dim should add: the predictor's output layer (weights, grads,
    # two Adam moments, fp32) and the target tensors of a batch.
    extra_dim = rss["large"]["teacher_dim"] - rss["small"]["teacher_dim"]
    expected_mb = (129 * extra_dim * 4 * 4 + batch_size * 128 * extra_dim * 4 * 3) / 2**20
    memory_s = paired_runs["cache"]["replayed_s"]
    results = {
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
    settings = {
        "steps": steps,
        "paired_steps": paired_steps,
        "window": window,
        "pairs": pairs,
        "batch_size": batch_size,
        "repeats": repeats,
        "student": "vit_tiny (predictor 128x4)",
        "geometry": "16x64²",
        "teachers": {"small": "vit_tiny (dim 128)", "large": "vit_small (dim 384)"},
    }
    save_record("student", settings, results, results_dir)
    return {"settings": settings, "results": results}


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
    for name, row in [("online teacher (vit_tiny), 2 workers", r["step_time"]["teacher"])] + [
        (f"cache, {w} workers", row) for w, row in r["workers"].items()
    ]:
        lines.append(f"{name:<48}{row['step_s'] * 1000:>9.1f}{row['data_wait_share']:>11.1%}")
    lines.append(f"teacher − cache (2 workers): {r['teacher_minus_cache_s'] * 1000:.1f} ms")
    c = r["loader_cpu_ms_per_batch"]
    lines.append(
        f"loader CPU per batch, one core: {c['batch_ms']:.1f} ms = read + CRC + latents "
        f"{c['read_and_latents_ms']:.1f}, "
        f"JPEG decode {c['jpeg_decode_ms']:.1f}, masks {c['masks_ms']:.1f}; bytes only (decode on the device) "
        f"{c['bytes_only_batch_ms']:.1f} ms; {r['loader_cpu_share_of_step']:.1%} of the cores' step time"
    )
    for name, row in r["rss"].items():
        lines.append(
            f"peak RSS, {name} teacher's cache (dim {row['teacher_dim']}, weights {row['teacher_weights_mb']:.1f} "
            f"MB): {row['peak_rss_mb']:.0f} MB"
        )
    lines.append(
        f"RSS difference {r['rss_difference_mb']:.0f} MB; predictor output layer + target buffers predict "
        f"{r['rss_difference_expected_mb']:.1f} MB"
    )
    return "\n".join(lines)


def _jpeg_decoders(samples: list[list[bytes]], rounds: int = 3) -> dict:
    """ms per view (one core) of each JPEG decoder at hand, on a cache's stored frames, and
    whether it gives torchvision's pixels exactly. The reader uses the fastest exact one."""
    import io

    from PIL import Image
    from torchvision.io import decode_jpeg

    from salt.latents.codecs import decode_frames

    def torchvision_batched(frames):
        images = decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in frames])
        return np.stack([image.numpy() for image in images]).transpose(0, 2, 3, 1)

    def pillow(frames):
        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in frames])

    decoders = {
        "torchvision decode_jpeg (batched)": torchvision_batched,
        "simplejpeg into one array (the reader's)": decode_frames,
        "PIL": pillow,
    }
    try:  # not a dependency: measured when installed
        import cv2

        cv2.setNumThreads(1)
        decoders["OpenCV imdecode"] = lambda frames: np.stack(
            [
                cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                for b in frames
            ]
        )
    except ImportError:
        pass
    torch.set_num_threads(1)
    reference = [torchvision_batched(frames) for frames in samples]
    table = {}
    for name, decode in decoders.items():
        decode(samples[0])
        start = time.perf_counter()
        for _ in range(rounds):
            decoded = [decode(frames) for frames in samples]
        table[name] = {
            "ms_per_view": (time.perf_counter() - start) / (rounds * len(samples)) * 1000,
            "exact": all(np.array_equal(a, b) for a, b in zip(decoded, reference)),
        }
    torch.set_num_threads(os.cpu_count() or 1)
    return table


def _empty_remote_folder(url: str):
    """(file system, path) of an object-store folder the benchmark may fill and delete (an
    unreachable store or missing credentials: salt/errors.py names them in one line)."""
    import fsspec

    from salt.config import ConfigError

    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root) and fs.ls(root):
        raise ConfigError(f"--s3 {url} holds files already; name an empty folder (the benchmark deletes it after)")
    return fs, root


def bench_loader(
    videos: int, seconds: int, size: int, samples: int, results_dir: str, s3_url: str | None = None
) -> dict:
    """Samples/s of one worker: the student's cache reader vs. a V-JEPA-style online pipeline,
    on the same 640x360 H.264 videos, side by side in one process. With `s3_url`, the same
    cache is also uploaded there and read back from the object store (whole shards, read ahead)."""
    from salt.cache_latents import CacheJob, run_cache
    from salt.latents import open_cache
    from salt.models import build_encoder, save_encoder
    from salt.video.decode import decode_views
    from salt.video.sources import load_records
    from salt.video.synthetic import make_benchmark_videos
    from salt.video.views import ViewConfig, to_model_input

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv = make_benchmark_videos(tmp / "videos", videos, seconds)
        records = load_records(csv)
        view = ViewConfig(frames=16, frame_step=4, size=size)
        teacher = build_encoder("vit_tiny", img_size=size, num_frames=16)
        save_encoder(tmp / "teacher.pt", teacher, kind="teacher")
        run_cache(
            CacheJob(
                teacher=str(tmp / "teacher.pt"),
                data=str(csv),
                out=str(tmp / "cache"),
                views=2,
                shard_videos=max(1, videos // 2),
                workers=2,
                progress=False,
            )
        )
        cache = open_cache(tmp / "cache", "wds")
        per_view_bytes = (cache.manifest.latent_bytes + cache.manifest.frame_bytes) / cache.manifest.sample_count

        def endless(**reads):
            for epoch in itertools.count():
                yield from cache.stream(seed=0, epoch=epoch, **reads)

        def cache_reader():
            stream = endless(latents="stored")  # as the student's loader reads (float32 made on the device)
            for _ in range(samples):
                sample = next(stream)
                torch.from_numpy(sample.frames), sample.latents  # uint8 frames + targets, as the loader hands them over

        def bytes_reader():
            stream = endless(frames="encoded", latents="stored")  # data.decode_frames: device
            for _ in range(samples):
                next(stream)

        def latents_reader():
            stream = endless(frames="none")  # what a probe reads of its feature cache
            for _ in range(samples):
                next(stream)

        def online():
            for i in range(samples):
                record = records[i % len(records)]
                frames, _ = decode_views(record.path, record.video_id, [i], view)[
                    0
                ]  # decode + random resized crop + flip
                to_model_input(torch.from_numpy(frames)[None])  # normalise

        pipelines = [
            ("cache reader", cache_reader),
            ("cache reader, JPEG bytes only (decode on the device)", bytes_reader),
            ("cache reader, latents only (probe)", latents_reader),
            ("online decode + augment", online),
        ]
        stored_frames = [frames for _, _, _, frames, _ in itertools.islice(cache.raw_shard(0), 16)]
        decoders = _jpeg_decoders(stored_frames)
        bytes_read = {"cache reader": per_view_bytes}
        with contextlib.ExitStack() as stack:
            if s3_url:
                fs, root = _empty_remote_folder(s3_url)
                fs.put(str(tmp / "cache"), root, recursive=True)
                stack.callback(fs.rm, root, recursive=True)
                remote = open_cache(s3_url, "wds")

                def s3_reader():
                    stream = itertools.chain.from_iterable(
                        remote.stream(seed=0, epoch=e, latents="stored") for e in itertools.count()
                    )
                    for _ in range(samples):
                        sample = next(stream)
                        torch.from_numpy(sample.frames), sample.latents

                pipelines.insert(1, ("cache reader, object store", s3_reader))
                # Whole shards are read: the tar (and its index) per sample, whatever the sample's own size.
                shard_bytes = sum(r.bytes["wds"] for r in cache.manifest.shards)
                index_bytes = sum(len(fs.cat_file(p)) for p in fs.find(f"{root}/wds") if p.endswith(".idx.json"))
                bytes_read["cache reader, object store"] = (shard_bytes + index_bytes) / cache.manifest.sample_count
            rates = {}
            for name, fn in pipelines:
                torch.set_num_threads(1)  # one worker = one core
                start = time.perf_counter()
                fn()
                rates[name] = samples / (time.perf_counter() - start)
            torch.set_num_threads(os.cpu_count() or 1)
    results = {
        "samples_per_s_per_worker": rates,
        "speedup": rates["cache reader"] / rates["online decode + augment"],
        "jpeg_decoders": decoders,
        "cache_bytes_per_view": per_view_bytes,
        "bytes_read_per_sample": bytes_read,
    }
    if s3_url:
        results["s3_vs_local_disk"] = rates["cache reader, object store"] / rates["cache reader"]
    settings = {
        "videos": videos,
        "video": f"640x360 H.264, {seconds} s",
        "clip": f"16 frames step 4 at {size}²",
        "samples": samples,
        "teacher for the cache": "vit_tiny (dim 128), fp16, blosc-zstd, JPEG q90",
        "store": "s3" if s3_url else "local",
        "s3_url": s3_url,
    }
    save_record("loader-s3" if s3_url else "loader", settings, results, results_dir)
    return {"settings": settings, "results": results}


def format_loader(report: dict) -> str:
    s, r = report["settings"], report["results"]
    lines = [
        f"salt bench loader: {s['videos']} videos ({s['video']}), {s['clip']}, {s['samples']} samples per pipeline, "
        "one core each"
    ]
    lines += [f"{name:<56}{rate:>8.1f} samples/s" for name, rate in r["samples_per_s_per_worker"].items()]
    lines.append(
        f"cache reader / online pipeline: {r['speedup']:.1f}x (goal >= 20x); cache "
        f"{r['cache_bytes_per_view'] / 1e3:.0f} kB per view"
    )
    lines.append(f"{'JPEG decoder, stored 16-frame views':<56}{'ms/view':>8}  exact")
    for name, row in r.get("jpeg_decoders", {}).items():
        lines.append(f"{name:<56}{row['ms_per_view']:>8.2f}  {'yes' if row['exact'] else 'no'}")
    if "s3_vs_local_disk" in r:
        read = r["bytes_read_per_sample"]
        lines.append(
            f"object store / local disk: {r['s3_vs_local_disk']:.2f}; bytes read per sample: disk "
            f"{read['cache reader'] / 1e3:.0f} kB, S3 {read['cache reader, object store'] / 1e3:.0f} kB (whole shards)"
        )
    return "\n".join(lines)
