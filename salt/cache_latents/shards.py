"""The shard plan, shard assembly and the commit protocol, shared by every engine.

Work is planned in shards: fixed blocks of `shard_videos` videos x a range of views. A shard is
written atomically and then marked done (`done/<shard>.json`, the commit point); a killed run,
started again with the same command, redoes only shards without a mark. A larger `--views` or
more videos adds shards for what is missing and never touches the old ones. When every planned
shard is done, `manifest.json` is written (the merge: merge.py).
"""

from __future__ import annotations

import concurrent.futures
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt.cache_latents.job import CacheJob
from salt.latents import (
    FRAME_EXT,
    EncodedSample,
    LatentCodec,
    ShardId,
    ShardRecord,
    TargetBasis,
    ZarrCacheWriter,
    normalise_targets,
    sample_key,
    storage,
    write_json_atomic,
    write_wds_shard,
)
from salt.latents.errors import CacheWriteError
from salt.runtime.preemption import StopSignals
from salt.video.sources import VideoRecord
from salt.video.views import ViewConfig, ViewParams

SETTINGS = "cache_settings.json"  # what a cache was made with; a rerun must match it


# ----------------------------------------------------------------------------- planning


def plan_missing(num_videos: int, views: int, shard_videos: int, done: list[ShardId]) -> list[ShardId]:
    """Rectangles (videos x views) not yet covered, inside fixed blocks of `shard_videos` videos."""
    covered = np.zeros(num_videos, dtype=np.int64)  # views done per video, a prefix 0..covered
    for shard in done:
        end = min(shard.video_end, num_videos)
        covered[shard.video_start : end] = np.maximum(covered[shard.video_start : end], shard.view_end)
    missing = []
    for block_start in range(0, num_videos, shard_videos):
        block_end = min(block_start + shard_videos, num_videos)
        run_start = block_start
        for video in range(block_start, block_end + 1):
            if video == block_end or covered[video] != covered[run_start]:
                if covered[run_start] < views:
                    missing.append(ShardId(run_start, video, int(covered[run_start]), views))
                run_start = video
    return missing


