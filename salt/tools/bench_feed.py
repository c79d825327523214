"""`salt bench feed`: what one loader core delivers to a GPU student at the paper's geometry,
beside that core's own limit on the same bytes and beside what a ViT-L student consumes.

Two caches of 1568 tokens × 1024 channels with 16 JPEG frames of 224² a view: fp16 at full
rank, and int8 at rank 256 (D/4, made from the first by `salt compact-cache`). For each, on one
core: samples/s and GB/s through the training loader (`CacheBatches`, frames decoded on the CPU,
and with `data.decode_frames: device`, JPEG bytes left for the GPU); the core's limit for each
(the tars read, latents decompressed, frames decoded or not, nothing else); and the ViT-L student's appetite per
GPU (the round-1 H200 rate, and the rate at 35 % MFU from `salt flops`' FLOPs per clip): loader
cores a GPU needs. Record: benchmarks/results/feed.jsonl.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from salt.latents import LatentCodec, ShardId, encode_frames, open_cache, sample_key
from salt.latents.codecs import DEFAULT_COMPRESSOR
from salt.latents.samples import EncodedSample

GRID, DIM, FRAMES, SIZE = (8, 14, 14), 1024, 16, 224
H200_VIT_L_CLIPS_PER_S = 164.0  # docs/results.md, "GPU check": student step, vit_large, batch 32, eager
PEAK_BF16 = 989e12  # H100/H200 dense bf16 FLOP/s
GOAL_MFU = 0.35


def paper_frames(seed: int) -> list[bytes]:
    """16 JPEG frames of moving texture with grain (q 90), about the bytes a real view takes."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    clip = [
        128 + 80 * np.stack([np.sin(11 * xs + t / 3 + c) * np.cos(7 * ys - t / 5 + c) for c in range(3)], -1)
        for t in range(FRAMES)
    ]
    clip = np.clip(np.stack(clip) + rng.normal(0, 8, (FRAMES, SIZE, SIZE, 1)), 0, 255).astype(np.uint8)
    return encode_frames(clip, "jpeg", 90)


def fabricate_paper(out: Path, samples: int) -> Path:
    """A full-rank fp16 cache at the paper's geometry, through the project's writer and merge."""
    from salt.cache_latents.merge import merge
    from salt.cache_latents.shards import commit_shard
    from salt.tools.scale_caches import merge_inputs

    if (out / "manifest.json").exists():
        return out
    codec = LatentCodec("fp16", DEFAULT_COMPRESSOR)
    generator = torch.Generator().manual_seed(0)
    videos, per_shard = samples, 16
    for start in range(0, videos, per_shard):
        shard = ShardId(start, min(start + per_shard, videos), 0, 1)
        encoded = []
        for video, view in shard.sample_ids():
            latents = torch.randn(int(np.prod(GRID)), DIM, generator=generator)
            stored = codec.encode(codec.to_stored(latents))
            encoded.append(EncodedSample(sample_key(video, view), paper_frames(video), "jpg", stored, {"video": video}))
        commit_shard(out, shard, encoded, None, None, ("wds",), False, skipped=[])
    geometry = {"frames": FRAMES, "frame_step": 4, "size": SIZE, "dim": DIM, "patch": 16, "tubelet": 2}
    job, settings, view, arch = merge_inputs(out, videos, views=1, shard_videos=per_shard, **geometry)
    merge(job, out, settings, videos, GRID, DIM, view, arch)
    return out


def compacted(source: Path, rank: int) -> Path:
    out = source.with_name(f"{source.name}-int8-rank{rank}")
    if not (out / "manifest.json").exists():
        argv = [sys.executable, "-m", "salt.cli", "compact-cache", str(source), "--out", str(out)]
        subprocess.run(argv + ["--rank", str(rank), "--dtype", "int8", "--no-progress"], check=True)
    return out


