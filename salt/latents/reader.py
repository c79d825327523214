"""Reading a cache: `open_cache` -> `LatentCache`, random access and streaming over one manifest.

The jobs live in their own modules and `LatentCache` puts them together: the numbering of the
samples (`index.SampleIndex`), one source per stored format (`sources`), the split across
readers and the resume (`streaming`), the student's targets and the low-rank basis (`targets`).
`verify` (`verification`) and the training order (`order`) use only its public methods.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from salt.latents import storage
from salt.latents.errors import CacheError
from salt.latents.index import SampleIndex, ShardTable
from salt.latents.manifest import WDS_DIR, ZARR_DIR, Manifest
from salt.latents.node_index import reader_manifest
from salt.latents.samples import CacheSample, sample_key
from salt.latents.sources import OnSkip, SampleDecoder, WdsSource, ZarrSource, checked_reads, error_policy
from salt.latents.streaming import split_shards, stream_split
from salt.latents.targets import load_basis

Format = Literal["auto", "wds", "zarr"]
FramesRead = Literal["decoded", "encoded", "none"]  # uint8 arrays / the stored JPEG bytes / nothing
LatentsRead = Literal["float32", "stored"]  # dequantised / the stored dtype (+ int8 scales)


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
    table = manifest.shards if isinstance(manifest.shards, ShardTable) else ShardTable.from_manifest(manifest)
    starts, ends = table.view_start, table.view_end
    crossing = (starts < views) & (views < ends)
    if crossing.any():
        first = int(np.argmax(crossing))
        raise CacheError(
            f"{path}: shards hold views {starts[first]}..{ends[first] - 1} together, so the first {views} "
            f"cannot be taken alone; cache with `--views {views}` first and grow it later"
        )
    kept = ends <= views
    if not kept.any() or ends[kept].max() < views:
        raise CacheError(
            f"{path}: the cache holds fewer than {views} views per "
            f"video; grow it with `salt cache-latents --views {views}`"
        )
    # Rows in (view range, first video) order: the first views are a prefix.
    return dataclasses.replace(manifest, shards=table.first_rows(int(kept.sum())), views=views)


def choose_formats(path: Path | str, manifest: Manifest, format: Format) -> tuple[str, str]:
    """(streaming format, random-access format) of a cache at `path` opened with `format`."""
    if storage.is_url(path):  # the Zarr store is written and read on local or shared file systems only
        present = ["wds"] if "wds" in manifest.formats else []
        if format == "zarr" or not present:
            raise CacheError(
                f"{path}: on an object store only the wds format is read; this cache has {manifest.formats}"
            )
    else:
        present = [f for f in manifest.formats if (path / (WDS_DIR if f == "wds" else ZARR_DIR)).exists()]
    if format == "auto":
        if not present:
            raise CacheError(f"{path}: none of the formats {manifest.formats} is on disk")
        return ("wds" if "wds" in present else "zarr"), ("zarr" if "zarr" in present else "wds")
    if format in ("wds", "zarr"):
        if format not in manifest.formats:
            raise CacheError(f"{path}: this cache has no {format} samples (formats: {manifest.formats})")
        return format, format
    raise CacheError(f"format must be 'auto', 'wds' or 'zarr', got {format!r}")


class LatentCache:
    """One cache opened for reading. Samples are numbered in key order (`get(i)`, `keys()`)."""

    def __init__(self, path: str | Path, format: Format = "auto", views: int = 0) -> None:
        self.path = storage.resolve(path)  # a local Path, or an object-store URL
        self.remote = storage.is_url(self.path)
        # The reader's part of the manifest, shared by every process of this node (node_index).
        manifest, skipped = reader_manifest(self.path)
        self.manifest = first_views(manifest, views, self.path)
        self.stream_format, self.random_format = choose_formats(self.path, self.manifest, format)
        self.codec = self.manifest.codec
        self.shape = (self.manifest.tokens, self.manifest.stored_dim)
        # Low-rank caches: samples hold coefficients; `targets.student_targets` gives the D-dim targets.
        self.basis = load_basis(self.path, self.manifest) if self.manifest.target_rank else None
        self.index = SampleIndex(
            self.manifest.shards, skipped, self.manifest.num_videos, self.manifest.views, str(self.path)
        )
        decoder = SampleDecoder(self.codec, self.shape, self.manifest.geometry.get("frames"))
        # Every format the manifest lists and this location can read, in the order verify checks them.
        self.sources: dict[str, WdsSource | ZarrSource] = {}
        if "wds" in self.manifest.formats:
            self.sources["wds"] = WdsSource(self.path, decoder)
        if "zarr" in self.manifest.formats and not self.remote:
            self.sources["zarr"] = ZarrSource(self.path, decoder)

    @property
    def stream_source(self) -> WdsSource | ZarrSource:
        """Where `stream`, `raw_shard` and `SampleReader` read from."""
        return self.sources[self.stream_format]

    @property
    def random_source(self) -> WdsSource | ZarrSource:
        """Where `get` reads from."""
        return self.sources[self.random_format]

    # -- numbering ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def locate(self, index: int) -> tuple[int, int, int]:
        """(shard index, video, view) of sample `index` (the `get` numbering)."""
        return self.index.locate(index)

    def keys(self) -> list[str]:
        """Every key, in order (a list as long as the cache: `key(i)` names one)."""
        return self.index.keys()

    def key(self, index: int) -> str:
        return sample_key(*self.index.locate(self.index.position(index))[1:])

    def shard_samples(self, shard_index: int) -> list[tuple[int, int]]:
        """(video, view) of one shard in key order, as the writer stored them."""
        return self.index.shard_samples(shard_index)

    def shard_sample_indices(self, shard_index: int) -> np.ndarray:
        """The sample indices (the `get` numbering) of one shard's samples, in key order."""
        return self.index.shard_sample_indices(shard_index)

    def shard_paths(self) -> list[Path | str]:
        """WebDataset tar files (paths or URLs), in manifest order (for a plain webdataset pipeline)."""
        table = self.manifest.shards
        return [storage.join(self.path, WDS_DIR, f"{table.name(i)}.tar") for i in range(len(table))]

    # -- random access ------------------------------------------------------------------------
    def get(self, index_or_key: int | str) -> CacheSample:
        shard_index, video, view = self.index.locate(self.index.position(index_or_key))
        return self.random_source.read(self.manifest.shards.name(shard_index), video, view)

    def raw_shard(self, shard_index: int) -> Iterator[tuple[int, int, torch.Tensor, list[bytes], dict]]:
        """(video, view, latents, encoded frames, meta) of one shard in key order: the frames as
        stored (for copying without a decode), the latents decoded as `get` gives them."""
        with self.stream_source.open(self.manifest.shards.name(shard_index)) as shard:
            for video, view in self.shard_samples(shard_index):
                sample = shard.read(video, view, ("encoded", "float32"))
                yield video, view, sample.latents, sample.encoded_frames, sample.meta

    # -- streaming ----------------------------------------------------------------------------
    def split_len(
        self, seed: int, epoch: int, rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1
    ) -> int:
        """How many samples `stream` yields for this split (before skipped errors)."""
        shards = split_shards(len(self.manifest.shards), seed, epoch, rank, world_size, worker, num_workers)
        return int(self.manifest.shards.held[shards].sum())

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
        on_skip: OnSkip | None = None,
    ) -> Iterator[CacheSample]:
        """This split's samples in an order fixed by (seed, epoch) (see `streaming`). `start`
        skips that many samples of the split without reading them. With on_error="skip" a
        sample that cannot be read is handed to `on_skip` as a `Problem` and left out; it still
        counts as a position, so resuming stays exact.

        `frames` and `latents` say how far to decode (the CRCs are checked either way): a probe
        that needs only the latents skips the JPEG decode; a loader that decodes frames on its
        GPU takes the bytes and the stored-width latents."""
        policy = error_policy(on_error, on_skip)
        reads = checked_reads(frames, latents)
        shards = split_shards(len(self.manifest.shards), seed, epoch, rank, world_size, worker, num_workers)
        return stream_split(self, shards, seed, epoch, start, policy, reads)
