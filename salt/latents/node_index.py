"""One index per node: what a reader needs of a manifest, in a file every process maps.

A cache of Kinetics size has a 23 MB manifest (83 000 shards); parsed in each of a node's 8
ranks × 8 loader workers it would cost ~1.5 s and ~300 MB each. Instead the first process of a
node to open a manifest writes its reader's part to a node-local file (the header: every field
but the shard list; the shard table's columns; the skipped video ids), under a lock, and every
process maps that file read-only: the OS keeps one copy in its page cache for all of them, and
opening costs a `stat` and a small JSON parse.

The file is keyed by the manifest's identity (path, size, modification time and inode; on an
object store its size and ETag), so a rewritten manifest gets a new file and a reader never
sees a stale one. It lives in `$SALT_INDEX_DIR`, else `/dev/shm/salt-index-<uid>` (memory),
else the temporary folder; the cache itself is never written (read-only caches work). Where
no such folder can be written, the process keeps its index to itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from salt.latents import storage
from salt.latents.errors import CacheError
from salt.latents.index import COLUMNS, ShardTable, skipped_array
from salt.latents.manifest import MANIFEST_NAME, Manifest, load_manifest

MAGIC = b"SALTIDX1"
_HEAD = struct.Struct("<8sQQQ")  # magic, header bytes, shards, skipped videos
KEEP_DAYS = 2.0  # files of manifests nobody opened for this long are removed when a new one is written


def index_dir() -> Path | None:
    """Where this node's index files live (None: nowhere writable; each process keeps its own)."""
    chosen = os.environ.get("SALT_INDEX_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidates = [Path(chosen)] if chosen else [Path("/dev/shm") / f"salt-index-{uid}"]
    candidates += [] if chosen else [Path(tempfile.gettempdir()) / f"salt-index-{uid}"]
    for folder in candidates:
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    return None


def manifest_identity(cache: Path | str) -> str:
    """What changes whenever the manifest is rewritten (it is replaced, never edited in place)."""
    path = storage.join(cache, MANIFEST_NAME)
    if storage.is_url(path):
        fs, inner = storage.filesystem(str(path))
        info = fs.info(inner)
        tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime")
        identity = [str(path), int(info.get("size", 0)), str(tag)]
    else:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            load_manifest(cache)  # says it in the reader's words
            raise
        identity = [os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def reader_manifest(cache: Path | str) -> tuple[Manifest, np.ndarray]:
    """(the manifest with its shards as a `ShardTable`, the sorted skipped video ids), from this
    node's index file, written first if no process of the node has yet."""
    folder = index_dir()
    if folder is None:
        return _parsed(cache)
    path = folder / f"{manifest_identity(cache)}.idx"
    if not path.exists():
        with storage.file_lock(path.with_suffix(".lock")):
            if not path.exists():  # another process may have written it while this one waited
                _write(path, *_parsed(cache))
                _prune(folder, keep=path)
    try:
        return _mapped(path)
    except (OSError, ValueError, CacheError):  # a damaged file (a full /dev/shm): parse, and rewrite it
        path.unlink(missing_ok=True)
        return _parsed(cache)


def _parsed(cache: Path | str) -> tuple[Manifest, np.ndarray]:
    import dataclasses

    manifest = load_manifest(cache)
    return dataclasses.replace(manifest, shards=ShardTable.from_manifest(manifest)), skipped_array(manifest)


def _write(path: Path, manifest: Manifest, skipped: np.ndarray) -> None:
    table: ShardTable = manifest.shards
    header = manifest.to_json()
    del header["shards"]
    text = json.dumps(header).encode()
    text += b" " * (-(_HEAD.size + len(text)) % 8)  # the columns start 8-byte aligned
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(_HEAD.pack(MAGIC, len(text), len(table), len(skipped)))
            handle.write(text)
            for name in COLUMNS:
                handle.write(np.ascontiguousarray(table.columns[name], dtype="<i8").tobytes())
            handle.write(np.ascontiguousarray(skipped, dtype="<i8").tobytes())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full or read-only folder: this process keeps its parsed copy


def _mapped(path: Path) -> tuple[Manifest, np.ndarray]:
    with open(path, "rb") as handle:
        magic, header_bytes, shards, skipped = _HEAD.unpack(handle.read(_HEAD.size))
        if magic != MAGIC:
            raise CacheError(f"{path}: not a SALT index file")
        header = json.loads(handle.read(header_bytes))
    for name in ("grid", "input_mean", "input_std"):
        header[name] = tuple(header[name])
    data = np.memmap(path, dtype="<i8", mode="r", offset=_HEAD.size + header_bytes)
    if len(data) != len(COLUMNS) * shards + skipped:
        raise CacheError(f"{path}: cut short")
    columns = {name: data[i * shards : (i + 1) * shards] for i, name in enumerate(COLUMNS)}
    manifest = Manifest(**{**header, "shards": ShardTable(columns)})
    return manifest, data[len(COLUMNS) * shards :]


def _prune(folder: Path, keep: Path) -> None:
    cutoff = time.time() - KEEP_DAYS * 86400
    for old in folder.glob("*.idx"):
        with contextlib.suppress(OSError):
            if old != keep and old.stat().st_atime < cutoff and old.stat().st_mtime < cutoff:
                old.unlink()  # a process that still maps it keeps its pages
