"""WebDataset tar shards: deterministic writing, an offset index, and checked reading.

Each shard `<name>.tar` comes with `<name>.idx.json`, which holds the offset, size and
CRC-32 of every member's data, so a reader can seek to one sample without parsing the tar
and can tell corrupt bytes from good ones. A shard is complete iff both files exist and the
tar has the index's size. Locally the index is written before the tar is renamed into place;
on an object store (no rename) the tar is uploaded first and the index after it, so a reader
never sees an index whose tar is not whole.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from salt.latents import storage
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
    tar_path: Path | str  # a str for a URL
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
    if storage.is_url(directory):
        return _upload_wds_shard(str(directory).rstrip("/"), shard, samples)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ordered = _ordered(shard, samples)
    tar_path = directory / f"{shard.name}.tar"
    tmp_path = directory / f"{shard.name}.tar.tmp"
    try:
        files, index = _write_tar(tmp_path, tar_path, shard, ordered)
        write_json_atomic(directory / f"{shard.name}{INDEX_SUFFIX}", index)
        os.replace(tmp_path, tar_path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)  # e.g. a full disk: no partial shard stays behind
        raise
    fsync_directory(directory)
    return files


def _ordered(shard: ShardId, samples: list[EncodedSample]) -> list[EncodedSample]:
    ordered = sorted(samples, key=lambda s: s.key)  # arrival order (parallel decoders) must not matter
    keys = [s.key for s in ordered]
    if len(set(keys)) != len(keys):
        raise CacheError(f"shard {shard.name}: duplicate sample keys")
    for sample in ordered:
        if not shard.contains(*parse_key(sample.key)):
            raise CacheError(f"shard {shard.name}: sample {sample.key} lies outside the shard")
        if sample.frame_ext not in ("jpg", "png") or not sample.frames:
            raise CacheError(f"shard {shard.name}: sample {sample.key} needs frames with ext jpg or png")
    return ordered


def _write_tar(
    path: Path, final_path: Path | str, shard: ShardId, ordered: list[EncodedSample]
) -> tuple[ShardFiles, dict]:
    """The tar at `path` (fsynced) and its index."""
    members: dict[str, list[int]] = {}
    with open(path, "wb") as raw:
        sink = _HashingWriter(raw)
        with tarfile.open(fileobj=sink, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in ordered:
                for member, data in _sample_members(sample):
                    tar.addfile(_tar_info(member, len(data)), io.BytesIO(data))
                    # tar.offset now points past the data and its padding to a 512-byte block.
                    data_offset = tar.offset - -(-len(data) // BLOCK) * BLOCK
                    members[member] = [data_offset, len(data), crc32(data)]
        raw.flush()
        os.fsync(raw.fileno())
    files = ShardFiles(shard.name, final_path, sink.count, sink.sha256.hexdigest(), len(ordered))
    index = {
        "shard": shard.name,
        "bytes": files.bytes,
        "sha256": files.sha256,
        "keys": [s.key for s in ordered],
        "members": members,
    }
    return files, index


def _upload_wds_shard(directory: str, shard: ShardId, samples: list[EncodedSample]) -> ShardFiles:
    """Object stores: build the tar in a local temp file, upload it, then its index (the
    commit). A writer killed before the index leaves a tar no reader lists; a rerun replaces it."""
    ordered = _ordered(shard, samples)
    tar_url = f"{directory}/{shard.name}.tar"
    with tempfile.TemporaryDirectory(prefix="salt-shard-") as tmp:
        local = Path(tmp) / f"{shard.name}.tar"
        files, index = _write_tar(local, tar_url, shard, ordered)
        storage.remove(f"{directory}/{shard.name}{INDEX_SUFFIX}")  # a rewrite: uncommit the old shard first
        storage.upload(local, tar_url)
    write_json_atomic(f"{directory}/{shard.name}{INDEX_SUFFIX}", index)
    return files


def complete_shard_files(directory: str | Path, shard: ShardId) -> ShardFiles | None:
    """The files of `shard` if a previous run finished it (for resuming), else None."""
    tar_path = storage.join(directory, f"{shard.name}.tar")
    try:
        index = read_wds_index(directory, shard.name)
        if storage.size(tar_path) != index["bytes"]:
            return None
    except (CacheError, OSError):
        return None
    return ShardFiles(shard.name, tar_path, index["bytes"], index["sha256"], len(index["keys"]))


def read_wds_index(directory: str | Path, name: str) -> dict[str, Any]:
    path = storage.join(directory, f"{name}{INDEX_SUFFIX}")
    try:
        index = json.loads(storage.read_bytes(path).decode("utf-8"))
        index["members"], index["keys"], index["bytes"], index["sha256"]
    except FileNotFoundError as error:
        raise CacheError(
            f"shard {name}: missing {storage.name_of(path)}; the shard is incomplete, run salt cache-latents again"
        ) from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise CacheError(f"shard {name}: damaged or unreadable index {path}: {error}") from error
    return index


class WdsShardReader:
    """Checked access to the samples of one complete shard: a seek (local) or a range request
    (object store) per sample, or slices of the whole tar when its bytes are given (`data`:
    how a student streams an object store, one sequential read per shard)."""

    def __init__(self, directory: str | Path, name: str, data: bytes | None = None) -> None:
        self.name = name
        self.tar_path = storage.join(directory, f"{name}.tar")
        self.remote = storage.is_url(self.tar_path)
        if data is None and not storage.is_file(self.tar_path):
            raise CacheError(f"shard {name}: missing {self.tar_path}; run salt cache-latents again to rewrite it")
        self.index = read_wds_index(directory, name)
        # Members grouped by key, in tar order; a sample's members are contiguous.
        self.sample_members: dict[str, list[tuple[str, int, int, int]]] = {key: [] for key in self.index["keys"]}
        for member, (offset, size, checksum) in self.index["members"].items():
            key, _, suffix = member.partition(".")
            if key not in self.sample_members:
                raise CacheError(f"shard {name}: index member {member} belongs to no listed key")
            self.sample_members[key].append((suffix, offset, size, checksum))
        self._data = data
        self._file: BinaryIO | None = None

    def __enter__(self) -> WdsShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read_span(self, key: str, start: int, end: int) -> bytes:
        if self._data is not None:
            return self._data[start:end]
        if self.remote:
            return storage.read_range(self.tar_path, start, end)
        if self._file is None:
            self._file = open(self.tar_path, "rb")
        self._file.seek(start)
        return self._file.read(end - start)

    def read_members(self, key: str) -> dict[str, bytes]:
        """Member bytes by suffix ("json", "latents", "scales", "f00.jpg", ...), CRC-checked."""
        members = self.sample_members.get(key)
        if members is None:
            raise CacheError(f"shard {self.name}: sample {key} is not in this shard")
        # One read spans all members of the sample (they are contiguous in the tar).
        start = members[0][1]
        end = members[-1][1] + members[-1][2]
        try:
            span = self._read_span(key, start, end)
        except OSError as error:
            raise CacheError(f"shard {self.name}: sample {key}: cannot read {self.tar_path}: {error}") from error
        if len(span) != end - start:
            raise CacheError(f"shard {self.name}: sample {key}: tar truncated ({self.tar_path} ends before the sample)")
        out = {}
        for suffix, offset, size, checksum in members:
            data = span[offset - start : offset - start + size]
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


def verify_wds_shard(
    directory: str | Path, name: str, expected_sha256: str | None, expected_keys: list[str], data: bytes | None = None
) -> list[str]:
    """File-level checks of one shard (presence, size, sha256, keys); per-sample CRCs are
    checked by reading. `data`: the tar's bytes when the caller has read them already (an
    object store's shard is read once, not once per check). Returns reasons, empty when healthy."""
    tar_path = storage.join(directory, f"{name}.tar")
    try:
        reader = WdsShardReader(directory, name)
    except CacheError as error:
        return [str(error)]
    problems = []
    size = storage.size(tar_path) if data is None else len(data)
    if size != reader.index["bytes"]:
        problems.append(f"tar holds {size} bytes, its index says {reader.index['bytes']} (truncated or overwritten)")
    digest = hashlib.sha256()
    if data is not None:
        digest.update(data)
    else:
        with storage.open_read(tar_path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
        problems.append("sha256 differs from the manifest")
    if reader.index["keys"] != expected_keys:
        problems.append(
            f"index lists {len(reader.index['keys'])} keys, not the {len(expected_keys)} the manifest implies"
        )
    return problems
