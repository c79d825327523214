"""Reading a cache: random access, deterministic sharded streaming, verification."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F

from salt.latents import storage
from salt.latents.basis import BASIS_NAME, TargetBasis
from salt.latents.codecs import StoredLatents, decode_frames, decode_meta
from salt.latents.errors import CacheError
from salt.latents.manifest import WDS_DIR, ZARR_DIR, Manifest, ShardRecord, load_manifest
from salt.latents.samples import MAX_VIEWS, CacheSample, Problem, parse_key, sample_key
from salt.latents.wds import WdsShardReader, split_members, verify_wds_shard
from salt.latents.zarr_store import ZarrCacheReader

Format = Literal["auto", "wds", "zarr"]
FramesRead = Literal["decoded", "encoded", "none"]  # uint8 arrays / the stored JPEG bytes / nothing
LatentsRead = Literal["float32", "stored"]  # dequantised / the stored dtype (+ int8 scales)
TARGET_NORM_EPS = 1e-6
READ_AHEAD_SHARDS = 2  # object stores: whole shards fetched ahead of the one being read, per reader


def apply_target_norm(latents: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """The normalisation the manifest names for the student's targets (over the last dim D)."""
    return normalise_targets(latents, manifest.target_norm)


def normalise_targets(latents: torch.Tensor, kind: str = "layer_norm") -> torch.Tensor:
    if kind == "layer_norm":
        return F.layer_norm(latents.float(), (latents.shape[-1],), eps=TARGET_NORM_EPS)
    if kind == "none":
        return latents
    raise CacheError(f"unknown target_norm {kind!r}")


def open_cache(path: str | Path, format: Format = "auto", views: int = 0) -> LatentCache:
    """Open `cache/<name>/`. "auto" streams from WebDataset shards and reads single samples
    from the Zarr store when both exist; "wds"/"zarr" use that format for both. `views` > 0
    uses only the first that many views of every video (see `first_views`)."""
    return LatentCache(path, format, views)


def first_views(manifest: Manifest, views: int, path: str | Path = "") -> Manifest:
    """The manifest restricted to views [0, views) of every video. Shards cover view ranges, so
    this works when the cache was grown with `--views` equal to `views` at some point (e.g. 1,
    then 2, 4, 8): one cache then serves students trained on K = 1, 2, 4 or 8 views."""
    if views <= 0:
        return manifest
    crossing = sorted({(r.view_start, r.view_end) for r in manifest.shards if r.view_start < views < r.view_end})
    if crossing:
        raise CacheError(
            f"{path}: shards hold views {crossing[0][0]}..{crossing[0][1] - 1} together, so the first {views} "
            f"cannot be taken alone; cache with `--views {views}` first and grow it later"
        )
    kept = [r for r in manifest.shards if r.view_end <= views]
    if not kept or max(r.view_end for r in kept) < views:
        raise CacheError(
            f"{path}: the cache holds fewer than {views} views per "
            f"video; grow it with `salt cache-latents --views {views}`"
        )
    return dataclasses.replace(manifest, shards=kept, views=views)


