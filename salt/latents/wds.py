"""WebDataset tar shards: deterministic writing, an offset index, and checked reading.

Each shard `<name>.tar` comes with `<name>.idx.json`, which holds the offset, size and
CRC-32 of every member's data, so a reader can seek to one sample without parsing the tar
and can tell corrupt bytes from good ones. A shard is complete iff both files exist: the
index is written before the tar is renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from salt.latents.codecs import crc32, encode_meta
from salt.latents.errors import CacheError
from salt.latents.manifest import fsync_directory, write_json_atomic
from salt.latents.samples import EncodedSample, ShardId, parse_key

INDEX_SUFFIX = ".idx.json"
BLOCK = tarfile.BLOCKSIZE


@dataclass(frozen=True)
class ShardFiles:
    """A complete WebDataset shard on disk."""

    name: str
    tar_path: Path
    bytes: int
    sha256: str
    samples: int


class _HashingWriter(io.RawIOBase):
    """File wrapper that hashes and counts what tarfile writes, to avoid re-reading the tar."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.sha256 = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._file.write(data)
        self.sha256.update(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count


def _sample_members(sample: EncodedSample) -> list[tuple[str, bytes]]:
    """Members of one sample in their fixed order: json, latents, [scales], frames."""
    members = [(f"{sample.key}.json", encode_meta(sample.meta)), (f"{sample.key}.latents", sample.latents["latents"])]
    if "scales" in sample.latents:
        members.append((f"{sample.key}.scales", sample.latents["scales"]))
    width = max(2, len(str(len(sample.frames) - 1)))  # zero-padded so members sort in frame order
    members += [(f"{sample.key}.f{i:0{width}d}.{sample.frame_ext}", data) for i, data in enumerate(sample.frames)]
    return members


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed owner, mode and time: the same samples give a byte-identical tar.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_wds_shard(directory: str | Path, shard: ShardId, samples: list[EncodedSample]) -> ShardFiles:
    """Write `samples` (all of `shard`'s non-skipped samples) as `<directory>/<shard.name>.tar`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ordered = sorted(samples, key=lambda s: s.key)  # arrival order (parallel decoders) must not matter
    keys = [s.key for s in ordered]
    if len(set(keys)) != len(keys):
        raise CacheError(f"shard {shard.name}: duplicate sample keys")
    for sample in ordered:
        if not shard.contains(*parse_key(sample.key)):
            raise CacheError(f"shard {shard.name}: sample {sample.key} lies outside the shard")
        if sample.frame_ext not in ("jpg", "png") or not sample.frames:
            raise CacheError(f"shard {shard.name}: sample {sample.key} needs frames with ext jpg or png")
    tar_path = directory / f"{shard.name}.tar"
    tmp_path = directory / f"{shard.name}.tar.tmp"
    index: dict[str, list[int]] = {}
    try:
        with open(tmp_path, "wb") as raw:
            sink = _HashingWriter(raw)
            with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for sample in ordered:
                    for member, data in _sample_members(sample):
                        tar.addfile(_tar_info(member, len(data)), io.BytesIO(data))
                        # tar.offset now points past the data and its padding to a 512-byte block.
                        data_offset = tar.offset - -(-len(data) // BLOCK) * BLOCK
                        index[member] = [data_offset, len(data), crc32(data)]
            raw.flush()
            os.fsync(raw.fileno())
        files = ShardFiles(shard.name, tar_path, sink.count, sink.sha256.hexdigest(), len(ordered))
        write_json_atomic(directory / f"{shard.name}{INDEX_SUFFIX}", {
            "shard": shard.name, "bytes": files.bytes, "sha256": files.sha256, "keys": keys, "members": index,
        })
        os.replace(tmp_path, tar_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)  # e.g. a full disk: no partial shard stays behind
        raise
    fsync_directory(directory)
    return files


def complete_shard_files(directory: str | Path, shard: ShardId) -> ShardFiles | None:
    """The files of `shard` if a previous run finished it (for resuming), else None."""
    directory = Path(directory)
    tar_path = directory / f"{shard.name}.tar"
    try:
        index = read_wds_index(directory, shard.name)
    except CacheError:
        return None
    if not tar_path.is_file() or tar_path.stat().st_size != index["bytes"]:
        return None
    return ShardFiles(shard.name, tar_path, index["bytes"], index["sha256"], len(index["keys"]))


def read_wds_index(directory: str | Path, name: str) -> dict[str, Any]:
    path = Path(directory) / f"{name}{INDEX_SUFFIX}"
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        index["members"], index["keys"], index["bytes"], index["sha256"]
    except FileNotFoundError as error:
        raise CacheError(f"shard {name}: missing {path.name}; the shard is incomplete, run salt cache-latents again") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise CacheError(f"shard {name}: damaged or unreadable index {path}: {error}") from error
    return index


class WdsShardReader:
    """Checked random access to the samples of one complete shard."""

    def __init__(self, directory: str | Path, name: str) -> None:
        self.name = name
        self.tar_path = Path(directory) / f"{name}.tar"
        if not self.tar_path.is_file():
            raise CacheError(f"shard {name}: missing {self.tar_path}; run salt cache-latents again to rewrite it")
        self.index = read_wds_index(directory, name)
        # Members grouped by key, in tar order; a sample's members are contiguous.
        self.sample_members: dict[str, list[tuple[str, int, int, int]]] = {key: [] for key in self.index["keys"]}
        for member, (offset, size, checksum) in self.index["members"].items():
            key, _, suffix = member.partition(".")
            if key not in self.sample_members:
                raise CacheError(f"shard {name}: index member {member} belongs to no listed key")
            self.sample_members[key].append((suffix, offset, size, checksum))
        self._file: BinaryIO | None = None

    def __enter__(self) -> WdsShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_members(self, key: str) -> dict[str, bytes]:
        """Member bytes by suffix ("json", "latents", "scales", "f00.jpg", ...), CRC-checked."""
        members = self.sample_members.get(key)
        if members is None:
            raise CacheError(f"shard {self.name}: sample {key} is not in this shard")
        if self._file is None:
            try:
                self._file = open(self.tar_path, "rb")
            except OSError as error:
                raise CacheError(f"shard {self.name}: cannot open {self.tar_path}: {error}") from error
        # One read spans all members of the sample (they are contiguous in the tar).
        start = members[0][1]
        end = members[-1][1] + members[-1][2]
        try:
            self._file.seek(start)
            span = self._file.read(end - start)
        except OSError as error:
            raise CacheError(f"shard {self.name}: sample {key}: cannot read {self.tar_path}: {error}") from error
        if len(span) != end - start:
            raise CacheError(f"shard {self.name}: sample {key}: tar truncated ({self.tar_path} ends before the sample)")
        out = {}
        for suffix, offset, size, checksum in members:
            data = span[offset - start: offset - start + size]
            if crc32(data) != checksum:
                raise CacheError(f"shard {self.name}: sample {key}: member .{suffix} fails its CRC-32 (corrupt bytes)")
            out[suffix] = data
        return out


def split_members(members: dict[str, bytes]) -> tuple[bytes, dict[str, bytes], list[bytes]]:
    """(meta bytes, latent fields for LatentCodec.decode, frames in order) of one sample's members.

    Works on the member dict of WdsShardReader and on a plain webdataset sample (minus its
    "__key__"/"__url__" entries), so a student's own WebDataset pipeline decodes the same way.
    """
    try:
        meta = members["json"]
        fields = {"latents": members["latents"]}
    except KeyError as error:
        raise CacheError(f"sample has no .{error.args[0]} member") from error
    if "scales" in members:
        fields["scales"] = members["scales"]
    frame_suffixes = sorted(s for s in members if s.startswith("f") and s.endswith((".jpg", ".png")))
    return meta, fields, [members[s] for s in frame_suffixes]


def verify_wds_shard(directory: str | Path, name: str, expected_sha256: str | None, expected_keys: list[str]) -> list[str]:
    """File-level checks of one shard (presence, size, sha256, keys); per-sample CRCs are
    checked by reading. Returns reasons, empty when healthy."""
    tar_path = Path(directory) / f"{name}.tar"
    try:
        reader = WdsShardReader(directory, name)
    except CacheError as error:
        return [str(error)]
    problems = []
    size = tar_path.stat().st_size
    if size != reader.index["bytes"]:
        problems.append(f"tar holds {size} bytes, its index says {reader.index['bytes']} (truncated or overwritten)")
    digest = hashlib.sha256()
    with open(tar_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        problems.append("sha256 differs from the manifest")
    if reader.index["keys"] != expected_keys:
        problems.append(f"index lists {len(reader.index['keys'])} keys, not the {len(expected_keys)} the manifest implies")
    return problems
