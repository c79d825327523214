"""Zarr v3 store `cache.zarr/`: random access to the same samples as the WebDataset shards.

Layout (V videos, K views, N tokens, D dim, T frames per clip, S = videos_per_shard):

    latents   [V, K, N, D]  float16 | uint16 (bf16 bits) | int8   chunk (1,1,N,D)  shard (S,1,N,D)
    scales    [V, K, D]     float32 (int8 only)                   chunk (1,1,D)    shard (S,1,D)
    frames    [V, K, T]     variable-length bytes (JPEG/PNG)      chunk (1,1,T)    shard (S,1,T)
    meta      [V, K]        variable-length UTF-8 JSON            chunk (1,1)      shard (S,1)
    checksum  [V, K]        uint32, sample_checksum(...)          chunk (1,1)      shard (S,1)
    written   [V, K]        bool, fill False                      chunk (1,1)      shard (S,1)

Every array has the same shard grid: one Zarr shard file per (block of S videos, one view).
A cache ShardId covering videos [a, b) with a, b multiples of S (or b = V) and views
[k0, k1) is therefore exactly k1 - k0 whole Zarr shards per array, and one writer owns them
(Zarr loses data silently when two processes write parts of one shard file). Growing views
or videos only rewrites array metadata: existing shard files keep their names and bytes.
A missing chunk reads as the fill value, so `written` and `checksum`, written after the
data, are what tell a lost or unfinished sample from one that really holds zeros.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.errors import UnstableSpecificationWarning

from salt.latents.codecs import STORED_NUMPY_DTYPE, StoredLatents, encode_meta, sample_checksum
from salt.latents.errors import CacheError
from salt.latents.samples import ShardId, sample_key

ATTRS_KEY = "salt_latents"
STORE_FORMAT_VERSION = 1
_BLOSC_SHUFFLE = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}
SampleToWrite = tuple[int, int, StoredLatents, list[bytes], dict[str, Any]]  # video, view, latents, frames, meta


def zarr_compressor(compressor: dict[str, Any] | None, dtype: np.dtype):
    """The Zarr-native codec for a numcodecs config.

    Native BloscCodec/ZstdCodec rather than numcodecs.zarr3 wrappers: they are in the Zarr v3
    spec (readable by any v3 implementation, not only zarr-python), and they call the same
    c-blosc/zstd with the same parameters, so a Zarr chunk holds the very bytes that
    LatentCodec.encode puts in a WebDataset `.latents` member. One config serves both formats.
    """
    if compressor is None:
        return None
    params = {k: v for k, v in compressor.items() if k != "id"}
    if compressor["id"] == "blosc":
        return BloscCodec(
            cname=params.get("cname", "lz4"),
            clevel=params.get("clevel", 5),
            shuffle=_BLOSC_SHUFFLE[params.get("shuffle", 1)],
            typesize=dtype.itemsize,
            blocksize=params.get("blocksize", 0),
        )
    if compressor["id"] == "zstd":
        return ZstdCodec(level=params.get("level", 0), checksum=params.get("checksum", False))
    raise CacheError(f"compressor {compressor!r} has no Zarr v3 equivalent here; use blosc or zstd")


@contextlib.contextmanager
def _vlen_bytes_accepted() -> Iterator[None]:
    """Variable-length bytes have no ratified Zarr v3 spec yet, and zarr-python warns whenever
    it writes their metadata. zarr < 4 is pinned and reads and writes them: accept it here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnstableSpecificationWarning)
        yield


def _latent_dtype_name(stored_dtype: str | np.dtype) -> str:
    if isinstance(stored_dtype, str) and stored_dtype in STORED_NUMPY_DTYPE:
        return stored_dtype
    by_numpy = {dtype.newbyteorder("="): name for name, dtype in STORED_NUMPY_DTYPE.items()}
    name = by_numpy.get(np.dtype(stored_dtype).newbyteorder("="))
    if name is None:
        raise CacheError(f"stored dtype {stored_dtype!r} is not fp16, bf16 (uint16) or int8")
    return name