class LatentCache:
    def __init__(self, path: str | Path, format: Format = "auto", views: int = 0) -> None:
        self.path = storage.resolve(path)  # a local Path, or an object-store URL
        self.remote = storage.is_url(self.path)
        self.manifest = first_views(load_manifest(self.path), views, self.path)
        if self.remote:  # the Zarr store is written and read on local or shared file systems only
            present = ["wds"] if "wds" in self.manifest.formats else []
            if format == "zarr" or not present:
                raise CacheError(
                    f"{self.path}: on an object store only the wds format "
                    f"is read; this cache has {self.manifest.formats}"
                )
        else:
            present = [f for f in self.manifest.formats if (self.path / (WDS_DIR if f == "wds" else ZARR_DIR)).exists()]
        if format == "auto":
            if not present:
                raise CacheError(f"{self.path}: none of the formats {self.manifest.formats} is on disk")
            self.stream_format = "wds" if "wds" in present else "zarr"
            self.random_format = "zarr" if "zarr" in present else "wds"
        elif format in ("wds", "zarr"):
            if format not in self.manifest.formats:
                raise CacheError(f"{self.path}: this cache has no {format} samples (formats: {self.manifest.formats})")
            self.stream_format = self.random_format = format
        else:
            raise CacheError(f"format must be 'auto', 'wds' or 'zarr', got {format!r}")
        self.codec = self.manifest.codec
        self.shape = (self.manifest.tokens, self.manifest.stored_dim)
        # Low-rank caches: samples hold coefficients; `basis.reconstruct` gives the D-dim targets.
        self.basis = load_basis(self.path, self.manifest) if self.manifest.target_rank else None
        self.skipped: list[Problem] = []  # what stream(on_error="skip") left out
        self._skipped_videos = self.manifest.skipped_videos
        # Samples are numbered video * MAX_VIEWS + view (the key order) in numpy arrays, not
        # lists of tuples: a million samples cost 16 MB and pickle quickly into workers.
        codes, owners = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        skipped = np.array(sorted(self._skipped_videos), dtype=np.int64)
        for i, record in enumerate(self.manifest.shards):
            videos = np.arange(record.video_start, record.video_end, dtype=np.int64)
            videos = videos[~np.isin(videos, skipped)]
            views = np.arange(record.view_start, record.view_end, dtype=np.int64)
            codes.append((videos[:, None] * MAX_VIEWS + views[None, :]).reshape(-1))
            owners.append(np.full(codes[-1].size, i, dtype=np.int64))
        codes_all, owners_all = np.concatenate(codes), np.concatenate(owners)
        order = np.argsort(codes_all, kind="stable")
        self._sorted_codes, self._sorted_owner = codes_all[order], owners_all[order]
        self._zarr = None if self.remote else ZarrCacheReader(self.path / ZARR_DIR)

    def _shard_samples(self, shard_index: int) -> list[tuple[int, int]]:
        """(video, view) of one shard in key order, as the writer stored them."""
        return self.manifest.shards[shard_index].shard_id.sample_ids(self._skipped_videos)

    def __len__(self) -> int:
        return len(self._sorted_codes)

    def locate(self, index: int) -> tuple[int, int, int]:
        """(shard index, video, view) of sample `index` (the `get` numbering)."""
        video, view = divmod(int(self._sorted_codes[index]), MAX_VIEWS)
        return int(self._sorted_owner[index]), video, view

    def shard_sample_indices(self, shard_index: int) -> np.ndarray:
        """The sample indices (the `get` numbering) of one shard's samples, in key order."""
        ids = self._shard_samples(shard_index)
        codes = np.array([video * MAX_VIEWS + view for video, view in ids], dtype=np.int64)
        return np.searchsorted(self._sorted_codes, codes).astype(np.int64)

    def keys(self) -> list[str]:
        return [sample_key(*divmod(int(c), MAX_VIEWS)) for c in self._sorted_codes]

    def shard_paths(self) -> list[Path | str]:
        """WebDataset tar files (paths or URLs), in manifest order (for a plain webdataset pipeline)."""
        return [storage.join(self.path, WDS_DIR, f"{r.name}.tar") for r in self.manifest.shards]

    # -- random access ---------------------------------------------------------------------
    def get(self, index_or_key: int | str) -> CacheSample:
        if isinstance(index_or_key, str):
            video, view = parse_key(index_or_key)
            code = video * MAX_VIEWS + view
            position = int(np.searchsorted(self._sorted_codes, code))
            if position == len(self) or self._sorted_codes[position] != code:
                raise CacheError(f"{self.path}: no sample {index_or_key}")
        else:
            position = int(index_or_key)
            if not -len(self) <= position < len(self):
                raise IndexError(f"sample index {index_or_key} out of range for {len(self)} samples")
            position %= len(self)
        video, view = divmod(int(self._sorted_codes[position]), MAX_VIEWS)
        record = self.manifest.shards[int(self._sorted_owner[position])]
        if self.random_format == "zarr":
            return self.read_zarr_sample(record, video, view)
        with WdsShardReader(storage.join(self.path, WDS_DIR), record.name) as shard:
            return self.read_wds_sample(shard, video, view)

    def read_wds_sample(
        self, shard: WdsShardReader, video: int, view: int, reads: tuple[str, str] = ("decoded", "float32")
    ) -> CacheSample:
        key = sample_key(video, view)
        meta, fields, frames = split_members(shard.read_members(key))
        return self._decode(shard.name, video, view, lambda: self.codec.decode(fields, self.shape), frames, meta, reads)

    def read_zarr_sample(
        self, record: ShardRecord, video: int, view: int, reads: tuple[str, str] = ("decoded", "float32")
    ) -> CacheSample:
        stored, frames, meta = self._zarr.read_sample(record.name, video, view)
        return self._decode(record.name, video, view, lambda: stored, frames, meta, reads)

    def _decode(
        self,
        shard: str,
        video: int,
        view: int,
        stored_latents: Callable[[], StoredLatents],
        frames: list[bytes],
        meta: bytes,
        reads: tuple[str, str],
    ) -> CacheSample:
        """Decode checked bytes as far as `reads` (frames, latents) asks; `stored_latents` is
        called inside the error handling."""
        key = sample_key(video, view)
        frames_read, latents_read = reads
        expected_frames = self.manifest.geometry.get("frames", len(frames))
        try:
            if len(frames) != expected_frames:
                raise CacheError(f"{len(frames)} frames, the manifest says {expected_frames}")
            stored = stored_latents()
            scales = None
            if latents_read == "stored":
                latents, scales = self.codec.to_tensors(stored)
            else:
                latents = self.codec.from_stored(stored.values, stored.scales)
            decoded = decode_frames(frames) if frames_read == "decoded" else None
            return CacheSample(
                key,
                video,
                view,
                decoded,
                latents,
                decode_meta(meta),
                encoded_frames=list(frames) if frames_read == "encoded" else None,
                latent_scales=scales,
            )
        except CacheError as error:
            raise CacheError(f"shard {shard}: sample {key}: {error}") from error

    def raw_shard(self, shard_index: int) -> Iterator[tuple[int, int, torch.Tensor, list[bytes], dict]]:
        """(video, view, latents, encoded frames, meta) of one shard in key order: the frames as
        stored (for copying without a decode), the latents decoded as `get` gives them."""
        record = self.manifest.shards[shard_index]
        shard = WdsShardReader(storage.join(self.path, WDS_DIR), record.name) if self.stream_format == "wds" else None
        try:
            for video, view in self._shard_samples(shard_index):
                key = sample_key(video, view)
                try:
                    if shard is not None:
                        meta, fields, frames = split_members(shard.read_members(key))
                        stored = self.codec.decode(fields, self.shape)
                    else:
                        stored, frames, meta = self._zarr.read_sample(record.name, video, view)
                    latents = self.codec.from_stored(stored.values, stored.scales)
                except CacheError as error:
                    raise CacheError(f"shard {record.name}: sample {key}: {error}") from error
                yield video, view, latents, frames, decode_meta(meta)
        finally:
            if shard is not None:
                shard.close()

    # -- streaming ---------------------------------------------------------------------------
    def _split_shards(
        self, seed: int, epoch: int, rank: int, world_size: int, worker: int, num_workers: int
    ) -> list[int]:
        splits = world_size * num_workers
        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise CacheError(
                f"rank {rank} / worker {worker} out of range for {world_size} ranks x {num_workers} workers"
            )
        num_shards = len(self.manifest.shards)
        if num_shards < splits:
            # A rank or worker without a shard would end at once and hang a collective later.
            raise CacheError(
                f"{num_shards} shards cannot feed {world_size} ranks × {num_workers} workers; "
                "make shards smaller (--shard-videos) or use fewer workers"
            )
        order = np.random.default_rng([seed, epoch]).permutation(num_shards)
        return [int(i) for i in order[rank * num_workers + worker :: splits]]

    def split_len(
        self, seed: int, epoch: int, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
    ) -> int:
        """How many samples `stream` yields for this split (before skipped errors)."""
        shards = self._split_shards(seed, epoch, rank, world_size, worker, num_workers)
        return sum(self.manifest.shards[i].samples for i in shards)

    def stream(
        self,
        seed: int,
        epoch: int,
        rank: int = 0,
        world_size: int = 1,
        worker: int = 0,
        num_workers: int = 1,
        start: int = 0,
        on_error: Literal["raise", "skip"] = "raise",
        frames: FramesRead = "decoded",
        latents: LatentsRead = "float32",
    ) -> Iterator[CacheSample]:
        """This split's samples in an order fixed by (seed, epoch): shards shuffled, then split
        round-robin over rank × worker, then each shard's samples shuffled (a buffer of one
        shard). `start` skips that many samples of the split without reading them; a skipped
        sample (on_error="skip") still counts as a position, so resuming stays exact.

        `frames` and `latents` say how far to decode (the CRCs are checked either way): a probe
        that needs only the latents skips the JPEG decode; a loader that decodes frames on its
        GPU takes the bytes and the stored-width latents."""
        if on_error not in ("raise", "skip"):
            raise CacheError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if frames not in ("decoded", "encoded", "none") or latents not in ("float32", "stored"):
            raise CacheError(
                f"frames must be decoded/encoded/none and latents float32/stored, got {frames!r}, {latents!r}"
            )
        shards = self._split_shards(seed, epoch, rank, world_size, worker, num_workers)
        return self._stream(seed, epoch, shards, max(0, int(start)), on_error, (frames, latents))

    def _stream(
        self, seed: int, epoch: int, shards: list[int], skip: int, on_error: str, reads: tuple[str, str]
    ) -> Iterator[CacheSample]:
        plan = []  # (shard index, sample order): what this split reads, after `skip`
        for shard_index in shards:
            ids = self._shard_samples(shard_index)
            if skip >= len(ids):
                skip -= len(ids)
                continue
            # Seeded per shard, so a resume computes this order without replaying earlier shards.
            plan.append((shard_index, np.random.default_rng([seed, epoch, shard_index]).permutation(len(ids))[skip:]))
            skip = 0
        fetched = self._read_ahead([i for i, _ in plan]) if self.remote and self.stream_format == "wds" else None
        try:
            for shard_index, order in plan:
                yield from self._stream_shard(shard_index, order, fetched, on_error, reads)
        finally:
            if fetched is not None:
                fetched.close()

    def _read_ahead(self, shard_indices: list[int]) -> "_ShardPrefetcher":
        urls = [storage.join(self.path, WDS_DIR, f"{self.manifest.shards[i].name}.tar") for i in shard_indices]
        return _ShardPrefetcher(urls, READ_AHEAD_SHARDS)

    def _stream_shard(
        self, shard_index: int, order, fetched, on_error: str, reads: tuple[str, str]
    ) -> Iterator[CacheSample]:
        ids = self._shard_samples(shard_index)
        record = self.manifest.shards[shard_index]
        shard = None
        try:
            if self.stream_format == "wds":
                data = fetched.next() if fetched is not None else None
                shard = WdsShardReader(storage.join(self.path, WDS_DIR), record.name, data=data)
        except (CacheError, OSError) as error:
            if on_error == "raise":
                raise error if isinstance(error, CacheError) else CacheError(f"shard {record.name}: {error}") from error
            self.skipped.extend(Problem(record.name, sample_key(*ids[i]), str(error)) for i in order)
            return
        try:
            for i in order:
                video, view = ids[i]
                try:
                    if shard is not None:
                        sample = self.read_wds_sample(shard, video, view, reads)
                    else:
                        sample = self.read_zarr_sample(record, video, view, reads)
                except CacheError as error:
                    if on_error == "raise":
                        raise
                    self.skipped.append(Problem(record.name, sample_key(video, view), str(error)))
                    continue
                yield sample
        finally:
            if shard is not None:
                shard.close()


