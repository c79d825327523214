"""Videos as users bring them, made here with PyAV's encoders (nothing downloaded): every codec of
today's downloads, tagged colour, rotation, non-square pixels, variable frame rate, several video
streams, and files that are not videos."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FRAMES, HEIGHT, WIDTH = 12, 48, 64

# name: (encoder, pixel format, encoder options)
CODECS = {
    "h264.mp4": ("libx264", "yuv420p", {}),
    "hevc.mp4": ("libx265", "yuv420p", {"x265-params": "log-level=error"}),
    "hevc-10bit.mkv": ("libx265", "yuv420p10le", {"x265-params": "log-level=error"}),
    "vp9.webm": ("libvpx-vp9", "yuv420p", {}),
    "av1.mkv": ("libsvtav1", "yuv420p", {}),
    "av1.mp4": ("libsvtav1", "yuv420p", {}),
    "av1.webm": ("libsvtav1", "yuv420p", {}),
    "mpeg4.avi": ("mpeg4", "yuv420p", {"qscale": "2", "bf": "2"}),  # MPEG-4 Part 2 with B-frames
}


def pattern(frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """uint8 `[T, H, W, 3]`: each frame its own flat colour and a white block at its own place,
    so a decoded frame says which source frame it is."""
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        out[t] = ((40 + 15 * t) % 256, 128, (200 - 10 * t) % 256)
        left = (4 * t) % (width - 8)
        out[t, 8:16, left : left + 8] = 255
    return out


def encode(
    path: Path,
    codec: str,
    frames: np.ndarray,
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
    rate: int = 10,
    stamps: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int = 0,
    aspect: Fraction | None = None,
    colorspace: str | None = None,
    color_range: str | None = None,
    container_options: dict | None = None,
) -> Path:
    """Encode RGB `frames`; `stamps` (in `time_base`) for a variable frame rate, `rotation` as the
    display matrix a phone writes, `aspect` as the sample aspect ratio, colour tags as given."""
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options or {})
        if time_base is not None:
            stream.time_base = stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        if aspect is not None:
            stream.codec_context.sample_aspect_ratio = aspect
        if colorspace:
            stream.codec_context.colorspace = colorspace
        if color_range:
            stream.codec_context.color_range = color_range
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if colorspace or color_range:  # converted with the matrix and range the tags say
                frame = frame.reformat(format=pix_fmt, dst_colorspace=colorspace, dst_color_range=color_range)
                frame.colorspace, frame.color_range = colorspace or frame.colorspace, color_range or frame.color_range
            if stamps is not None:
                frame.pts, frame.time_base = stamps[index], time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_codecs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    source = pattern()
    return {name: encode(folder / name, codec, source, fmt, opts) for name, (codec, fmt, opts) in CODECS.items()}


def two_video_streams(path: Path) -> Path:
    """An mp4 whose first (default) video track is small and cheap and whose second is larger and
    costlier (noise): decord 0.6 reads the second, FFmpeg 8's default-first rule the first."""
    rng = np.random.default_rng(0)
    small, large = pattern(10, 24, 32), rng.integers(0, 255, (14, 32, 48, 3), dtype=np.uint8)
    with av.open(str(path), mode="w") as container:
        streams = [container.add_stream("libx264", rate=10) for _ in range(2)]
        for stream, clip in zip(streams, (small, large)):
            stream.height, stream.width, stream.pix_fmt = clip.shape[1], clip.shape[2], "yuv420p"
        for index in range(len(large)):
            for stream, clip in zip(streams, (small, large)):
                if index < len(clip):
                    for packet in stream.encode(av.VideoFrame.from_ndarray(clip[index], format="rgb24")):
                        container.mux(packet)
        for stream in streams:
            for packet in stream.encode():
                container.mux(packet)
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def empty_container(path: Path) -> Path:
    """A well-formed mp4 with nothing in it (what a writer leaves that stopped before its first frame)."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, "yuv420p"
        container.start_encoding()
    return path


def cut(source: Path, path: Path, share: float) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])
    return path