def rank_of(shard: ShardId, shard_videos: int, world_size: int) -> int:
    """Ranks own whole video blocks, so the split never depends on who finished what."""
    return (shard.video_start // shard_videos) % world_size


def done_shards(out: Path | str) -> list[tuple[ShardId, dict]]:
    done = []
    for name in storage.list_names(storage.join(out, "done"), suffix=".json"):
        entry = json.loads(storage.read_bytes(storage.join(out, "done", name)))
        done.append((ShardRecord(**entry["record"]).shard_id, entry))
    return done


def check_settings(out: Path | str, settings: dict, overwrite: bool) -> None:
    path = storage.join(out, SETTINGS)
    if storage.is_file(path):
        saved = _with_decoder_recorded(json.loads(storage.read_bytes(path)), settings)
        changed = setting_differences(saved, settings)
        if changed and not overwrite:
            decoder = saved.get("view", {}).get("decoder")  # compact-cache's settings have no view
            other = (
                f"rerun with --decoder {decoder} to continue it, "
                if decoder != settings.get("view", {}).get("decoder")
                else ""
            )
            raise CacheWriteError(
                f"{out} holds a cache made with other settings ({'; '.join(changed)}) — "
                f"{other}use another --out, or --overwrite to replace it"
            )
        if changed:
            for child in ("manifest.json", "done", "wds", "cache.zarr"):  # the commit marks first
                storage.remove_tree(storage.join(out, child))
    write_json_atomic(path, settings)


def _with_decoder_recorded(saved: dict, now: dict) -> dict:
    """Settings saved before decoders were recorded: those caches were decoded by decord, whose
    version went unrecorded (any decord continues them)."""
    if "video_decoder" in saved or "view" not in saved or "view" not in now:
        return saved
    version = now["video_decoder"] if now["view"]["decoder"] == "decord" else "decord (version not recorded)"
    return {**saved, "view": {**saved["view"], "decoder": "decord"}, "video_decoder": version}


def setting_differences(saved: Any, now: Any, key: str = "") -> list[str]:
    """`key: cache X, now Y` for every setting that differs; dicts key by key, so a teacher's arch
    names only what changed; long values (fingerprints) cut short."""
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = sorted(set(saved) | set(now))
        return [
            line for k in keys for line in setting_differences(saved.get(k), now.get(k), f"{key}.{k}" if key else k)
        ]
    if saved == now:
        return []
    short = lambda value: f"{value[:12]}…" if isinstance(value, str) and len(value) > 40 else repr(value)  # noqa: E731
    return [f"{key}: cache {short(saved)}, now {short(now)}"]


@dataclass
class CachePlan:
    """What one writer (a rank, or the Ray driver) is to do: its missing shards of the cache."""

    job: CacheJob
    out: Path
    records: list[VideoRecord]
    view: ViewConfig
    encoder: torch.nn.Module
    arch: dict
    shards: list[ShardId]
    stop: StopSignals = field(default_factory=StopSignals)  # engines end early once `stop.received`

    def work(self) -> list[tuple[int, int, int, int]]:
        """(shard index, video index, first view, end view) for every video of every planned shard."""
        return [
            (i, v, s.view_start, s.view_end)
            for i, s in enumerate(self.shards)
            for v in range(s.video_start, s.video_end)
        ]

    @property
    def planned_views(self) -> int:
        return sum((s.video_end - s.video_start) * (s.view_end - s.view_start) for s in self.shards)


# ----------------------------------------------------------------------------- assembly


@dataclass
class _OpenShard:
    expected: int  # views planned: videos x views of the shard
    samples: dict[tuple[int, int], tuple[VideoRecord, ViewParams, list[bytes], torch.Tensor]] = field(
        default_factory=dict
    )
    skipped: dict[int, dict] = field(default_factory=dict)
    skipped_views: int = 0
    decoded_on: Counter = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        return len(self.samples) + self.skipped_views >= self.expected


class ShardAssembler:
    """Finished views of the planned shards collect here; a shard whose every video has arrived
    (with all its views, or as a skip) is encoded, written and marked done on a writer thread
    while the teacher runs on. Arrival order does not matter and a repeated view (an engine
    retrying a task) is kept once: each shard is written sorted by (video, view), so every engine
    writes the same shard bytes."""

    def __init__(
        self,
        out: Path,
        shards: list[ShardId],
        codec: LatentCodec,
        zarr_writer: ZarrCacheWriter | None,
        job: CacheJob,
        basis: TargetBasis | None = None,
    ):
        self.out, self.shards, self.codec, self.zarr_writer, self.job = out, shards, codec, zarr_writer, job
        self.basis = basis  # --target-rank: latents are stored as coefficients in this basis
        self._open = {
            i: _OpenShard((s.video_end - s.video_start) * (s.view_end - s.view_start)) for i, s in enumerate(shards)
        }
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._writes: list[concurrent.futures.Future] = []
        self.repeated = 0  # views that arrived twice (dropped)

    def add_view(
        self,
        index: int,
        record: VideoRecord,
        params: ViewParams,
        frames: list[bytes],
        latents: torch.Tensor,
        where: str | None = None,
    ) -> None:
        shard = self._open.get(index)
        key = (record.video_id, params.view_index)
        if shard is None or key in shard.samples:
            self.repeated += 1
            return
        shard.samples[key] = (record, params, frames, latents)
        if where is not None:
            shard.decoded_on[where] += 1
        self._maybe_commit(index)

    def skip_video(self, index: int, record: VideoRecord, reason: str) -> None:
        shard = self._open.get(index)
        if shard is None or record.video_id in shard.skipped:
            self.repeated += 1
            return
        shard.skipped[record.video_id] = {"video": record.video_id, "path": record.name, "reason": reason}
        shard.skipped_views += self.shards[index].view_end - self.shards[index].view_start
        self._maybe_commit(index)

    def _maybe_commit(self, index: int) -> None:
        self.check()
        if self._open[index].complete:
            shard = self._open.pop(index)
            self._writes.append(
                self._writer.submit(
                    store_shard, self.out, self.shards[index], shard, self.codec, self.zarr_writer, self.job, self.basis
                )
            )

    def check(self) -> None:
        """Re-raise a failed write (e.g. a full disk) now, not at the end of the run."""
        for future in self._writes:
            if future.done():
                future.result()

    @property
    def open_shards(self) -> int:
        return len(self._open)

    def drop_open(self) -> int:
        """Forget the shards still waiting for views (a stopped run: the rerun redoes them);
        how many there were."""
        dropped = len(self._open)
        self._open.clear()
        return dropped

    def close(self) -> None:
        """Wait for the writes in flight; every planned shard must have been committed."""
        self._writer.shutdown(wait=True)
        for future in self._writes:
            future.result()
        if self._open:
            names = ", ".join(self.shards[i].name for i in sorted(self._open)[:4])
            raise CacheWriteError(
                f"{self.out}: {len(self._open)} planned shards did not receive every view ({names}, ...); "
                "they are not marked done: run the same command again to redo them"
            )

    def __enter__(self) -> "ShardAssembler":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self._writer.shutdown(wait=True, cancel_futures=True)  # finish the shard being written; commit nothing else


def store_shard(
    out: Path | str,
    shard: ShardId,
    state: _OpenShard,
    codec: LatentCodec,
    zarr_writer,
    job: CacheJob,
    basis: TargetBasis | None = None,
) -> None:
    """Encode and write one shard in every format, then mark it done (the commit point)."""
    encoded, zarr_samples = [], []
    for key in sorted(state.samples):
        record, params, frames, tokens = state.samples[key]
        meta = {
            "video": record.video_id,
            "view": params.view_index,
            "source": record.name,
            "label": record.label,
            "view_params": params.to_dict(),
        }
        stored = codec.to_stored(tokens if basis is None else basis.project(normalise_targets(tokens)))
        encoded.append(
            EncodedSample(
                key=sample_key(record.video_id, params.view_index),
                frames=frames,
                frame_ext=FRAME_EXT[job.frames_codec],
                latents=codec.encode(stored),
                meta=meta,
            )
        )
        zarr_samples.append((record.video_id, params.view_index, stored, frames, meta))
    # A shard that starts inside a Zarr shard (videos added later) shares it with a done one.
    partial = shard.video_start % job.shard_videos != 0
    skipped = [state.skipped[v] for v in sorted(state.skipped)]
    decoded_on = dict(sorted(state.decoded_on.items()))  # Ray node id -> views decoded there
    commit_shard(out, shard, encoded, zarr_samples, zarr_writer, job.formats, partial, skipped, decoded_on)


def commit_shard(
    out, shard: ShardId, encoded, zarr_samples, zarr_writer, formats, partial_zarr: bool, skipped, decoded_on=None
) -> None:
    """Write a shard's samples in each format, then mark it done (its record, skipped videos and
    sizes in `done/NAME.json`): the shard counts once that file exists. Shared by the writers of
    `cache-latents` and `compact-cache`."""
    try:
        wds_files = write_wds_shard(storage.join(out, "wds"), shard, encoded) if "wds" in formats else None
        zarr_bytes = (
            zarr_writer.write_shard(shard, zarr_samples, allow_partial_zarr_shard=partial_zarr) if zarr_writer else None
        )
    except OSError as err:  # a full disk, a lost mount: the shard is not marked done, so a rerun redoes it
        raise CacheWriteError(
            f"{out}: writing shard {shard.name} failed: {err.strerror or err}. Its partial tar was removed and it is "
            "not marked done; free space (or fix the disk) and run the same command again: finished shards are kept."
        ) from err
    record = ShardRecord.for_shard(
        shard,
        len(encoded),
        wds_bytes=wds_files.bytes if wds_files else None,
        wds_sha256=wds_files.sha256 if wds_files else None,
        zarr_bytes=zarr_bytes,
    )
    done = {
        "record": asdict(record),
        "skipped": skipped,
        "latent_bytes": sum(len(b) for e in encoded for b in e.latents.values()),
        "frame_bytes": sum(len(f) for e in encoded for f in e.frames),
    }
    if decoded_on:
        done["decoded_on"] = decoded_on
    write_json_atomic(storage.join(out, "done", f"{shard.name}.json"), done)