class _ShardPrefetcher:
    """Whole shard files read in order, at most `depth` ahead of the consumer (bounded memory)."""

    def __init__(self, urls: list[str], depth: int):
        self._urls = iter(urls)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=depth, thread_name_prefix="shard-read-ahead")
        self._pending: list[concurrent.futures.Future] = []
        for _ in range(depth + 1):
            self._submit()

    def _submit(self) -> None:
        url = next(self._urls, None)
        if url is not None:
            self._pending.append(self._pool.submit(storage.read_bytes, url))

    def next(self) -> bytes:
        future = self._pending.pop(0)
        self._submit()
        return future.result()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def load_basis(path: str | Path, manifest: Manifest) -> TargetBasis:
    """The basis a low-rank cache names, checked against the manifest's checksum and rank."""
    location = storage.join(path, BASIS_NAME)
    try:
        data = storage.read_bytes(location)
    except FileNotFoundError:
        raise CacheError(
            f"{location}: missing; the manifest says this cache has low-rank targets and needs it. "
            "Copy the cache whole, or compact it again (salt compact-cache)"
        ) from None
    basis = TargetBasis.from_bytes(data, str(location), manifest.basis["sha256"])
    if (basis.dim, basis.rank) != (manifest.dim, manifest.target_rank):
        raise CacheError(
            f"{location}: basis of dim {basis.dim} and rank {basis.rank}, the "
            f"manifest says dim {manifest.dim} and rank {manifest.target_rank}"
        )
    return basis


