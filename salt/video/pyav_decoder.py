"""SALT's default decoder: PyAV (FFmpeg 8 with dav1d, from wheels on Linux x86_64/aarch64 and macOS).

What a frame index means, for every decoder (decord's rule, made time-based):
- the video stream is the one decord 0.6 reads (`_video_stream`: cover pictures last, then
  the highest bit rate, ties to the first), not simply the first;
- the frames are the stream's packets in presentation order; `num_frames` counts them (the
  container's frame count is 0 in webm and mkv, and a mean rate times a duration only
  estimates it);
- frame `i` is the frame shown at time `t0 + i·Δ` (Δ the mean frame interval), to the nearest
  half frame: at a constant rate that is the i-th frame; at a variable rate clips stay evenly
  spaced in time, as a viewer sees them;
- pixels come out as a viewer sees them: RGB by the frame's own matrix and range (BT.601/709,
  limited or full), scaled to the display aspect when pixels are not square, turned upright
  by the rotation the file records.

Decoding seeks to the keyframe before a wanted frame and decodes forward, and seeks again only
when the next wanted frame lies past the next keyframe. The packet index (timestamps and
keyframe flags) comes from one pass over the packets without decoding them (~1 ms for a 4-s
1080p clip). Threads: one per decoder by default; loaders run one decoder per core.
"""

from __future__ import annotations

import io
import itertools
from fractions import Fraction

import numpy as np

from salt.video.errors import VideoDecodeError, first_line


def pyav_version() -> str:
    import av

    return f"pyav {av.__version__} (FFmpeg {av.ffmpeg_version_info})"


