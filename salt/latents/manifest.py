"""manifest.json: everything a student needs to read a cache without the teacher."""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from salt.latents import storage
from salt.latents.basis import BASIS_NAME, FIT_ON
from salt.latents.codecs import FRAME_EXT, STORED_NUMPY_DTYPE, LatentCodec
from salt.latents.errors import CacheError
from salt.latents.samples import ShardId

FORMAT_VERSION = 2  # the newest this SALT reads; a full-rank cache is still written as format 1
LOW_RANK_FORMAT_VERSION = 2  # low-rank targets (a basis); older SALTs refuse these caches by their version
MANIFEST_NAME = "manifest.json"
WDS_DIR = "wds"
ZARR_DIR = "cache.zarr"
FORMATS = ("wds", "zarr")
TARGET_NORMS = ("layer_norm", "none")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never a torn one."""
    write_bytes_atomic(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes, exclusive: bool = False) -> None:
    """Readers see the old file or the new one, never a torn one (temp file, fsync, rename; on an
    object store: one PUT, which is all or nothing). `exclusive`: create only if absent, keeping
    a file another writer made first (local files; stores have no such PUT, the later one wins)."""
    if storage.is_url(path):
        storage.write_bytes(path, data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        storage.make_readable(tmp)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)  # atomic, and fails where the file exists
            except FileExistsError:
                pass
            Path(tmp).unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class ShardRecord:
    """One written shard: its rectangle, sample count, bytes per format, tar checksum."""

    name: str
    video_start: int
    video_end: int
    view_start: int
    view_end: int
    samples: int
    bytes: dict[str, int] = field(default_factory=dict)  # per format: {"wds": ..., "zarr": ...}
    sha256: str | None = None  # of the WebDataset tar; None when only Zarr was written

    @property
    def shard_id(self) -> ShardId:
        return ShardId(self.video_start, self.video_end, self.view_start, self.view_end)

    @classmethod
    def for_shard(
        cls,
        shard: ShardId,
        samples: int,
        wds_bytes: int | None = None,
        wds_sha256: str | None = None,
        zarr_bytes: int | None = None,
    ) -> ShardRecord:
        sizes = {name: size for name, size in (("wds", wds_bytes), ("zarr", zarr_bytes)) if size is not None}
        return cls(
            shard.name, shard.video_start, shard.video_end, shard.view_start, shard.view_end, samples, sizes, wds_sha256
        )


@dataclass(kw_only=True)
class Manifest:
    format_version: int = 1
    teacher: dict[str, Any]  # fingerprint (sha256 of weights), arch, source path
    stored_output: str = "final_norm_tokens"
    target_norm: str = "layer_norm"  # what the reader applies: layer_norm over D, no affine, eps 1e-6
    grid: tuple[int, int, int]  # (T', H', W') tokens
    dim: int
    geometry: dict[str, Any]  # frames, frame_step, size, patch, tubelet
    input_mean: tuple[float, float, float]
    input_std: tuple[float, float, float]
    frames_codec: str = "jpeg"
    jpeg_quality: int = 90
    frames_decoder: str
    views: int  # views per video requested
    latent_dtype: str
    compressor: dict[str, Any] | None
    formats: list[str]
    num_videos: int  # planned
    shards: list[ShardRecord] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {video, path, reason}
    sample_count: int = 0
    latent_bytes: int = 0
    frame_bytes: int = 0
    command: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    seed: int = 0
    view_config: dict[str, Any] = field(default_factory=dict)
    # Low-rank targets (salt/latents/basis.py): samples hold `target_rank` coefficients per token
    # of the layer-normalised latents; `basis` names the basis file, its sha256 and fit statistics.
    target_rank: int = 0  # 0: full rank, `dim` channels per token
    basis: dict[str, Any] | None = None

    @property
    def tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def stored_dim(self) -> int:
        """Channels per token in the samples: the rank of a low-rank cache, else `dim`."""
        return self.target_rank or self.dim

    @property
    def codec(self) -> LatentCodec:
        return LatentCodec(self.latent_dtype, self.compressor)

    def bytes_per_view(self) -> tuple[float, float]:
        """(latent, frame) bytes a stored view takes on disk, per format, compressed."""
        views = max(self.sample_count, 1)
        return self.latent_bytes / views, self.frame_bytes / views

    @property
    def skipped_videos(self) -> frozenset[int]:
        return frozenset(int(entry["video"]) for entry in self.skipped)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["format_version"] = LOW_RANK_FORMAT_VERSION if self.target_rank else 1
        if not self.target_rank:  # a full-rank manifest keeps format 1's fields: older readers accept it
            del data["target_rank"], data["basis"]
        data["grid"] = list(self.grid)
        data["input_mean"] = list(self.input_mean)
        data["input_std"] = list(self.input_std)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "manifest") -> Manifest:
        """Parse and check a manifest dict; every error names `source`."""
        if not isinstance(data, dict):
            raise CacheError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise CacheError(f"{source}: no integer format_version; not a SALT latent cache manifest")
        if version > FORMAT_VERSION:
            raise CacheError(
                f"{source}: made by a newer SALT (format {version} > {FORMAT_VERSION}); upgrade SALT to read it"
            )
        if version < 1:
            raise CacheError(f"{source}: unknown format_version {version}")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        missing = sorted(required - data.keys())
        unknown = sorted(data.keys() - names)
        if missing or unknown:
            raise CacheError(f"{source}: missing fields {missing}, unknown fields {unknown}")
        values = dict(data)
        try:
            values["grid"] = tuple(int(v) for v in data["grid"])
            values["input_mean"] = tuple(float(v) for v in data["input_mean"])
            values["input_std"] = tuple(float(v) for v in data["input_std"])
            values["shards"] = [ShardRecord(**record) for record in data.get("shards", [])]
        except (TypeError, ValueError) as error:
            raise CacheError(f"{source}: malformed field: {error}") from error
        manifest = cls(**values)
        if manifest.target_rank and version < LOW_RANK_FORMAT_VERSION:
            raise CacheError(
                f"{source}: format_version {version} cannot hold low-rank targets (needs {LOW_RANK_FORMAT_VERSION})"
            )
        manifest.validate(source)
        return manifest

    def validate(self, source: str = "manifest") -> None:
        """Raise CacheError naming `source` for any inconsistency a reader would trip on."""

        def fail(message: str) -> None:
            raise CacheError(f"{source}: {message}")

        self._check_fields(fail)
        self._check_targets(fail)
        if not self.formats or any(f not in FORMATS for f in self.formats):
            fail(f"formats must be a non-empty subset of {FORMATS}, got {self.formats}")
        if self.views <= 0 or self.num_videos <= 0:
            fail(f"views ({self.views}) and num_videos ({self.num_videos}) must be positive")
        self._check_shards(fail)
        total = sum(record.samples for record in self.shards)
        if self.sample_count != total:
            fail(f"sample_count {self.sample_count} != {total}, the sum over shards")
        self._check_no_overlap(fail)

    def _check_fields(self, fail) -> None:
        for name in (
            "dim",
            "views",
            "num_videos",
            "sample_count",
            "latent_bytes",
            "frame_bytes",
            "jpeg_quality",
            "target_rank",
        ):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                fail(f"{name} must be an integer, got {getattr(self, name)!r}")
        if len(self.grid) != 3 or any(not isinstance(g, int) or g <= 0 for g in self.grid):
            fail(f"grid must be 3 positive integers (T', H', W'), got {list(self.grid)}")
        if not isinstance(self.dim, int) or self.dim <= 0:
            fail(f"dim must be a positive integer, got {self.dim!r}")
        if len(self.input_mean) != 3 or len(self.input_std) != 3:
            fail("input_mean and input_std must have 3 values (RGB)")
        if self.latent_dtype not in STORED_NUMPY_DTYPE:
            fail(f"latent_dtype {self.latent_dtype!r} is not one of {sorted(STORED_NUMPY_DTYPE)}")
        try:
            self.codec
        except CacheError as error:
            fail(str(error))
        if self.frames_codec not in FRAME_EXT:
            fail(f"frames_codec {self.frames_codec!r} is not one of {sorted(FRAME_EXT)}")

    def _check_targets(self, fail) -> None:
        if self.target_norm not in TARGET_NORMS:
            fail(f"target_norm {self.target_norm!r} is not one of {TARGET_NORMS}")
        if self.target_rank:
            basis = self.basis or {}
            if not 1 <= self.target_rank < self.dim:
                fail(
                    f"target_rank {self.target_rank} must lie between 1 "
                    f"and dim - 1 ({self.dim - 1}), or be 0 (full rank)"
                )
            if basis.get("file") != BASIS_NAME or not basis.get("sha256") or basis.get("fit_on") != FIT_ON:
                fail(f"a low-rank cache needs basis {{file: {BASIS_NAME}, sha256, fit_on: {FIT_ON}}}, got {basis}")
            if self.target_norm != "none":
                fail("a low-rank cache stores coefficients of normalised targets: target_norm must be 'none'")
        elif self.basis is not None:
            fail("basis is set but target_rank is 0")

    def _check_shards(self, fail) -> None:
        """Each shard's name, range and sample count (skipped videos left out), and its checksum."""
        skipped = sorted(self.skipped_videos)
        names: set[str] = set()
        for record in self.shards:
            try:
                shard = record.shard_id
            except CacheError as error:
                fail(f"shard {record.name}: {error}")
            if record.name != shard.name or record.name in names:
                fail(f"shard {record.name}: name does not match its range or is listed twice")
            names.add(record.name)
            if shard.video_end > self.num_videos or shard.view_end > self.views:
                fail(f"shard {record.name} lies outside {self.num_videos} videos x {self.views} views")
            held = shard.video_end - shard.video_start
            held -= bisect.bisect_left(skipped, shard.video_end) - bisect.bisect_left(skipped, shard.video_start)
            expected = held * (shard.view_end - shard.view_start)
            if record.samples != expected:
                fail(
                    f"shard {record.name} records {record.samples} samples, "
                    f"its range minus skipped videos holds {expected}"
                )
            if "wds" in self.formats and not record.sha256:
                fail(f"shard {record.name} has no sha256 although the cache has WebDataset shards")

    def _check_no_overlap(self, fail) -> None:
        # Two shards overlap when both their video and their view ranges intersect; either
        # would then hold a sample twice. Shards come in a few view ranges (one per
        # "add views" run), so compare groups of equal view range, each sorted by video.
        groups: dict[tuple[int, int], list[ShardRecord]] = {}
        for record in self.shards:
            groups.setdefault((record.view_start, record.view_end), []).append(record)
        for records in groups.values():
            records.sort(key=lambda r: r.video_start)
        ranges = sorted(groups)
        for i, a_range in enumerate(ranges):
            for b_range in ranges[i:]:
                if b_range != a_range and b_range[0] >= a_range[1]:
                    break
                a_list, b_list = groups[a_range], groups[b_range]
                j = 0
                for a in a_list:  # two-pointer sweep over video intervals
                    while j < len(b_list) and b_list[j].video_end <= a.video_start:
                        j += 1
                    k = j
                    while k < len(b_list) and b_list[k].video_start < a.video_end:
                        if b_list[k] is not a:
                            fail(f"shards {a.name} and {b_list[k].name} overlap")
                        k += 1


def load_manifest(path_or_dir: str | Path) -> Manifest:
    """Read `manifest.json` (or `<dir>/manifest.json`) with clear errors for every failure."""
    location = storage.resolve(path_or_dir)
    path = location if storage.name_of(location) == MANIFEST_NAME else storage.join(location, MANIFEST_NAME)
    try:
        data = json.loads(storage.read_bytes(path).decode("utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise CacheError(
            f"no {MANIFEST_NAME} in {location}: not a cache, or its writer has not finished; "
            "run salt cache-latents again to finish it"
        ) from None
    except IsADirectoryError:
        raise CacheError(f"{path} is a folder, not a cache manifest") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(
            f"{path}: not valid JSON ({error}); the file is damaged, rewrite it with salt cache-latents"
        ) from error
    return Manifest.from_json(data, source=str(path))
