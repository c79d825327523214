"""One decoder interface for every reader of videos (process 1, probes, check-data, loaders, Ray).

`open_video(source, name, decoder)` returns an open video with `num_frames`, `fps`, `codec`,
`read(indices)` (a list of uint8 RGB `[H, W, 3]` frames; any order, repeats allowed) and
`close()` (also as a context manager); `decode_frames(source, indices)` opens, reads and stacks.

Decoders, by name (`view.decoder`, `--decoder`):
- `pyav` (the default): PyAV's wheels bundle FFmpeg 8 with dav1d on Linux x86_64/aarch64 and
  macOS arm64; decodes every codec of today's downloads (AV1 included); the fastest here
  (docs/results.md, "Decoders").
- `decord`: whatever `import decord` provides (decord2, the maintained fork: `pip install
  decord2`; or decord 0.6.0 on x86_64). A file it cannot open or copy out (AV1 in 0.6.0, some
  frame widths) is decoded by PyAV instead.

Both give a frame index the same meaning (salt/video/pyav_decoder.py), and on H.264 the same
pixels; a cache records which decoder made it (`decoder_version`).
"""

from __future__ import annotations

import io
import os

import numpy as np

from salt.video.errors import VideoDecodeError, check_file, first_line

DECODERS = ("pyav", "decord")
DEFAULT_DECODER = "pyav"
Source = str | os.PathLike | bytes


def open_video(source: Source, name: str | None = None, decoder: str = DEFAULT_DECODER, threads: int = 1):
    """An open video (see the module's docstring); `VideoDecodeError` names what is wrong."""
    name = source_name(source, name)
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise VideoDecodeError(name, "empty (0 bytes); remove it from the data list or replace it")
    else:
        check_file(source, name)
        source = str(source)
    if decoder == "decord":
        return DecordVideo(source, name, threads)
    if decoder != "pyav":
        raise VideoDecodeError(name, f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
    from salt.video.pyav_decoder import PyAVVideo

    return PyAVVideo(source, name, threads)


def decode_frames(source: Source, indices=None, decoder: str = DEFAULT_DECODER) -> np.ndarray:
    """Frames at `indices` (all of them when None) as one uint8 array `[N, H, W, 3]`."""
    with open_video(source, decoder=decoder) as video:
        return np.stack(video.read(range(video.num_frames) if indices is None else indices))


def decoder_version(decoder: str = DEFAULT_DECODER) -> str:
    """What a cache records of the decoder that made its frames, e.g. 'pyav 18.1.0 (FFmpeg 8.1.2)'."""
    from salt.video.pyav_decoder import pyav_version

    if decoder == "decord":
        decord = _import_decord()
        return f"decord {decord.__version__}, else {pyav_version()}"
    return pyav_version()


def source_name(source: Source, name: str | None = None) -> str:
    if name is not None:
        return name
    return f"<{len(source)} bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def _import_decord():
    try:
        import decord
    except ImportError:
        raise VideoDecodeError(
            "decoder 'decord'", "not installed: pip install decord2 (or use the default decoder, pyav)"
        ) from None
    return decord


class DecordVideo:
    """decord's VideoReader behind the same interface; PyAV takes over what decord cannot read."""

    def __init__(self, source: str | bytes, name: str, threads: int = 1):
        decord = _import_decord()
        self.name, self._source, self._fallback, self.codec = name, source, None, None  # decord does not say
        try:
            handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
            self._reader = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=threads)
            self.num_frames, self.fps = len(self._reader), float(self._reader.get_avg_fps() or 0.0)
        except Exception:  # decord's own errors (e.g. AV1 in 0.6.0): PyAV reads it or says what is wrong
            self._use_pyav()
            return
        if self.num_frames < 1:
            self._use_pyav()

    def _use_pyav(self) -> None:
        from salt.video.pyav_decoder import PyAVVideo

        self._reader = None
        self._fallback = PyAVVideo(self._source, self.name)
        self.num_frames, self.fps, self.codec = self._fallback.num_frames, self._fallback.fps, self._fallback.codec

    def read(self, indices) -> list[np.ndarray]:
        if self._fallback is not None:
            return self._fallback.read(indices)
        unique, inverse = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
        try:
            decoded = self._reader.get_batch(unique.tolist()).asnumpy()
        except Exception as err:
            # decord 0.6 cannot copy out frames of some widths (1, 2, 24, 48 px: its row padding
            # breaks "DECORDArrayCopyFromTo"); PyAV decodes those files correctly.
            if "DECORDArrayCopyFromTo" not in str(err):
                raise VideoDecodeError(self.name, f"decoding frames failed ({first_line(err)})") from None
            self._use_pyav()
            return self._fallback.read(indices)
        return [decoded[row] for row in inverse]

    def close(self) -> None:
        self._reader = None
        if self._fallback is not None:
            self._fallback.close()

    def __enter__(self) -> "DecordVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
