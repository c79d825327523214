"""Caches of any size, made fast through the project's own writer and merge (`salt bench scale`).

A fabricated cache has Kinetics' shape, 8 views per video and 8 videos per shard (64 samples a
shard: 5.3 M samples are 83 000 shards), with tiny samples (one 8×8 JPEG frame and one token of
8 channels): every file the reader touches is real (tars, their indexes, commit marks,
manifest), only small. `manifest_only` writes the commit marks but no tars: enough for what
does not read samples (merge, open, order, index memory) at sizes whose tars would not fit here.
Works on a local folder or an object-store URL.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
import torch

from salt.latents import LatentCodec, ShardId, ShardRecord, encode_frames, sample_key, storage
from salt.latents.codecs import DEFAULT_COMPRESSOR
from salt.latents.samples import EncodedSample

VIEWS, SHARD_VIDEOS, DIM = 8, 8, 8
SHARD_SAMPLES = VIEWS * SHARD_VIDEOS


@dataclass(frozen=True)
class ScaleCache:
    path: str
    samples: int
    shards: int
    real: bool  # tars written (False: commit marks only)


def shards_for(samples: int) -> list[ShardId]:
    videos = max(1, samples // VIEWS)
    return [ShardId(v, min(v + SHARD_VIDEOS, videos), 0, VIEWS) for v in range(0, videos, SHARD_VIDEOS)]


def fabricate(out, samples: int, real: bool, threads: int = 8) -> ScaleCache:
    """Shards (or only their commit marks), then the project's merge; kept when already there."""
    from salt.cache_latents.merge import merge

    out = storage.resolve(out)
    shards = shards_for(samples)
    if not storage.exists(storage.join(out, "manifest.json")):
        write = _write_shard if real else _write_mark
        done = set(storage.list_names(storage.join(out, "done"), suffix=".json"))
        todo = [s for s in shards if f"{s.name}.json" not in done]
        with ThreadPoolExecutor(threads) as pool:  # the writes are I/O (and fsync) bound
            list(pool.map(lambda shard: write(out, shard), todo))
        if not real and not storage.is_url(out):
            os.makedirs(storage.join(out, "wds"), exist_ok=True)  # a reader looks for the format's folder
        job, settings, view, arch = merge_inputs(out, len(shards) * SHARD_VIDEOS)
        merge(job, out, settings, shards[-1].video_end, (1, 1, 1), DIM, view, arch)
    return ScaleCache(str(out), sum(_held(s) for s in shards), len(shards), real)


def merge_inputs(out, videos: int, views: int = VIEWS, shard_videos: int = SHARD_VIDEOS, **geometry):
    """What `merge` is handed by `salt cache-latents` for these caches (a made-up teacher);
    `geometry`: frames, frame_step, size, dim, patch, tubelet (tiny by default)."""
    g = {"frames": 1, "frame_step": 1, "size": 8, "dim": DIM, "patch": 8, "tubelet": 1, **geometry}
    from salt.cache_latents.job import CacheJob
    from salt.video.decoders import decoder_version
    from salt.video.views import ViewConfig

    job = CacheJob(
        teacher="fabricated-teacher.pt",
        data="fabricated",
        out=str(out),
        views=views,
        shard_videos=shard_videos,
        max_videos=videos,
        frames=g["frames"],
        frame_step=g["frame_step"],
        size=g["size"],
        progress=False,
        command="salt bench scale (fabricated)",
    )
    view = ViewConfig(frames=g["frames"], frame_step=g["frame_step"], size=g["size"])
    settings = {
        "teacher_fingerprint": "0" * 64,
        "compressor": DEFAULT_COMPRESSOR,
        "formats": ["wds"],
        "video_decoder": decoder_version(),
    }
    arch = {"embed_dim": g["dim"], "depth": 1, "num_heads": 1, "patch_size": g["patch"], "tubelet_size": g["tubelet"]}
    arch["num_frames"] = g["frames"]
    return job, settings, view, arch


def _held(shard: ShardId) -> int:
    return (shard.video_end - shard.video_start) * (shard.view_end - shard.view_start)


def _samples(shard: ShardId) -> list[EncodedSample]:
    codec = LatentCodec("fp16", DEFAULT_COMPRESSOR)
    rng = np.random.default_rng(shard.video_start)
    frame = encode_frames(rng.integers(0, 255, (1, 8, 8, 3), dtype=np.uint8), "jpeg")
    latents = codec.encode(codec.to_stored(torch.from_numpy(rng.standard_normal((1, DIM)).astype(np.float32))))
    return [
        EncodedSample(sample_key(video, view), frame, "jpg", latents, {"video": video, "view": view})
        for video, view in shard.sample_ids()
    ]


def _write_shard(out, shard: ShardId) -> None:
    from salt.cache_latents.shards import commit_shard

    commit_shard(out, shard, _samples(shard), None, None, ("wds",), False, skipped=[])


def _write_mark(out, shard: ShardId) -> None:
    """The commit mark a written shard leaves (its record as the writer makes it), without the tar."""
    record = ShardRecord.for_shard(shard, _held(shard), wds_bytes=150_000_000, wds_sha256=f"{shard.video_start:064x}")
    done = {"record": asdict(record), "skipped": [], "latent_bytes": 3_200_000 * _held(shard), "frame_bytes": 1}
    path = storage.join(out, "done", f"{shard.name}.json")
    data = json.dumps(done).encode()
    if storage.is_url(path):
        storage.write_bytes(path, data)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:  # fabrication speed: no fsync (the merge is what is measured)
            handle.write(data)
