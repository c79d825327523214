"""`salt bench loader`: samples/s of one worker, the student's cache reader vs. a V-JEPA-style
online decode + augment, the JPEG decoders side by side, and (with --s3) the cache read back
from an object store."""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from salt.tools.bench import save_record


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
    from salt.video.sources import load_records
    from salt.video.views import ViewConfig

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        csv, cache = _benchmark_cache(tmp, videos, seconds, size)
        view = ViewConfig(frames=16, frame_step=4, size=size)
        pipelines = _pipelines(cache, load_records(csv), view, samples)
        stored_frames = [frames for _, _, _, frames, _ in itertools.islice(cache.raw_shard(0), 16)]
        decoders = _jpeg_decoders(stored_frames)
        bytes_read = {"cache reader": sum(cache.manifest.bytes_per_view())}
        with contextlib.ExitStack() as stack:
            if s3_url:
                remote, remote_bytes = _remote_copy(stack, tmp / "cache", s3_url, cache.manifest)
                pipelines.insert(
                    1, ("cache reader, object store", lambda: _hand_over(_endless(remote, latents="stored"), samples))
                )
                bytes_read["cache reader, object store"] = remote_bytes
            rates = _rates_per_worker(pipelines, samples)
    results = {
        "samples_per_s_per_worker": rates,
        "speedup": rates["cache reader"] / rates["online decode + augment"],
        "jpeg_decoders": decoders,
        "cache_bytes_per_view": bytes_read["cache reader"],
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


def _benchmark_cache(tmp: Path, videos: int, seconds: int, size: int):
    """Benchmark videos made in `tmp` and a 2-view cache of them by a vit_tiny teacher: (CSV, cache)."""
    from salt.cache_latents import CacheJob, run_cache
    from salt.latents import open_cache
    from salt.models import build_encoder, save_encoder
    from salt.video.synthetic import make_benchmark_videos

    csv = make_benchmark_videos(tmp / "videos", videos, seconds)
    save_encoder(tmp / "teacher.pt", build_encoder("vit_tiny", img_size=size, num_frames=16), kind="teacher")
    job = CacheJob(
        teacher=str(tmp / "teacher.pt"),
        data=str(csv),
        out=str(tmp / "cache"),
        views=2,
        shard_videos=max(1, videos // 2),
        workers=2,
        progress=False,
    )
    run_cache(job)
    return csv, open_cache(tmp / "cache", "wds")


def _rates_per_worker(pipelines: list[tuple[str, object]], samples: int) -> dict[str, float]:
    """Samples/s of each pipeline on one core (one worker = one core), one after another."""
    rates = {}
    try:
        for name, pipeline in pipelines:
            torch.set_num_threads(1)
            start = time.perf_counter()
            pipeline()
            rates[name] = samples / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(os.cpu_count() or 1)
    return rates


def _endless(cache, **reads):
    for epoch in itertools.count():
        yield from cache.stream(seed=0, epoch=epoch, **reads)


def _hand_over(stream, samples: int) -> None:
    """Draw samples as the student's loader reads them: uint8 frames and stored targets (float32
    is made on the device)."""
    for _ in range(samples):
        sample = next(stream)
        torch.from_numpy(sample.frames), sample.latents


def _drain(stream, samples: int) -> None:
    for _ in range(samples):
        next(stream)


def _pipelines(cache, records, view, samples: int) -> list[tuple[str, object]]:
    """(name, a function drawing `samples` samples) of each pipeline measured."""
    from salt.video.decode import decode_views
    from salt.video.views import to_model_input

    def online():
        for i in range(samples):
            record = records[i % len(records)]
            frames, _ = decode_views(record.path, record.video_id, [i], view)[0]  # decode + random resized crop + flip
            to_model_input(torch.from_numpy(frames)[None])  # normalise

    return [
        ("cache reader", lambda: _hand_over(_endless(cache, latents="stored"), samples)),
        # data.decode_frames: device
        (
            "cache reader, JPEG bytes only (decode on the device)",
            lambda: _drain(_endless(cache, frames="encoded", latents="stored"), samples),
        ),
        # what a probe reads of its feature cache
        ("cache reader, latents only (probe)", lambda: _drain(_endless(cache, frames="none"), samples)),
        ("online decode + augment", online),
    ]


def _remote_copy(stack: contextlib.ExitStack, local: Path, url: str, manifest):
    """The cache uploaded to `url` (deleted when `stack` closes), opened from there, and the
    bytes read per sample: whole shards (the tar and its index), whatever the sample's own size."""
    from salt.latents import load_manifest, open_cache

    fs, root = _empty_remote_folder(url)
    fs.put(str(local), root, recursive=True)
    stack.callback(fs.rm, root, recursive=True)
    shard_bytes = sum(r.bytes["wds"] for r in load_manifest(local).shards)  # a reader's manifest has no sizes
    index_bytes = sum(len(fs.cat_file(p)) for p in fs.find(f"{root}/wds") if p.endswith(".idx.json"))
    return open_cache(url, "wds"), (shard_bytes + index_bytes) / manifest.sample_count


def format_loader(report: dict) -> str:
    s, r = report["settings"], report["results"]
    lines = [
        f"salt bench loader: {s['videos']} videos ({s['video']}), "
        f"{s['clip']}, {s['samples']} samples per pipeline, one core each"
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
