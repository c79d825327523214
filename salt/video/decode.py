"""Views decoded in one pass: what every loader, probe and cache writer calls.

`decode_views` opens the video once (salt/video/decoders.py: the decoder `cfg.decoder` names),
draws the views' parameters, decodes the sorted union of the frames all views need in one
read, and renders each view. Any failure becomes one exception type, `VideoDecodeError`, that
names the file. A decoder can hang or crash on a broken file, so loaders run this in an
`IsolatedDecoder` (salt/video/isolated.py) with a per-video timeout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from salt.latents.storage import is_url
from salt.video.decoders import DEFAULT_DECODER, Source, open_video, source_name
from salt.video.errors import VideoDecodeError
from salt.video.views import ViewConfig, ViewParams, render_view, sample_view, view_frame_indices

__all__ = ["VideoDecodeError", "decode_record_views", "decode_views", "describe_record", "replay_view"]


def decode_views(
    source: Source, video_id: int, view_indices, cfg: ViewConfig, name: str | None = None
) -> list[tuple[np.ndarray, ViewParams]]:
    """Render views `view_indices` of one video; one open, one pass over the frames needed."""
    name = source_name(source, name)
    with open_video(source, name, cfg.decoder) as video:
        # A view's frames are known from the frame count alone; its crop is drawn once the
        # decoded frames tell the size.
        windows = [view_frame_indices(video_id, v, video.num_frames, cfg) for v in view_indices]
        needed = sorted({i for window in windows for i in window})
        frames = dict(zip(needed, video.read(needed)))
    height, width = frames[needed[0]].shape[:2]
    views = []
    for v in view_indices:
        params = sample_view(video_id, v, video.num_frames, height, width, cfg)
        views.append((render_view([frames[i] for i in params.frame_indices], params), params))
    return views


def record_source(record) -> Source:
    """What a decoder opens for a `VideoRecord`: a file by path, a tar-shard member or a URL by its bytes."""
    return record.path if record.offset is None and not is_url(record.path) else record.read_bytes()


def decode_record_views(record, view_indices, cfg: ViewConfig) -> list[tuple[np.ndarray, ViewParams]]:
    """`decode_views` for a `VideoRecord`."""
    return decode_views(record_source(record), record.video_id, view_indices, cfg, name=record.name)


def replay_view(
    source: Source, params: ViewParams, name: str | None = None, decoder: str = DEFAULT_DECODER
) -> np.ndarray:
    """Rebuild a view's frames from the video and its recorded parameters."""
    name = source_name(source, name)
    with open_video(source, name, decoder) as video:
        frames = video.read(params.frame_indices)
    found = (video.num_frames, *frames[0].shape[:2])
    recorded = (params.source_frames, *params.source_size)
    if found != recorded:
        raise VideoDecodeError(
            name,
            f"video has (frames, height, width) = {found} but the view was recorded on {recorded}: not the same video",
        )
    return render_view(frames, params)


def describe_record(record, chunk: int = 64, decoder: str = DEFAULT_DECODER) -> dict:
    """Decode every frame of a video once (in chunks, to hold little) and describe it: what
    `salt check-data` reports. Raises `VideoDecodeError` naming the file and what failed."""
    source = record_source(record)
    with open_video(source, record.name, decoder) as video:
        frames, fps, codec = video.num_frames, video.fps, video.codec
        height = width = 0
        for start in range(0, frames, chunk):
            height, width = video.read(range(start, min(start + chunk, frames)))[-1].shape[:2]
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    return {
        "codec": codec,
        "frames": frames,
        "height": int(height),
        "width": int(width),
        "fps": fps,
        "seconds": frames / fps if fps > 0 else None,
        "bytes": size,
    }
