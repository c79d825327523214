"""`run_cache`: what every engine shares. Load the teacher, check the output's settings, take
the writer's lock, plan the missing shards, hand them to an engine with a `ShardAssembler`, and
merge (write the manifest) once every planned shard is done."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from salt.cache_latents.job import CacheJob
from salt.cache_latents.locks import OutputLock
from salt.cache_latents.merge import TooManySkipped, forget_shards_with_skips, merge
from salt.cache_latents.shards import CachePlan, ShardAssembler, check_settings, done_ids, plan_missing, rank_of
from salt.latents import LatentCodec, ZarrCacheWriter, storage
from salt.latents.codecs import CODECS
from salt.latents.errors import CacheWriteError
from salt.models import fingerprint, load_encoder
from salt.runtime.preemption import Interrupted, StopSignals
from salt.video.decoders import decoder_version
from salt.video.sources import load_records
from salt.video.views import ViewConfig


def run_cache(job: CacheJob, records: list | None = None) -> Path | str | None:
    """Fill the cache for this writer; returns the manifest path once every writer is done.
    `records`: the videos of job.data when the caller has read them already (the CLI does, to
    refuse a bad list before torch is imported)."""
    out = _checked_output(job)
    encoder, arch = load_encoder(job.teacher, job.arch, job.checkpoint_key or None)
    view = ViewConfig(
        frames=job.frames or arch["num_frames"],
        frame_step=job.frame_step,
        size=job.size or arch["img_size"],
        seed=job.seed,
        eval_clips=job.eval_clips,
        eval_spatial=job.eval_spatial,
        decoder=job.decoder,
    )
    view.validate()
    records = load_records(job.data) if records is None else records
    if job.max_videos:
        records = records[: job.max_videos]
    if job.target_rank >= encoder.embed_dim:
        raise CacheWriteError(
            f"--target-rank {job.target_rank}: the teacher's latents have {encoder.embed_dim} channels; "
            f"choose 1..{encoder.embed_dim - 1}, or 0 for full rank"
        )
    codec = LatentCodec(job.dtype, CODECS[job.codec])
    settings = _settings(job, encoder, arch, view, codec)
    lock = OutputLock(storage.join(out, "locks", f"rank{job.rank}-of-{job.world_size}.lock"))
    with StopSignals(job.stop_signals.split(",")) as stop:
        lock.acquire()
        try:
            return _fill_and_merge(job, out, stop, records, view, encoder, arch, settings, codec)
        finally:
            lock.release()


def _fill_and_merge(job, out, stop, records, view, encoder, arch, settings, codec) -> Path | str | None:
    """Under the writer's lock: this writer's missing shards, then the manifest once every writer
    is done. A stop signal ends it after the shards being written (`Interrupted`)."""
    grid = encoder.grid(view.frames, view.size, view.size)
    try:
        check_settings(out, settings, job.overwrite)
        missing = plan_missing(len(records), job.views, job.shard_videos, done_ids(out))
        mine = [s for s in missing if rank_of(s, job.shard_videos, job.world_size) == job.rank]
        basis = None
        if job.target_rank and (mine and not job.merge_only or not missing):
            from salt.cache_latents.low_rank import basis_for

            basis = basis_for(out, job, records, view, encoder)
        if mine and not job.merge_only:
            zarr_writer = _zarr_writer(job, out, len(records), grid, view, codec, job.target_rank or encoder.embed_dim)
            plan = CachePlan(job, out, records, view, encoder, arch, mine, stop)
            _fill(plan, ShardAssembler(out, mine, codec, zarr_writer, job, basis))
        if stop.received:
            done = set(done_ids(out))
            raise Interrupted(
                f"preempted by {stop.received}: {sum(s in done for s in mine)} of {len(mine)} shards saved in {out} "
                "— rerun the same command to continue"
            )
        return merge(job, out, settings, len(records), grid, encoder.embed_dim, view, arch)
    except TooManySkipped:
        forget_shards_with_skips(out)  # after the writer thread stopped: the corrected rerun redoes them
        raise


def _checked_output(job: CacheJob) -> Path | str:
    """The job checked and its output resolved (a local Path or an object-store URL)."""
    try:
        job.validate()
    except ValueError as err:
        raise CacheWriteError(f"salt cache-latents: {err}") from None
    out = storage.resolve(job.out)  # a scheme we cannot serve stops here
    if not storage.is_url(out) and out.exists() and not out.is_dir():
        raise CacheWriteError(f"{out} is a file, not a cache folder: give --out a folder (new or a cache to resume)")
    if storage.is_url(out) and "zarr" in job.formats:
        raise CacheWriteError(
            f"{job.out}: the Zarr store is written to local or shared "
            "file systems only; use --format wds for an object store"
        )
    return out


def _settings(job: CacheJob, encoder, arch: dict, view: ViewConfig, codec: LatentCodec) -> dict:
    """What every writer of the output must share (saved beside it and checked on each run)."""
    settings = {
        "teacher_fingerprint": fingerprint(encoder.state_dict()),
        "teacher_arch": arch,
        "view": asdict(view),
        # The library that turns video into frames (its version too: another one may give
        # other pixels, as another teacher gives other latents).
        "video_decoder": decoder_version(view.decoder),
        "dtype": job.dtype,
        "compressor": codec.compressor,
        "frames_codec": job.frames_codec,
        "jpeg_quality": job.jpeg_quality,
        "formats": sorted(job.formats),
        "shard_videos": job.shard_videos,
        "data": str(job.data),
        **({"target_rank": job.target_rank, "basis_videos": job.basis_videos} if job.target_rank else {}),
    }
    return json.loads(json.dumps(settings))  # plain JSON types, as a saved copy reads back


def _zarr_writer(job: CacheJob, out: Path, videos: int, grid, view: ViewConfig, codec: LatentCodec, dim: int):
    if "zarr" not in job.formats:
        return None
    with storage.file_lock(out / "locks" / "zarr.lock"):  # ranks create or grow the store one at a time
        return ZarrCacheWriter.open(
            out / "cache.zarr",
            num_videos=videos,
            views=job.views,
            grid_tokens=int(np.prod(grid)),
            dim=dim,
            stored_dtype=job.dtype,
            compressor=codec.compressor,
            frames_per_clip=view.frames,
            videos_per_shard=job.shard_videos,
        )


def _fill(plan: CachePlan, assembler: ShardAssembler) -> None:
    with assembler:
        if plan.job.engine == "ray":
            from salt.cache_latents.ray_engine import run_ray

            run_ray(plan, assembler)
        else:
            from salt.cache_latents.local import run_local

            run_local(plan, assembler)
        if plan.stop.received:  # the shards written (or being written) are kept; the rest is redone
            assembler.drop_open()