def verify(cache: LatentCache) -> list[Problem]:
    """Check every format listed in the manifest: files, checksums, and every sample decoded.
    An empty list means the cache is healthy."""
    problems: list[Problem] = []
    manifest = cache.manifest
    if manifest.sample_count == 0:  # every video skipped: nothing a student could read
        problems.append(
            Problem(
                "manifest.json",
                None,
                f"no samples: all {len(manifest.skipped)} videos were skipped "
                "(their reasons: 'skipped' in manifest.json); cache the data again once it decodes",
            )
        )
    # A low-rank cache's basis was checked against the manifest when the cache was opened.
    for shard_index, record in enumerate(manifest.shards):
        ids = cache._shard_samples(shard_index)
        keys = [sample_key(v, k) for v, k in ids]
        if "wds" in manifest.formats:
            directory = storage.join(cache.path, WDS_DIR)
            file_problems = verify_wds_shard(directory, record.name, record.sha256, keys)
            problems += [Problem(record.name, None, f"[wds] {reason}") for reason in file_problems]
            try:
                shard = WdsShardReader(directory, record.name)
            except CacheError:
                shard = None  # already reported above
            if shard is not None:
                with shard:
                    for (video, view), key in zip(ids, keys):
                        try:
                            cache.read_wds_sample(shard, video, view)
                        except CacheError as error:
                            problems.append(Problem(record.name, key, f"[wds] {error}"))
        if "zarr" in manifest.formats and not cache.remote:
            for (video, view), key in zip(ids, keys):
                try:
                    cache.read_zarr_sample(record, video, view)
                except CacheError as error:
                    problems.append(Problem(record.name, key, f"[zarr] {error}"))
    return problems