class PyAVVideo:
    """One open video: `num_frames`, `fps`, `codec` and `read(indices)`."""

    def __init__(self, source: str | bytes, name: str, threads: int = 1):
        import av

        self.name = name
        try:
            self._container = av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else str(source))
        except av.FFmpegError as err:
            raise VideoDecodeError(name, unreadable(err)) from None
        self._frames, self._position = None, None  # the decoding in progress, and where it is
        try:
            self._stream = _video_stream(self._container, name)
            self._stream.codec_context.thread_count = threads
            self.codec = self._stream.codec_context.codec.canonical_name  # av1, h264, hevc, vp9, ...
            self._index(self._stream)
        except BaseException:
            self.close()
            raise

    def _index(self, stream) -> None:
        """Presentation timestamps and keyframes of every packet, from one demux pass."""
        import av

        stamps, keys, first = [], {}, None  # keys: a keyframe's presentation -> decoding timestamp
        cut = False  # the last packet ends where the file does (a demuxer marks it corrupt)
        try:
            for packet in self._container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size and stamp is not None:
                    cut = packet.is_corrupt
                    stamps.append(stamp)
                    decoded_at = packet.dts if packet.dts is not None else stamp
                    first = decoded_at if first is None else min(first, decoded_at)
                    if packet.is_keyframe:
                        keys[stamp] = decoded_at
        except av.FFmpegError as err:
            raise VideoDecodeError(
                self.name, f"damaged or cut short after {len(stamps)} frames ({first_line(err)}); remove or replace it"
            ) from None
        if not stamps:
            raise VideoDecodeError(self.name, "the video stream holds no frames; remove or replace it")
        declared = stream.frames  # what an mp4's index promises (0 where a container does not say)
        if cut or len(stamps) < declared:
            held = f"{len(stamps)} of its {declared} frames" if declared else f"{len(stamps)} frames, the last one cut"
            raise VideoDecodeError(self.name, f"cut short: the file holds {held}; copy or download it again")
        self._stamps = np.unique(np.asarray(stamps, dtype=np.int64))
        # Seeks go to a keyframe's decoding timestamp, which containers index by (mp4, avi) and
        # which is never later than its presentation: a seek lands on it or before it.
        self._keys = np.asarray(sorted(keys), dtype=np.int64)
        self._key_seeks = np.asarray([keys[k] for k in sorted(keys)], dtype=np.int64)
        self._first_seek = int(first)
        self.num_frames = len(self._stamps)
        span = int(self._stamps[-1] - self._stamps[0])
        self._interval = span / (self.num_frames - 1) if self.num_frames > 1 and span > 0 else 1.0
        seconds = self._interval * float(stream.time_base or Fraction(1, 1))
        self.fps = 1.0 / seconds if self.num_frames > 1 and span > 0 else float(stream.average_rate or 0.0)

    def stamps_of(self, indices: np.ndarray) -> np.ndarray:
        """The timestamp (stream time base) of the frame each index shows."""
        times = self._stamps[0] + np.asarray(indices, dtype=np.float64) * self._interval + self._interval / 2
        positions = np.clip(np.searchsorted(self._stamps, times, side="right") - 1, 0, self.num_frames - 1)
        return self._stamps[positions]

    def read(self, indices) -> list[np.ndarray]:
        """Frames at `indices` (any order, repeats allowed), each uint8 `[H, W, 3]`; a repeated
        index shares its array. Not stacked: a view crops each frame before anything is copied."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= self.num_frames):
            raise VideoDecodeError(self.name, f"frame index out of range (the video has {self.num_frames} frames)")
        wanted = self.stamps_of(indices)
        unique = np.unique(wanted)
        found = self._decode(unique, from_start=False)
        if len(found) < len(unique):  # a seek that landed late (a file without a usable index)
            found.update(self._decode(np.array([s for s in unique if s not in found]), from_start=True))
        missing = [int(s) for s in unique if s not in found]
        if missing:
            raise VideoDecodeError(
                self.name, f"{len(missing)} of its frames could not be decoded (damaged data); remove or replace it"
            )
        return [found[int(stamp)] for stamp in wanted]

    def _decode(self, stamps: np.ndarray, from_start: bool) -> dict[int, np.ndarray]:
        """RGB frames at the sorted timestamps `stamps`. Decoding goes on from where the last
        call stopped while the next wanted frame lies before the next keyframe; otherwise it
        seeks to the keyframe before it (or, `from_start`, once to the first frame)."""
        wanted = set(stamps.tolist())
        found: dict[int, np.ndarray] = {}
        if from_start:
            self._frames, self._position = self._frames_from(int(self._stamps[0]), self._first_seek), None
        for stamp in stamps.tolist():
            if stamp in found:
                continue
            key, seek = self._key_before(stamp)
            if not from_start and (self._frames is None or stamp <= self._position or key > self._position):
                self._frames = self._frames_from(key, seek)
            for frame_stamp, frame in self._frames:
                self._position = frame_stamp
                if frame_stamp in wanted and frame_stamp not in found:
                    found[frame_stamp] = self._to_rgb(frame)
                if frame_stamp >= stamp:
                    break
            else:  # the end of the stream: whatever is left is missing
                self._frames = None
                break
        return found

    def _key_before(self, stamp: int) -> tuple[int, int]:
        """The last keyframe at or before `stamp`: (its presentation time, where to seek for it)."""
        at = np.searchsorted(self._keys, stamp, side="right") - 1
        return (int(self._keys[at]), int(self._key_seeks[at])) if at >= 0 else (int(self._stamps[0]), self._first_seek)

    def _frames_from(self, key: int, decoded_at: int):
        """(timestamp, frame) of the decoded frames from the keyframe shown at `key` (decoded at
        `decoded_at`) on. Containers seek by either timestamp (mp4 by presentation, avi by
        decoding): the first that lands on that keyframe or before it is used, else the start."""
        import av

        for seek in (key, decoded_at, self._first_seek):
            self._container.seek(seek, stream=self._stream, backward=True)
            packets = self._container.demux(self._stream)
            first = next(packets, None)
            landed = None if first is None else first.pts if first.pts is not None else first.dts
            if landed is not None and landed <= key:
                break
        for packet in itertools.chain([first], packets):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                continue  # a damaged packet: its frame is reported missing if it was wanted
            for frame in decoded:
                frame_stamp = frame.pts if frame.pts is not None else frame.dts
                if frame_stamp is not None:
                    yield frame_stamp, frame

    def _to_rgb(self, frame) -> np.ndarray:
        width, height = frame.width, frame.height
        aspect = self._stream.sample_aspect_ratio
        if aspect is not None and aspect > 0 and aspect != 1:
            width = max(1, round(width * aspect))
        rgb = frame.to_ndarray(
            format="rgb24", width=width, height=height, src_color_range=frame.color_range or None, threads=1
        )
        turns = round((frame.rotation or 0) / 90) % 4
        return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb

    def close(self) -> None:
        container, self._container = getattr(self, "_container", None), None
        if container is not None:
            container.close()

    def __enter__(self) -> "PyAVVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _video_stream(container, name: str):
    """The stream decord 0.6 reads (FFmpeg 4.1's best-stream rule, which caches made before
    SALT 0.2 were decoded by): cover pictures last, then the highest bit rate; ties go to the
    first stream. FFmpeg 8's rule ranks the default stream first, which picks another stream
    in an mp4 with several video tracks."""
    import av

    kind = container.format.name
    if kind.endswith("_pipe") or kind == "image2":  # FFmpeg reads a picture as a one-frame video
        raise VideoDecodeError(
            name, f"not a decodable video: a still image ({kind.removesuffix('_pipe')}); remove it from the data list"
        )
    videos = list(container.streams.video)
    if not videos:
        holds = "only audio" if container.streams.audio else "no streams" if not container.streams else "no video"
        raise VideoDecodeError(name, f"no video stream (the file holds {holds}); remove it from the data list")
    decodable = [stream for stream in videos if stream.codec_context is not None]
    if not decodable:
        raise VideoDecodeError(
            name, f"no decoder for its video codec ({videos[0].codec.name}) in this FFmpeg build; re-encode it (H.264)"
        )
    picture = av.stream.Disposition.attached_pic
    return max(decodable, key=lambda stream: (not stream.disposition & picture, stream.bit_rate or 0))


def unreadable(err: Exception) -> str:
    """What an open that failed means, without the decoder's own words."""
    import av

    if isinstance(err, (av.error.InvalidDataError, av.error.EOFError)):
        return "not a decodable video (cut short, damaged, or not a video file); remove or replace it"
    if isinstance(err, av.error.FileNotFoundError):
        return "file not found; check the path in the data list"
    if isinstance(err, av.error.PermissionError):
        return "cannot be read (permission denied); fix its permissions"
    return f"not a decodable video ({first_line(err)}); remove or replace it"
