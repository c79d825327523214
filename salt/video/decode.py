"""Decoding with decord, from a path or from bytes, and views decoded in one pass.

`decode_views` is what loaders call: it opens the video once, draws the views' parameters,
decodes the sorted union of the frames all views need in one `get_batch`, and renders each
view. Any failure becomes one exception type, `VideoDecodeError`, that names the file.
decord cannot be interrupted by signals and can crash on broken files, so loaders run this
in an `IsolatedDecoder` (salt/video/isolated.py) with a per-video timeout.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from salt.errors import UserError
from salt.latents.storage import is_url
from salt.video.views import ViewConfig, ViewParams, render_view, sample_view, view_frame_indices

VideoSource = str | os.PathLike | bytes


class VideoDecodeError(UserError, RuntimeError):
    """A video that cannot be decoded: missing, empty, broken, not a video, or hung."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def source_name(source: VideoSource, name: str | None = None) -> str:
    if name is not None:
        return name
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def check_file(path: str | os.PathLike, name: str) -> None:
    """Raise `VideoDecodeError` for a local file that is missing or empty: no decoder needed to say so."""
    path = Path(path)
    if not path.is_file():
        raise VideoDecodeError(name, "file not found; check the path in the data list")
    if path.stat().st_size == 0:
        raise VideoDecodeError(name, "empty file (0 bytes); remove it from the data list or replace it")


def open_reader(source: VideoSource, name: str | None = None, num_threads: int = 1):
    """A decord VideoReader; one decode thread by default because loaders run many workers."""
    import decord

    name = source_name(source, name)
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise VideoDecodeError(name, "empty (0 bytes); remove it from the data list or replace it")
        handle = io.BytesIO(source)
    else:
        check_file(source, name)
        handle = str(source)
    try:
        reader = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=num_threads)
    except Exception as err:  # decord raises its own DECORDError and plain RuntimeErrors
        raise VideoDecodeError(
            name, f"not a decodable video ({type(err).__name__}: {_first_line(err)}); remove or replace it"
        ) from None
    if len(reader) < 1:
        raise VideoDecodeError(name, "the video has no frames")
    return reader


def read_frames(reader, indices, name: str = "<video>", source: VideoSource | None = None) -> np.ndarray:
    """Frames at `indices` (any order, repeats allowed) as uint8 `[len(indices),H,W,3]`.

    The sorted unique set is decoded in one call; repeats and order are restored after.
    """
    wanted = np.asarray(indices, dtype=np.int64)
    unique, inverse = np.unique(wanted, return_inverse=True)
    try:
        decoded = reader.get_batch(unique.tolist()).asnumpy()
    except Exception as err:
        # decord 0.6 cannot copy out frames of some widths (e.g. 1, 2, 24, 48 px: its row
        # padding breaks "DECORDArrayCopyFromTo"); PyAV decodes those files correctly.
        if source is None or "DECORDArrayCopyFromTo" not in str(err):
            raise VideoDecodeError(name, f"decoding frames failed ({type(err).__name__}: {_first_line(err)})") from None
        decoded = _read_frames_pyav(source, unique, name)
    if decoded.ndim != 4 or decoded.shape[0] != len(unique) or decoded.shape[-1] != 3:
        raise VideoDecodeError(name, f"decoder returned frames of shape {decoded.shape}")
    return decoded[inverse]


def _read_frames_pyav(source: VideoSource, indices: np.ndarray, name: str) -> np.ndarray:
    """Frames at sorted unique `indices`, decoded in order with PyAV (the fallback above)."""
    import av

    wanted, frames = set(int(i) for i in indices), {}
    try:
        with av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source)) as container:
            for position, frame in enumerate(container.decode(video=0)):
                if position in wanted:
                    frames[position] = frame.to_ndarray(format="rgb24")
                if position >= indices[-1]:
                    break
    except Exception as err:  # PyAV raises its own error family
        raise VideoDecodeError(name, f"decoding frames failed ({type(err).__name__}: {_first_line(err)})") from None
    missing = [int(i) for i in indices if int(i) not in frames]
    if missing:
        raise VideoDecodeError(name, f"frames {missing[:5]} could not be decoded")
    return np.stack([frames[int(i)] for i in indices])


def decode_views(
    source: VideoSource, video_id: int, view_indices, cfg: ViewConfig, name: str | None = None
) -> list[tuple[np.ndarray, ViewParams]]:
    """Render views `view_indices` of one video; one open, one pass over the frames needed."""
    name = source_name(source, name)
    reader = open_reader(source, name)
    num_frames = len(reader)
    # A view's frames are known from the frame count alone; its crop is drawn once the decoded
    # frames tell the size.
    windows = [view_frame_indices(video_id, v, num_frames, cfg) for v in view_indices]
    needed = sorted({i for window in windows for i in window})
    frames = read_frames(reader, needed, name, source)
    height, width = frames.shape[1:3]
    position = {frame_index: row for row, frame_index in enumerate(needed)}
    views = []
    for v in view_indices:
        params = sample_view(video_id, v, num_frames, height, width, cfg)
        rows = [position[i] for i in params.frame_indices]
        views.append((render_view(frames[rows], params), params))
    return views


def decode_record_views(record, view_indices, cfg: ViewConfig) -> list[tuple[np.ndarray, ViewParams]]:
    """`decode_views` for a `VideoRecord`: a file by path, a tar-shard member by its bytes."""
    source = record.path if record.offset is None and not is_url(record.path) else record.read_bytes()
    return decode_views(source, record.video_id, view_indices, cfg, name=record.name)


def replay_view(source: VideoSource, params: ViewParams, name: str | None = None) -> np.ndarray:
    """Rebuild a view's frames from the video and its recorded parameters."""
    name = source_name(source, name)
    reader = open_reader(source, name)
    frames = read_frames(reader, params.frame_indices, name, source)
    found = (len(reader), *frames.shape[1:3])
    recorded = (params.source_frames, *params.source_size)
    if found != recorded:
        raise VideoDecodeError(
            name,
            f"video has (frames, height, width) = {found} but the view was recorded on {recorded}: not the same video",
        )
    return render_view(frames, params)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else ""


def describe_record(record, chunk: int = 64) -> dict:
    """Decode every frame of a video once (in chunks, to hold little) and describe it: what
    `salt check-data` reports. Raises `VideoDecodeError` naming the file and what failed."""
    source = record.path if record.offset is None and not is_url(record.path) else record.read_bytes()
    reader = open_reader(source, record.name)
    frames = len(reader)
    height = width = 0
    for start in range(0, frames, chunk):
        decoded = read_frames(reader, range(start, min(start + chunk, frames)), record.name, source)
        height, width = decoded.shape[1:3]
    fps = float(reader.get_avg_fps() or 0.0)
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    return {
        "frames": frames,
        "height": int(height),
        "width": int(width),
        "fps": fps,
        "seconds": frames / fps if fps > 0 else None,
        "bytes": size,
    }
