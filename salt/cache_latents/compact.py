"""`salt compact-cache SRC --out DST --rank R [--dtype int8]`: a smaller copy of a cache, made
without the teacher.

The basis (salt/latents/basis.py) is fit on the layer-normalised targets of `fit_samples`
samples spread evenly over SRC, written once to DST, and every sample's targets are stored as
its R coefficients (`rank 0`: the full D channels, only re-encoded, e.g. fp16 to int8). The
frames, meta and shard layout are copied unchanged. A low-rank SRC compacts to a lower rank by
dropping its trailing coefficients (PCA ranks are nested). Like `cache-latents`, work is done
shard by shard with done marks: a killed run, started again, redoes only unfinished shards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from salt.cache_latents.locks import OutputLock
from salt.cache_latents.shards import check_settings, commit_shard, done_ids, done_shards
from salt.latents import (
    FRAME_EXT,
    EncodedSample,
    LatentCodec,
    ShardRecord,
    ZarrCacheWriter,
    open_cache,
    sample_key,
    storage,
    write_json_atomic,
)
from salt.latents.basis import BASIS_NAME, BasisFit, TargetBasis, manifest_record
from salt.latents.codecs import CODECS
from salt.latents.errors import CacheWriteError
from salt.latents.manifest import write_bytes_atomic
from salt.latents.targets import normalise_targets


@dataclass
class CompactJob:
    source: str
    out: str
    rank: int = 0  # 0: keep the source's channels, re-encode only
    dtype: str = "int8"
    codec: str = "blosc-zstd"
    fit_samples: int = 1024  # samples the basis is fit on (all their tokens), evenly spaced over the keys
    formats: tuple[str, ...] = ("wds",)
    overwrite: bool = False
    progress: bool = True
    command: str = ""


def compact_cache(job: CompactJob) -> Path | str:
    """Write DST (resuming a killed run); returns its manifest path."""
    source = open_cache(job.source)
    manifest = source.manifest
    out = _checked_output(job, source)
    rank = job.rank or manifest.target_rank  # 0: keep the source's channels
    rank = 0 if rank == manifest.dim else rank  # every channel of a full-rank cache is full rank
    codec = LatentCodec(job.dtype, CODECS[job.codec])
    settings = {
        "source": str(source.path),
        "teacher_fingerprint": manifest.teacher.get("fingerprint"),
        "source_samples": manifest.sample_count,
        "source_rank": manifest.target_rank,
        "rank": rank,
        "dtype": job.dtype,
        "compressor": codec.compressor,
        "fit_samples": job.fit_samples,
        "formats": sorted(job.formats),
    }
    lock = OutputLock(storage.join(out, "locks", "compact.lock"))
    lock.acquire()
    try:
        check_settings(out, settings, job.overwrite)
        basis = _basis(source, out, rank, job.fit_samples) if rank else None
        zarr_writer = (
            _zarr_writer(out, manifest, rank or manifest.dim, job.dtype, codec) if "zarr" in job.formats else None
        )
        finished = {shard.name for shard in done_ids(out)}
        todo = [i for i, record in enumerate(manifest.shards) if record.name not in finished]
        progress = _progress(job.progress, sum(manifest.shards[i].samples for i in todo), out)
        for index in todo:
            _compact_shard(source, index, out, codec, basis, zarr_writer, job)
            if progress is not None:
                progress.update(manifest.shards[index].samples)
        if progress is not None:
            progress.close()
        return _merge(source, out, codec, rank, basis, job)
    finally:
        lock.release()


def _checked_output(job: CompactJob, source) -> Path | str:
    """`--out` resolved, refused (one line each) where it cannot hold this compaction."""
    manifest = source.manifest
    out = storage.resolve(job.out)
    if str(out) == str(source.path):
        raise CacheWriteError(f"--out {out} is the source cache: write the compacted copy to another folder")
    if not storage.is_url(out) and out.exists() and not out.is_dir():
        raise CacheWriteError(
            f"{out} is a file, not a cache folder: give --out a folder (new or a compaction to resume)"
        )
    if storage.is_url(out) and "zarr" in job.formats:
        raise CacheWriteError(
            f"{job.out}: the Zarr store is written to local or shared file systems only; use --format wds"
        )
    have = manifest.target_rank or manifest.dim
    if not 0 <= job.rank <= have:
        raise CacheWriteError(
            f"--rank {job.rank}: {job.source} holds {have} channels per token "
            f"({'rank' if manifest.target_rank else 'dim'} {have}); choose 1..{have} (or 0 to keep them)"
        )
    return out


def _zarr_writer(out: Path, manifest, dim: int, dtype: str, codec: LatentCodec) -> ZarrCacheWriter:
    return ZarrCacheWriter.open(
        out / "cache.zarr",
        num_videos=manifest.num_videos,
        views=manifest.views,
        grid_tokens=manifest.tokens,
        dim=dim,
        stored_dtype=dtype,
        compressor=codec.compressor,
        frames_per_clip=manifest.geometry["frames"],
        videos_per_shard=_zarr_block(manifest),
    )


def _progress(shown: bool, views: int, out: Path | str):
    """A tqdm bar over the views still to compact, or None."""
    if not shown:
        return None
    from tqdm import tqdm

    return tqdm(total=views, desc=f"compact to {out}", unit="view", dynamic_ncols=True, mininterval=1.0)


def _zarr_block(manifest) -> int:
    sizes = {r.video_end - r.video_start for r in manifest.shards if r.video_start == 0} or {1}
    return max(sizes)


def _basis(source, out, rank: int, fit_samples: int) -> TargetBasis:
    """The basis of DST: read back when a killed run already wrote it, else fit (or truncated
    from a low-rank source's) and written once."""
    path = storage.join(out, BASIS_NAME)
    if storage.is_file(path):
        return TargetBasis.from_bytes(storage.read_bytes(path), str(path))
    if source.basis is not None:
        basis = source.basis.truncate(rank)
    else:
        count = min(len(source), max(1, fit_samples))
        fit = BasisFit(source.manifest.dim)
        for i in range(count):  # evenly spaced: every video block and view range is represented
            sample = source.get((i * len(source)) // count)
            fit.add(normalise_targets(sample.latents, source.manifest.target_norm))
        basis = fit.finish(rank)
    write_bytes_atomic(path, basis.to_bytes())
    return basis


def _targets(source, basis: TargetBasis | None, latents):
    if basis is None:
        return latents  # full rank: the stored latents, only re-encoded
    if source.basis is not None:
        return latents[:, : basis.rank]  # nested PCA: the leading coefficients are the lower-rank cache
    return basis.project(normalise_targets(latents, source.manifest.target_norm))


def _compact_shard(source, index: int, out, codec: LatentCodec, basis, zarr_writer, job: CompactJob) -> None:
    manifest = source.manifest
    record = manifest.shards[index]
    encoded, zarr_samples = [], []
    for video, view, latents, frames, meta in source.raw_shard(index):
        stored = codec.to_stored(_targets(source, basis, latents))
        encoded.append(
            EncodedSample(
                key=sample_key(video, view),
                frames=frames,
                frame_ext=FRAME_EXT[manifest.frames_codec],
                latents=codec.encode(stored),
                meta=meta,
            )
        )
        zarr_samples.append((video, view, stored, frames, meta))
    shard = record.shard_id
    skipped = [s for s in manifest.skipped if shard.video_start <= int(s["video"]) < shard.video_end]
    commit_shard(out, shard, encoded, zarr_samples, zarr_writer, job.formats, True, skipped)


def _merge(source, out, codec: LatentCodec, rank: int, basis: TargetBasis | None, job: CompactJob):
    done = {shard.name: entry for shard, entry in done_shards(out)}
    manifest = source.manifest
    shards = [ShardRecord(**done[r.name]["record"]) for r in manifest.shards]
    basis_entry = None
    if basis is not None:
        basis_entry = manifest_record(
            storage.read_bytes(storage.join(out, BASIS_NAME)), min(job.fit_samples, len(source)), str(source.path)
        )
    compacted = dataclasses.replace(
        manifest,
        latent_dtype=codec.dtype,
        compressor=codec.compressor,
        formats=sorted(job.formats),
        shards=shards,
        target_rank=rank,
        basis=basis_entry,
        target_norm="none" if rank else manifest.target_norm,
        latent_bytes=sum(done[r.name]["latent_bytes"] for r in manifest.shards),
        frame_bytes=sum(done[r.name]["frame_bytes"] for r in manifest.shards),
        command=job.command,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    path = storage.join(out, "manifest.json")
    compacted.validate(str(path))
    write_json_atomic(path, compacted.to_json())
    return path
