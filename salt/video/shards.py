"""`salt make-shards`: pack videos (bytes untouched) and labels into WebDataset tar shards.

Large data sets then stream from a few big files instead of millions of small ones. Each
shard `videos-NNNNNN.tar` holds `<key>.<ext>` (the original file) and `<key>.json` (label,
source path, video id) per video; `videos.json` beside them lists every video with its shard,
the byte offset and size of its data inside the tar (so one video is read without unpacking),
and its label. Video ids are positions in the source list, so views seeded by video id are the
same whether a video is read from its file or from a shard. This module writes shards;
`salt.video.sources.read_shard_index` reads them.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

from salt.latents import storage
from salt.video.sources import SHARD_FORMAT, SHARD_FORMAT_VERSION, SHARD_INDEX, VideoRecord, load_records


def make_shards(data: str | Path, out: str | Path, shard_size: int) -> dict:
    """Write shards of `shard_size` videos each; returns the index that `videos.json` holds."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1 video, got {shard_size}")
    records = load_records(data)
    out = storage.resolve(out)
    remote = storage.is_url(out)
    if not remote:
        out.mkdir(parents=True, exist_ok=True)
    shards = []
    with tempfile.TemporaryDirectory(prefix="salt-make-shards-") as staging:
        for first in range(0, len(records), shard_size):
            name = f"videos-{first // shard_size:06d}.tar"
            # An object store has no rename: each tar is built here, then uploaded whole.
            path = Path(staging, name) if remote else out / name
            shards.append({"name": name, "videos": _write_shard(path, records[first : first + shard_size])})
            if remote:
                storage.upload(path, storage.join(out, name))
                path.unlink()
    index = {"format": SHARD_FORMAT, "format_version": SHARD_FORMAT_VERSION, "source": str(data), "shards": shards}
    if remote:
        storage.write_bytes(storage.join(out, SHARD_INDEX), json.dumps(index, indent=1).encode())  # last: the commit
        return index
    tmp = out / f".{SHARD_INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / SHARD_INDEX)
    return index


def _write_shard(path: Path, records: list[VideoRecord]) -> list[dict]:
    """One tar, deterministic (fixed metadata), written under a temporary name then renamed."""
    tmp = path.with_suffix(".tar.tmp")
    listed = []
    with open(tmp, "wb") as handle, tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for record in records:
            key = f"{record.video_id:09d}"
            ext = Path(record.member or record.path).suffix.lower() or ".mp4"
            data = record.read_bytes()
            meta = json.dumps({"video_id": record.video_id, "label": record.label, "source": record.name}).encode()
            _add(tar, f"{key}.json", meta)
            offset = _add(tar, f"{key}{ext}", data)
            listed.append(
                {
                    "video_id": record.video_id,
                    "member": f"{key}{ext}",
                    "offset": offset,
                    "size": len(data),
                    "label": record.label,
                    "source": record.name,
                }
            )
        tar.close()
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return listed


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> int:
    """Add a member with fixed metadata; returns the offset of its data in the file."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    header = len(info.tobuf(tar.format, tar.encoding, tar.errors))
    start = tar.offset
    tar.addfile(info, io.BytesIO(data))
    return start + header
