"""Where a cache's samples are read from: one source per stored format, behind one interface.

`WdsSource` reads the WebDataset tars (`wds/`), `ZarrSource` the Zarr store (`cache.zarr/`).
Either opens a shard (`open(name)`) whose `read(video, view, reads)` gives one checked
`CacheSample`, decoded as far as `reads` asks; `check` does a shard's file-level checks. A
reader chooses its source once, and random access, streaming, `SampleReader` and `verify` all
go through these calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from salt.latents import storage
from salt.latents.codecs import LatentCodec, StoredLatents, decode_frames, decode_meta
from salt.latents.errors import CacheError
from salt.latents.manifest import WDS_DIR, ZARR_DIR, ShardRecord
from salt.latents.samples import CacheSample, Problem, sample_key
from salt.latents.wds import WdsShardReader, split_members, verify_wds_shard
from salt.latents.zarr_store import ZarrCacheReader

Reads = tuple[str, str]  # (frames: decoded / encoded / none, latents: float32 / stored)
FULL_READ: Reads = ("decoded", "float32")  # uint8 frames and dequantised latents
FRAMES_READS = ("decoded", "encoded", "none")  # uint8 arrays / the stored JPEG bytes / nothing
LATENTS_READS = ("float32", "stored")  # dequantised / the stored dtype (+ int8 scales)
OnSkip = Callable[[Problem], None]


def checked_reads(frames: str, latents: str) -> Reads:
    if frames not in FRAMES_READS or latents not in LATENTS_READS:
        raise CacheError(f"frames must be decoded/encoded/none and latents float32/stored, got {frames!r}, {latents!r}")
    return frames, latents


def error_policy(on_error: str, on_skip: OnSkip | None) -> OnSkip | None:
    """What a reader does with a sample it cannot read: None raises it; a callable is handed
    the `Problem` and the reader goes on (`on_error="skip"`; without `on_skip`, silently)."""
    if on_error not in ("raise", "skip"):
        raise CacheError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_error == "raise":
        return None
    return on_skip if on_skip is not None else _ignore


def _ignore(problem: Problem) -> None:
    pass


@dataclass(frozen=True)
class SampleDecoder:
    """Checked bytes of one sample -> `CacheSample`, decoded as far as `reads` asks."""

    codec: LatentCodec
    shape: tuple[int, int]  # (tokens, stored dim)
    frames: int | None  # frames per sample the manifest promises (None: not checked)

    def __call__(
        self, shard: str, video: int, view: int, stored: StoredLatents, frames: list[bytes], meta: bytes, reads: Reads
    ) -> CacheSample:
        key = sample_key(video, view)
        frames_read, latents_read = reads
        try:
            if self.frames is not None and len(frames) != self.frames:
                raise CacheError(f"{len(frames)} frames, the manifest says {self.frames}")
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


class _Shard(ABC):
    """One shard of a source; `fetch` gives a sample's checked bytes, its errors naming it."""

    name: str
    decoder: SampleDecoder

    @abstractmethod
    def fetch(self, video: int, view: int) -> tuple[StoredLatents, list[bytes], bytes]: ...

    def read(self, video: int, view: int, reads: Reads = FULL_READ) -> CacheSample:
        return self.decoder(self.name, video, view, *self.fetch(video, view), reads)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Shard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WdsShard(_Shard):
    """A tar read a sample at a time: a seek, a range request, or slices of its bytes (`data`)."""

    def __init__(self, directory: str | Path, name: str, decoder: SampleDecoder, data: bytes | None = None) -> None:
        self.name, self.decoder = name, decoder
        self._reader = WdsShardReader(directory, name, data=data)

    def fetch(self, video: int, view: int) -> tuple[StoredLatents, list[bytes], bytes]:
        key = sample_key(video, view)
        members = self._reader.read_members(key)  # its errors name the shard and the sample
        try:
            meta, fields, frames = split_members(members)
            return self.decoder.codec.decode(fields, self.decoder.shape), frames, meta
        except CacheError as error:
            raise CacheError(f"shard {self.name}: sample {key}: {error}") from error

    def close(self) -> None:
        self._reader.close()


class ZarrShard(_Shard):
    """A shard's samples in the Zarr store (nothing to open: the store opens lazily)."""

    def __init__(self, store: ZarrCacheReader, name: str, decoder: SampleDecoder) -> None:
        self.name, self.decoder = name, decoder
        self._store = store

    def fetch(self, video: int, view: int) -> tuple[StoredLatents, list[bytes], bytes]:
        return self._store.read_sample(self.name, video, view)  # its errors name the shard and the sample


class _Source(ABC):
    """One stored format of a cache: its shards, opened by name."""

    format: str
    read_ahead = False  # whether a stream should fetch whole shards ahead (`shard_url`, `open(data=)`)
    decoder: SampleDecoder

    @abstractmethod
    def open(self, name: str, data: bytes | None = None) -> _Shard: ...

    def read(self, name: str, video: int, view: int, reads: Reads = FULL_READ) -> CacheSample:
        """One sample, opening its shard for this read only."""
        with self.open(name) as shard:
            return shard.read(video, view, reads)

    def check(self, record: ShardRecord, keys: list[str], data: bytes | None = None) -> list[str]:
        """File-level problems of one shard (reasons; none when healthy); `data`: its bytes, read already."""
        return []


class WdsSource(_Source):
    format = "wds"

    def __init__(self, root: Path | str, decoder: SampleDecoder) -> None:
        self.directory = storage.join(root, WDS_DIR)
        self.decoder = decoder
        self.read_ahead = storage.is_url(self.directory)  # object stores: one sequential read per shard

    def shard_url(self, name: str) -> Path | str:
        return storage.join(self.directory, f"{name}.tar")

    def open(self, name: str, data: bytes | None = None) -> WdsShard:
        return WdsShard(self.directory, name, self.decoder, data)

    def check(self, record: ShardRecord, keys: list[str], data: bytes | None = None) -> list[str]:
        return verify_wds_shard(self.directory, record.name, record.sha256, keys, data)


class ZarrSource(_Source):
    format = "zarr"

    def __init__(self, root: Path, decoder: SampleDecoder) -> None:
        self.decoder = decoder
        self._store = ZarrCacheReader(root / ZARR_DIR)

    def open(self, name: str, data: bytes | None = None) -> ZarrShard:
        # `data` is never given (read_ahead is False); every sample carries its own checksum,
        # so `check` has nothing to add at the file level.
        return ZarrShard(self._store, name, self.decoder)
