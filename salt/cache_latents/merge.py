"""The merge: the manifest written once every planned shard of the cache is done, and the
skipped-video accounting that decides whether a run passes (`--max-skipped`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from salt.cache_latents.job import CacheJob
from salt.cache_latents.shards import done_ids, done_names, done_shards, plan_missing
from salt.latents import (
    BASIS_NAME,
    Manifest,
    ShardRecord,
    frames_decoder_id,
    storage,
    write_json_atomic,
)
from salt.latents.basis import manifest_record
from salt.latents.errors import CacheWriteError
from salt.video.views import IMAGENET_MEAN, IMAGENET_STD, ViewConfig


class TooManySkipped(CacheWriteError):
    """No view was cached, or more videos were skipped than --max-skipped allows."""

    def __init__(self, skipped: list[dict], num_videos: int, max_skipped: float, samples: int):
        self.skipped, self.num_videos = skipped, num_videos
        why = "no view was cached" if not samples else f"more than --max-skipped {max_skipped:g} of them"
        super().__init__(
            f"{len(skipped)} of {num_videos} videos could not be used, {why} ({name_skipped(skipped)}) — fix the data "
            "(`salt check-data DATA` lists every failure) or raise --max-skipped, then run the same command again"
        )


def check_skipped(skipped: list[dict], samples: int, num_videos: int, max_skipped: float) -> None:
    """Refuse a cache that holds nothing, or that lost more videos than the user allows."""
    if samples and len(skipped) <= max_skipped * num_videos:
        return
    raise TooManySkipped(skipped, num_videos, max_skipped, samples)


def name_skipped(skipped: list[dict], shown: int = 3) -> str:
    """The first skipped videos with their reasons (all of them are in the manifest)."""
    first = "; ".join(f"{entry['path']}: {entry['reason']}" for entry in skipped[:shown])
    return first + (f"; and {len(skipped) - shown} more" if len(skipped) > shown else "")


def forget_shards_with_skips(out: Path | str) -> None:
    """Unmark the shards that hold skipped videos, so the rerun after a fix redoes them."""
    for name in storage.list_names(storage.join(out, "done"), suffix=".json"):
        path = storage.join(out, "done", name)
        if json.loads(storage.read_bytes(path))["skipped"]:
            storage.remove(path)


def merge(
    job: CacheJob, out: Path | str, settings: dict, num_videos: int, grid, dim: int, view: ViewConfig, arch: dict
) -> Path | None:
    """Write manifest.json when every planned shard is done (by whichever writer gets here last)."""
    names = done_names(out)  # the one listing; the marks are read only once they are all there
    if plan_missing(num_videos, job.views, job.shard_videos, done_ids(out, names)):
        return None
    done = done_shards(out, names)
    done.sort(key=lambda d: (d[0].view_start, d[0].video_start))
    skipped = {entry["video"]: entry for _, d in done for entry in d["skipped"]}
    check_skipped(
        [skipped[v] for v in sorted(skipped)], sum(d["record"]["samples"] for _, d in done), num_videos, job.max_skipped
    )
    manifest = Manifest(
        teacher={
            "fingerprint": settings["teacher_fingerprint"],
            "arch": arch,
            "source": str(job.teacher),
            "checkpoint_key": job.checkpoint_key,
        },
        grid=tuple(grid),
        dim=dim,
        geometry={
            "frames": view.frames,
            "frame_step": view.frame_step,
            "size": view.size,
            "patch": arch["patch_size"],
            "tubelet": arch["tubelet_size"],
        },
        input_mean=IMAGENET_MEAN,
        input_std=IMAGENET_STD,
        frames_codec=job.frames_codec,
        jpeg_quality=job.jpeg_quality,
        frames_decoder=frames_decoder_id(),
        views=job.views,
        latent_dtype=job.dtype,
        compressor=settings["compressor"],
        formats=settings["formats"],
        num_videos=num_videos,
        shards=[ShardRecord(**d["record"]) for _, d in done],
        skipped=[skipped[v] for v in sorted(skipped)],
        sample_count=sum(d["record"]["samples"] for _, d in done),
        latent_bytes=sum(d["latent_bytes"] for _, d in done),
        frame_bytes=sum(d["frame_bytes"] for _, d in done),
        command=job.command,
        seed=job.seed,
        view_config={**asdict(view), "video_decoder": settings["video_decoder"]},
    )
    if job.target_rank:
        data = storage.read_bytes(storage.join(out, BASIS_NAME))
        manifest.target_rank, manifest.target_norm = job.target_rank, "none"
        manifest.basis = manifest_record(data, min(job.basis_videos, num_videos) * job.views, "teacher")
    path = storage.join(out, "manifest.json")
    manifest.validate(str(path))
    write_json_atomic(path, manifest.to_json())
    return path