def through_loader(cache: Path, decode_frames: str, batches: int, batch: int = 16) -> float:
    """Samples/s of the training loader in this process (one core)."""
    from salt.training.data import CacheBatches, ReaderShare

    loader = CacheBatches(
        cache_path=str(cache),
        cache_format="wds",
        batch_size=batch,
        seed=0,
        share=ReaderShare(0, 1, 1),
        mask_configs=[],
        token_grid=GRID,
        decode_frames=decode_frames,
    )
    stream = iter(loader)
    next(stream)  # opening and the first shard's read
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * batch / (time.perf_counter() - start)


def core_limit(cache: Path, frames: bool) -> float:
    """Samples/s of the bare work on the same bytes: each tar read whole, every member split out,
    the latents decompressed (numcodecs) and, if `frames`, the JPEGs decoded (simplejpeg); no
    checks, no meta, no tensors, no batches."""
    import io
    import tarfile

    import numcodecs
    import simplejpeg

    reader = open_cache(cache, "wds")
    compressor = numcodecs.get_codec(dict(reader.manifest.compressor))
    samples, start = 0, time.perf_counter()
    for path in reader.shard_paths():
        with tarfile.open(fileobj=io.BytesIO(Path(path).read_bytes())) as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".latents"):
                    compressor.decode(data)
                    samples += 1
                elif frames and member.name.endswith(".jpg"):
                    simplejpeg.decode_jpeg(data)
    return samples / (time.perf_counter() - start)


def student_appetite() -> dict:
    """Clips/s a ViT-L student takes per GPU: measured on an H200, and at the goal MFU."""
    from salt.config import load_config
    from salt.tools.flops import plan
    from salt.training.config import StudentConfig, TeacherConfig

    teacher = load_config(TeacherConfig, "configs/teacher/vit_large.yaml", [])
    student = load_config(StudentConfig, "configs/student/vit_large.yaml", [])
    found = plan(teacher, student, 0, 1, 1, 1)
    per_clip = sum(p.counted for p in found["parts"] if p.stage.startswith("2"))
    return {
        "student_tflop_per_clip": per_clip / 1e12,
        "h200_measured_clips_per_s": H200_VIT_L_CLIPS_PER_S,
        "clips_per_s_at_goal_mfu": GOAL_MFU * PEAK_BF16 / per_clip,
    }


def bench_feed(work: Path, samples: int, results: str) -> dict:
    from salt.tools.bench import save_record

    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # one core
    torch.set_num_threads(1)
    full = fabricate_paper(work / "fp16-full", samples)
    caches = {"fp16 full rank": full, "int8 rank 256": compacted(full, DIM // 4)}
    appetite = student_appetite()
    rows = {}
    for name, cache in caches.items():
        manifest = open_cache(cache).manifest
        bytes_per_view = sum(manifest.bytes_per_view())
        row = {"bytes_per_view": bytes_per_view}
        for mode in ("workers", "device"):  # frames decoded on the loader's core / left to the GPU
            row[f"limit_{mode}_samples_per_s"] = core_limit(cache, frames=mode == "workers")
            rate = through_loader(cache, mode, batches=max(4, samples // 16 - 2))
            row[f"loader_{mode}_to_limit"] = rate / row[f"limit_{mode}_samples_per_s"]
            row[f"loader_{mode}_samples_per_s"] = rate
            row[f"loader_{mode}_gb_per_s"] = rate * bytes_per_view / 1e9
            row[f"cores_per_gpu_{mode}_h200_measured"] = appetite["h200_measured_clips_per_s"] / rate
            row[f"cores_per_gpu_{mode}_at_goal_mfu"] = appetite["clips_per_s_at_goal_mfu"] / rate
        rows[name] = row
        print(json.dumps({name: row}), flush=True)
    path = save_record("feed", {"samples": samples, "one_core": True}, {"rows": rows, "student": appetite}, results)
    print(f"record: {path}")
    return {"rows": rows, "student": appetite}
