"""Where videos come from: a CSV of `path label` lines (V-JEPA's format) or a folder.

Every video gets a stable integer id (its position in the source), which seeds its views:
the same source always gives the same ids, so views can be rebuilt and added later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from salt.errors import UserError
from salt.latents import storage
from salt.latents.errors import CacheError

SHARD_INDEX = "videos.json"  # written by `salt make-shards` beside its tar shards
SHARD_FORMAT = "salt-video-shards"
SHARD_FORMAT_VERSION = 1
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


class VideoSourceError(UserError, ValueError):
    """A data source (CSV file or folder) that cannot be read."""


@dataclass(frozen=True)
class VideoRecord:
    """One video: a file, or a member of a tar shard (`offset`/`size` of its bytes in `path`)."""

    video_id: int
    path: str
    label: int | None = None
    member: str | None = None  # name inside the tar shard, when the video lives in one
    offset: int | None = None
    size: int | None = None

    @property
    def name(self) -> str:
        """How errors and manifests name this video."""
        return f"{self.path}:{self.member}" if self.member else self.path

    def read_bytes(self) -> bytes:
        """The video file's bytes (from the tar shard without unpacking it; a range request
        when the shard is in an object store)."""
        if storage.is_url(self.path):
            if self.offset is None:
                return storage.read_bytes(self.path)
            return storage.read_range(self.path, self.offset, self.offset + self.size)
        with open(self.path, "rb") as handle:
            if self.offset is None:
                return handle.read()
            handle.seek(self.offset)
            return handle.read(self.size)


def read_csv(csv_path: str | Path, problems: list[dict] | None = None) -> list[VideoRecord]:
    """Read V-JEPA-style lines `path [label]`, separated by a space or a tab.

    The label is the last whitespace-separated field when it is an integer, so paths may contain
    spaces. Relative paths are resolved against the CSV's folder, which keeps a data set
    movable. Blank lines and lines starting with '#' are skipped. A line that cannot be a
    video (no video extension and no such file: `hi`, `a.mp4,3`, `a.mp4 cat`) is refused with
    its line number, not read as a path that will be missing; or, given `problems`, recorded
    there ({"line", "text", "reason"}) and left out (`salt check-data` lists them all).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise VideoSourceError(f"data file not found: {csv_path}")
    records: list[VideoRecord] = []
    bad: list[str] = []
    for line_number, line in enumerate(csv_path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path_text, label = line, None
        head, tail = _last_field(line)
        if head and _is_int(tail):
            path_text, label = head.strip(), int(tail)
        path = Path(path_text)
        if not path.is_absolute():
            path = csv_path.parent / path
        problem = _line_problem(line, path_text, path)
        if problem:
            bad.append(f"{csv_path}:{line_number}: {problem}")
            if problems is not None:
                problems.append({"line": line_number, "text": line, "reason": problem})
            continue
        records.append(VideoRecord(len(records), str(path), label))
    if bad and problems is None:
        more = f" (and {len(bad) - 1} more bad lines)" if len(bad) > 1 else ""
        raise VideoSourceError(
            f"{bad[0]}{more} — write one 'path label' per line, separated by a space or a tab, e.g. "
            "'videos/000000.mp4 3' (label: an integer class index)"
        )
    if not records and not bad:
        raise VideoSourceError(f"{csv_path}: no videos listed — write one 'path label' per line")
    return records


def _line_problem(line: str, path_text: str, path: Path) -> str | None:
    """What is wrong with a CSV line that cannot name a video, or None."""
    if Path(path_text).suffix.lower() in VIDEO_EXTENSIONS or storage.is_url(path_text) or path.is_file():
        return None
    head, tail = _last_field(line)
    if "," in line:
        return f"{line!r} looks comma-separated"
    if head and Path(head.strip()).suffix.lower() in VIDEO_EXTENSIONS:
        return f"label {tail!r} is not an integer"
    return f"{line!r} is not a video path (no {'/'.join(VIDEO_EXTENSIONS)} extension and no such file)"


def list_folder(folder: str | Path) -> list[VideoRecord]:
    """All video files under `folder`, sorted; class sub-folders (sorted by name) give labels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoSourceError(f"data folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise VideoSourceError(f"{folder}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    class_dirs = sorted({p.parent.relative_to(folder).parts[0] for p in files if p.parent != folder})
    labelled = len(class_dirs) > 0 and all(p.parent != folder for p in files)
    class_index = {name: i for i, name in enumerate(class_dirs)}
    records = []
    for video_id, path in enumerate(files):
        label = class_index[path.relative_to(folder).parts[0]] if labelled else None
        records.append(VideoRecord(video_id, str(path), label))
    return records


def load_records(data: str | Path) -> list[VideoRecord]:
    """A CSV file, a folder of videos, or a folder of video shards from `salt make-shards`
    (local, or on an object store: shards from `salt make-shards --out s3://...`)."""
    try:
        data = storage.resolve(data)
    except CacheError as err:
        raise VideoSourceError(str(err)) from None
    if isinstance(data, str):
        if storage.is_file(storage.join(data, SHARD_INDEX)):
            return read_shard_index(data)
        raise VideoSourceError(
            f"{data}: no {SHARD_INDEX} there; on an object store, videos "
            "are read from the shards `salt make-shards --out URL` writes"
        )
    if data.is_dir() and (data / SHARD_INDEX).is_file():
        return read_shard_index(data)
    if data.is_dir():
        return list_folder(data)
    if data.suffix.lower() in (".csv", ".txt") or data.is_file():
        return read_csv(data)
    raise VideoSourceError(f"data source not found: {data} (give a CSV of 'path label' lines or a folder)")


def read_shard_index(folder: str | Path) -> list[VideoRecord]:
    """The videos of a folder written by `salt make-shards`, each a member of its tar."""
    folder = storage.resolve(folder)
    index_path = storage.join(folder, SHARD_INDEX)
    try:
        index = json.loads(storage.read_bytes(index_path))
    except (OSError, ValueError) as err:
        raise VideoSourceError(f"{index_path}: unreadable shard index ({err}); rerun salt make-shards") from err
    if index.get("format") != SHARD_FORMAT or index.get("format_version", 0) > SHARD_FORMAT_VERSION:
        raise VideoSourceError(f"{index_path}: not a {SHARD_FORMAT} index of version <= {SHARD_FORMAT_VERSION}")
    records = []
    listed = set(storage.list_names(folder, suffix=".tar"))
    for shard in index["shards"]:
        path = storage.join(folder, shard["name"])
        if shard["name"] not in listed:
            raise VideoSourceError(f"{path}: shard listed in {SHARD_INDEX} is missing")
        for video in shard["videos"]:
            records.append(
                VideoRecord(
                    video["video_id"], str(path), video["label"], video["member"], video["offset"], video["size"]
                )
            )
    return records


def _last_field(line: str) -> tuple[str, str]:
    """(everything before the last run of spaces or tabs, the field after it); ("", line) without one."""
    parts = line.rsplit(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else ("", line)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