class ZarrCacheWriter:
    """Writes whole cache shards into the store; one process per ShardId."""

    def __init__(self, group: zarr.Group) -> None:
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs[ATTRS_KEY])
        self.videos_per_shard: int = self.attrs["videos_per_shard"]
        self.arrays = {name: group[name] for name in ("latents", "frames", "meta", "checksum", "written")}
        if self.attrs["latent_dtype"] == "int8":
            self.arrays["scales"] = group["scales"]

    @classmethod
    def open(
        cls,
        path: str | Path,
        num_videos: int,
        views: int,
        grid_tokens: int,
        dim: int,
        stored_dtype: str | np.dtype,
        compressor: dict[str, Any] | None,
        frames_per_clip: int,
        videos_per_shard: int,
    ) -> ZarrCacheWriter:
        """Create the store, or open an existing one and grow it to (num_videos, views).

        Call it once in the coordinating process before starting writer processes: creating
        or resizing arrays rewrites metadata, which must not race.
        """
        latent_dtype = _latent_dtype_name(stored_dtype)
        attrs = {
            "format_version": STORE_FORMAT_VERSION,
            "latent_dtype": latent_dtype,
            "grid_tokens": grid_tokens,
            "dim": dim,
            "frames_per_clip": frames_per_clip,
            "videos_per_shard": videos_per_shard,
            "compressor": compressor,
        }
        group = zarr.open_group(str(path), mode="a", zarr_format=3)
        if ATTRS_KEY not in group.attrs:
            cls._create_arrays(group, attrs, num_videos, views)
            group.attrs[ATTRS_KEY] = attrs
        else:
            existing = dict(group.attrs[ATTRS_KEY])
            differ = {k: (existing.get(k), v) for k, v in attrs.items() if existing.get(k) != v}
            if differ:
                raise CacheError(f"{path}: existing Zarr store does not match this run (stored vs requested): {differ}")
        writer = cls(group)
        writer.grow_videos(max(num_videos, writer.num_videos))
        writer.grow_views(max(views, writer.views))
        return writer

    @staticmethod
    def _create_arrays(group: zarr.Group, attrs: dict[str, Any], videos: int, views: int) -> None:
        s, n, d, t = attrs["videos_per_shard"], attrs["grid_tokens"], attrs["dim"], attrs["frames_per_clip"]
        dtype = STORED_NUMPY_DTYPE[attrs["latent_dtype"]]

        def create(name, tail, array_dtype, fill, compressors=None):
            # overwrite: without the group attrs (written last) no writer ever wrote into a
            # half-created store, so arrays left by a killed creation hold nothing to keep.
            group.create_array(
                name,
                shape=(videos, views, *tail),
                chunks=(1, 1, *tail),
                shards=(s, 1, *tail),
                dtype=array_dtype,
                fill_value=fill,
                compressors=compressors,
                overwrite=True,
            )

        create("latents", (n, d), dtype, 0, zarr_compressor(attrs["compressor"], dtype))
        if attrs["latent_dtype"] == "int8":
            create("scales", (d,), np.dtype("<f4"), 0.0)
        # JPEG/PNG bytes do not compress further; meta is small.
        with _vlen_bytes_accepted():
            create("frames", (t,), "bytes", b"")
        create("meta", (), str, "")
        create("checksum", (), np.dtype("<u4"), 0)
        create("written", (), np.dtype(bool), False)

    @property
    def num_videos(self) -> int:
        return self.arrays["written"].shape[0]

    @property
    def views(self) -> int:
        return self.arrays["written"].shape[1]

    def _resize(self, num_videos: int, views: int) -> None:
        if num_videos < self.num_videos or views < self.views:
            raise CacheError(
                f"cannot shrink the Zarr store from {self.num_videos}x{self.views} to {num_videos}x{views}"
            )
        if (num_videos, views) == (self.num_videos, self.views):
            return
        with _vlen_bytes_accepted():
            for array in self.arrays.values():
                array.resize((num_videos, views, *array.shape[2:]))

    def grow_views(self, new_views: int) -> None:
        self._resize(self.num_videos, new_views)

    def grow_videos(self, new_num_videos: int) -> None:
        self._resize(new_num_videos, self.views)

    def check_alignment(self, shard: ShardId) -> None:
        s = self.videos_per_shard
        if shard.video_end > self.num_videos or shard.view_end > self.views:
            raise CacheError(
                f"shard {shard.name} lies outside the store ({self.num_videos} videos x {self.views} views)"
            )
        if shard.video_start % s or (shard.video_end % s and shard.video_end != self.num_videos):
            raise CacheError(
                f"shard {shard.name}: videos [{shard.video_start}, {shard.video_end}) do not cover whole Zarr shards "
                f"of {s} videos; plan cache shards on multiples of videos_per_shard (or pass "
                "allow_partial_zarr_shard=True when no other process writes the rest of that Zarr shard)"
            )

    def written_mask(self, shard: ShardId) -> np.ndarray:
        """bool [videos, views] of the shard's rectangle: which samples a finished write left."""
        return np.asarray(
            self.arrays["written"][shard.video_start : shard.video_end, shard.view_start : shard.view_end]
        )

    def write_shard(self, shard: ShardId, samples: list[SampleToWrite], allow_partial_zarr_shard: bool = False) -> int:
        """Write every sample of `shard` (videos not given stay unwritten); returns bytes on disk.

        Writes one whole Zarr shard per (video block, view); `checksum` and `written` go last,
        so a killed write leaves samples that read as unwritten, not as zeros.
        """
        if not allow_partial_zarr_shard:
            self.check_alignment(shard)
        a = self.attrs
        n, d, t = a["grid_tokens"], a["dim"], a["frames_per_clip"]
        dtype = STORED_NUMPY_DTYPE[a["latent_dtype"]]
        nv, nk = shard.video_end - shard.video_start, shard.view_end - shard.view_start
        by_position: dict[tuple[int, int], SampleToWrite] = {}
        for sample in samples:
            video, view, stored, frames, _ = sample
            key = sample_key(video, view)
            if not shard.contains(video, view) or (video, view) in by_position:
                raise CacheError(f"shard {shard.name}: sample {key} lies outside the shard or is given twice")
            if stored.values.shape != (n, d) or stored.values.dtype != dtype or len(frames) != t:
                raise CacheError(
                    f"shard {shard.name}: sample {key} is not {a['latent_dtype']} ({n}, {d}) with {t} frames"
                )
            by_position[(video - shard.video_start, view - shard.view_start)] = sample
        checksums = np.zeros((nv, nk), dtype="<u4")
        written = np.zeros((nv, nk), dtype=bool)
        videos, views = slice(shard.video_start, shard.video_end), slice(shard.view_start, shard.view_end)
        for k in range(nk):  # one view at a time: one Zarr shard per array, bounded memory
            latents = np.zeros((nv, n, d), dtype=dtype)
            scales = np.zeros((nv, d), dtype="<f4")
            frames = np.full((nv, t), b"", dtype=object)
            meta = np.full(nv, "", dtype=object)
            for v in range(nv):
                sample = by_position.get((v, k))
                if sample is None:
                    continue
                _, _, stored, frame_bytes, sample_meta = sample
                meta_bytes = encode_meta(sample_meta)
                latents[v] = stored.values
                if "scales" in self.arrays:
                    scales[v] = stored.scales
                frames[v] = frame_bytes
                meta[v] = meta_bytes.decode("utf-8")
                checksums[v, k] = sample_checksum(stored, frame_bytes, meta_bytes)
                written[v, k] = True
            view = shard.view_start + k
            self.arrays["latents"][videos, view] = latents
            if "scales" in self.arrays:
                self.arrays["scales"][videos, view] = scales
            self.arrays["frames"][videos, view] = frames
            self.arrays["meta"][videos, view] = meta
        self.arrays["checksum"][videos, views] = checksums
        self.arrays["written"][videos, views] = written
        return self.shard_bytes(shard)

    def shard_bytes(self, shard: ShardId) -> int:
        """Bytes of the Zarr shard files that hold `shard` (all arrays)."""
        root = Path(str(self.group.store.root)) / self.group.path
        s = self.videos_per_shard
        total = 0
        for name in self.arrays:
            for block in range(shard.video_start // s, -(-shard.video_end // s)):
                for view in range(shard.view_start, shard.view_end):
                    path = root / name / "c" / str(block) / str(view)
                    files = [path] if path.is_file() else path.rglob("*")
                    total += sum(p.stat().st_size for p in files if p.is_file())
        return total


class ZarrCacheReader:
    """Checked reads of single samples; opens the store lazily (safe to pickle into workers)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._arrays: dict[str, zarr.Array] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Open handles are per process; a spawned DataLoader worker reopens the store.
        return {"path": self.path, "_arrays": None}

    @property
    def arrays(self) -> dict[str, zarr.Array]:
        if self._arrays is None:
            if not (self.path / "zarr.json").is_file():
                raise CacheError(f"no Zarr store at {self.path}; the cache was written without it or is incomplete")
            group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
            names = ["latents", "frames", "meta", "checksum", "written"] + (["scales"] if "scales" in group else [])
            self._arrays = {name: group[name] for name in names}
        return self._arrays

    def read_sample(self, shard_name: str, video: int, view: int) -> tuple[StoredLatents, list[bytes], bytes]:
        """(stored latents, frame bytes, meta bytes) of one sample, checked against its checksum."""
        where = f"shard {shard_name}: sample {sample_key(video, view)}"
        arrays = self.arrays
        try:
            if not bool(arrays["written"][video, view]):
                raise CacheError(
                    f"{where}: not written in {self.path} (lost or never finished); run salt cache-latents again"
                )
            expected = int(arrays["checksum"][video, view])
            stored = StoredLatents(
                np.asarray(arrays["latents"][video, view]),
                np.asarray(arrays["scales"][video, view]) if "scales" in arrays else None,
            )
            frames = [bytes(data) for data in arrays["frames"][video, view]]
            meta = str(arrays["meta"][video, view]).encode("utf-8")
        except CacheError:
            raise
        except Exception as error:  # codec errors, damaged shard index, IO errors
            raise CacheError(f"{where}: unreadable in {self.path}: {type(error).__name__}: {error}") from error
        if sample_checksum(stored, frames, meta) != expected:
            raise CacheError(f"{where}: checksum mismatch in {self.path} (a chunk is missing or corrupt)")
        return stored, frames, meta
