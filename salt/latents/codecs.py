"""Byte encodings shared by both storage formats: latents, frames, meta and checksums.

The WebDataset writer and the Zarr writer both go through this module, so one codec
configuration (recorded once in the manifest) describes the bytes of either format.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numcodecs
import numpy as np
import simplejpeg
import torch
import torchvision
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, encode_jpeg, encode_png

from salt.latents.errors import CacheError

LatentDtype = Literal["fp16", "bf16", "int8"]
FramesCodec = Literal["jpeg", "png"]

# numpy has no bfloat16: bf16 latents are stored as their raw uint16 bit pattern (exact).
STORED_NUMPY_DTYPE: dict[str, np.dtype] = {
    "fp16": np.dtype("<f2"),
    "bf16": np.dtype("<u2"),
    "int8": np.dtype("i1"),
}
FRAME_EXT = {"jpeg": "jpg", "png": "png"}
INT8_MAX = 127

# Byte-shuffle groups the high and low bytes of fp16 values, which is what zstd can exploit;
# bit-shuffle was measured to do worse on fp16 latents (docs/method.md, "The cache").
DEFAULT_COMPRESSOR: dict[str, Any] = {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 1}
# Only codecs that the Zarr v3 core spec also names, so the Zarr store can use the native codec
# with the same parameters (see zarr_store.zarr_compressor).
SUPPORTED_COMPRESSORS = ("blosc", "zstd")
# The named compressors `salt cache-latents --codec` offers (None: stored uncompressed).
CODECS: dict[str, dict[str, Any] | None] = {
    "blosc-zstd": DEFAULT_COMPRESSOR,
    "blosc-lz4": {"id": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1},
    "zstd": {"id": "zstd", "level": 3},
    "none": None,
}


def crc32(data: bytes | memoryview, value: int = 0) -> int:
    """zlib's CRC-32 (stdlib, fast); `value` chains several buffers into one checksum."""
    return zlib.crc32(data, value) & 0xFFFFFFFF


@dataclass(frozen=True)
class StoredLatents:
    """Latents in their stored numpy form; `scales` (float32 [D]) only for int8."""

    values: np.ndarray
    scales: np.ndarray | None = None


@dataclass(frozen=True)
class LatentCodec:
    """Stored dtype + byte compressor for teacher latents [N, D]."""

    dtype: LatentDtype
    compressor: dict[str, Any] | None = field(default_factory=lambda: dict(DEFAULT_COMPRESSOR))

    def __post_init__(self) -> None:
        if self.dtype not in STORED_NUMPY_DTYPE:
            raise CacheError(f"latent dtype {self.dtype!r} is not one of {sorted(STORED_NUMPY_DTYPE)}")
        if self.compressor is not None:
            if self.compressor.get("id") not in SUPPORTED_COMPRESSORS:
                raise CacheError(
                    f"compressor {self.compressor!r} not supported; use id one of {SUPPORTED_COMPRESSORS} or None"
                )
            numcodecs.get_codec(dict(self.compressor))  # fail early on bad parameters

    @property
    def numpy_dtype(self) -> np.dtype:
        return STORED_NUMPY_DTYPE[self.dtype]

    def to_stored(self, latents: torch.Tensor) -> StoredLatents:
        """Cast (fp16/bf16) or quantise (int8, per-channel absmax) latents [N, D].

        Works in numpy: single-threaded and several times faster here than torch's
        OpenMP elementwise kernels when the CPU cores are shared with decoder workers.
        """
        if latents.ndim != 2:
            raise CacheError(f"latents must be [N, D], got shape {tuple(latents.shape)}")
        x = latents.detach().to("cpu", torch.float32).contiguous().numpy()
        if not np.isfinite(x).all():
            raise CacheError("latents contain NaN or inf; the teacher output is broken")
        if self.dtype == "fp16":
            with np.errstate(over="ignore"):  # overflow is reported below, with advice
                values = x.astype(np.float16)
            if not np.isfinite(values).all():
                raise CacheError(
                    f"latents overflow fp16 (max |x| = {np.abs(x).max():.4g}; fp16 overflows above 65504): use bf16"
                )
            return StoredLatents(values)
        if self.dtype == "bf16":
            # Round to nearest even on the float32 bits: the same bits as torch's .to(bfloat16)
            # for finite values (checked above), without a torch bf16 tensor.
            bits = x.view(np.uint32)
            rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16
            return StoredLatents(rounded.astype(np.uint16))
        # Per channel, not per token: a few outlier channels would otherwise crush the
        # resolution of every other channel of the token (docs/method.md).
        absmax = np.abs(x).max(axis=0)
        scales = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype("<f4")
        values = np.clip(np.rint(x / scales), -INT8_MAX, INT8_MAX).astype(np.int8)
        return StoredLatents(values, scales)

    def from_stored(self, values: np.ndarray, scales: np.ndarray | None = None) -> torch.Tensor:
        """float32 [N, D] from stored values (exact for fp16/bf16, dequantised for int8)."""
        values = np.ascontiguousarray(values)
        if self.dtype == "fp16":
            return torch.from_numpy(values.astype(np.float32))
        if self.dtype == "bf16":
            # bf16 is the top half of a float32: shifting the bits up is exact, one pass.
            return torch.from_numpy((values.astype(np.uint32) << 16).view(np.float32))
        if scales is None:
            raise CacheError("int8 latents need their per-channel scales")
        return torch.from_numpy(values.astype(np.float32) * np.asarray(scales, dtype=np.float32)[None, :])

    def to_tensors(self, stored: StoredLatents) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The stored values as a torch tensor of the stored width (fp16, bf16 or int8) and, for
        int8, the scales: half or a quarter of the float32 bytes to move to the device, where
        `dequantise` makes float32 of them, exactly as `from_stored`."""
        values = np.array(stored.values, dtype=self.numpy_dtype)  # a writable copy for torch
        if self.dtype == "bf16":
            return torch.from_numpy(values.view(np.int16)).view(torch.bfloat16), None
        if self.dtype == "int8":
            if stored.scales is None:
                raise CacheError("int8 latents need their per-channel scales")
            return torch.from_numpy(values), torch.from_numpy(np.array(stored.scales, dtype=np.float32))
        return torch.from_numpy(values), None

    def _compressor(self) -> numcodecs.abc.Codec | None:
        return None if self.compressor is None else numcodecs.get_codec(dict(self.compressor))

    def encode(self, stored: StoredLatents) -> dict[str, bytes]:
        """Member bytes: "latents" (compressed) and, for int8, "scales" (raw float32 LE)."""
        values = np.ascontiguousarray(stored.values, dtype=self.numpy_dtype)
        compressor = self._compressor()
        # Encode the array, not its bytes: blosc takes its shuffle width from the item size.
        fields = {"latents": values.tobytes() if compressor is None else bytes(compressor.encode(values))}
        if self.dtype == "int8":
            if stored.scales is None:
                raise CacheError("int8 latents need their per-channel scales")
            fields["scales"] = np.ascontiguousarray(stored.scales, dtype="<f4").tobytes()
        return fields

    def decode(self, fields: dict[str, bytes], shape: tuple[int, int]) -> StoredLatents:
        """Inverse of `encode`; raises CacheError when the bytes do not fit `shape`."""
        compressor = self._compressor()
        try:
            raw = fields["latents"] if compressor is None else compressor.decode(fields["latents"])
        except Exception as error:  # numcodecs raises RuntimeError/ValueError by codec
            raise CacheError(f"latents do not decode ({self.compressor}): {error}") from error
        expected = shape[0] * shape[1] * self.numpy_dtype.itemsize
        if len(raw) != expected:
            raise CacheError(f"latents decode to {len(raw)} bytes, {self.dtype} {shape} needs {expected}")
        # Read-only view of the decoded buffer: from_stored copies while converting anyway.
        values = np.frombuffer(raw, dtype=self.numpy_dtype).reshape(shape)
        scales = None
        if self.dtype == "int8":
            if "scales" not in fields:
                raise CacheError("int8 latents come without their scales member")
            scales = np.frombuffer(fields["scales"], dtype="<f4")
            if scales.shape != (shape[1],):
                raise CacheError(f"int8 scales hold {scales.size} values, expected {shape[1]}")
        return StoredLatents(values, scales)


def dequantise(values: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    """float32 latents [..., N, D] from `LatentCodec.to_tensors` output (batched: scales [..., D]),
    on whatever device they are: the same floats as `LatentCodec.from_stored`."""
    if scales is None:
        return values.float()
    return values.float() * scales.float().unsqueeze(-2)


def encode_frames(frames: np.ndarray, codec: FramesCodec, quality: int = 90) -> list[bytes]:
    """One JPEG (or PNG) per frame of uint8 [T, H, W, 3]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise CacheError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    # numpy transpose: torch's uint8 permute+contiguous was ~70x slower here on shared cores.
    chw = [torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1))) for frame in frames]
    if codec == "jpeg":
        return [bytes(t.numpy()) for t in encode_jpeg(chw, quality=quality)]
    if codec == "png":
        return [bytes(encode_png(t).numpy()) for t in chw]
    raise CacheError(f"frames codec {codec!r} is not 'jpeg' or 'png'")


def is_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8"


def decode_frames(encoded: list[bytes]) -> np.ndarray:
    """uint8 [T, H, W, 3] from `encode_frames` output (JPEG or PNG, told apart by magic bytes).

    JPEG frames go through libjpeg-turbo (simplejpeg) straight into one [T, H, W, 3] array: the
    fastest bit-exact decoder measured here (docs/results.md, `salt bench loader`), the same
    pixels as torchvision's decode_jpeg (tested), without the per-frame CHW tensors and the
    transpose-and-stack copy."""
    if not encoded:
        raise CacheError("a sample has no frames")
    if all(is_jpeg(data) for data in encoded):
        return _decode_jpeg_frames(encoded)
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in encoded]
    try:
        images = [decode_image(t, mode=ImageReadMode.RGB) for t in tensors]
    except (RuntimeError, ValueError) as error:
        raise CacheError(f"frames do not decode: {error}") from error
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1 or next(iter(shapes))[0] != 3:
        raise CacheError(f"frames decode to differing or non-RGB shapes {sorted(shapes)}")
    # numpy, not torch.stack/permute: those were 10-15x slower on uint8 on shared cores.
    return np.ascontiguousarray(np.stack([image.numpy() for image in images]).transpose(0, 2, 3, 1))


def _decode_jpeg_frames(encoded: list[bytes]) -> np.ndarray:
    try:
        shapes = [simplejpeg.decode_jpeg_header(data)[:2] for data in encoded]
        if len(set(shapes)) != 1:
            raise CacheError(f"frames decode to differing shapes {sorted(set(shapes))}")
        height, width = shapes[0]
        out = np.empty((len(encoded), height, width, 3), dtype=np.uint8)
        for index, data in enumerate(encoded):
            simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out[index])
    except ValueError as error:  # simplejpeg's error for corrupt or truncated data
        raise CacheError(f"frames do not decode: {error}") from error
    return out


def decode_jpeg_batch(encoded: list[list[bytes]], device: torch.device | str) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] on `device` from the JPEG frames of B samples, in one call.

    On a CUDA device the whole batch goes through nvJPEG (torchvision's batched GPU decode):
    the loader's CPU workers only read bytes. Its IDCT and chroma upsampling differ from
    libjpeg-turbo's, so pixels may differ from the CPU decode by decoder rounding (a few
    levels); elsewhere the frames are decoded on the CPU, exactly as `decode_frames`."""
    device = torch.device(device)
    if not encoded or not all(encoded):
        raise CacheError("a batch without frames")
    if device.type != "cuda":
        return torch.from_numpy(np.stack([decode_frames(frames) for frames in encoded])).to(device)
    flat = [data for frames in encoded for data in frames]
    if not all(is_jpeg(data) for data in flat):
        raise CacheError(
            "frames decoded on the GPU must be JPEG (this cache stores PNG frames): decode them in the workers"
        )
    try:
        images = decode_jpeg(
            [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in flat],
            mode=ImageReadMode.RGB,
            device=device,
        )
    except (RuntimeError, ValueError) as error:
        raise CacheError(f"frames do not decode on {device}: {error}") from error
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) != 1:
        raise CacheError(f"frames decode to differing shapes {sorted(shapes)}")
    _, height, width = next(iter(shapes))
    return torch.stack(images).view(len(encoded), -1, 3, height, width).permute(0, 1, 3, 4, 2).contiguous()


def roundtrip_frames(frames: np.ndarray, codec: FramesCodec, quality: int = 90) -> tuple[list[bytes], np.ndarray]:
    """Encode frames and decode them again: the teacher must see the decoded frames, which
    are exactly what a student gets back from the cache."""
    encoded = encode_frames(frames, codec, quality)
    return encoded, decode_frames(encoded)


def frames_decoder_id() -> str:
    """The decoder build a student needs to get the teacher's exact pixels back."""
    return (
        f"simplejpeg-{simplejpeg.__version__} (libjpeg-turbo, JPEG) "
        f"/ torchvision-{torchvision.__version__} (libpng, PNG); CPU"
    )


def encode_meta(meta: dict[str, Any]) -> bytes:
    """Canonical UTF-8 JSON (sorted keys), identical in both formats."""
    try:
        return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise CacheError(f"sample meta is not JSON-able: {error}") from error


def decode_meta(data: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CacheError(f"sample meta is not valid JSON: {error}") from error
    if not isinstance(meta, dict):
        raise CacheError("sample meta is not a JSON object")
    return meta


def sample_checksum(stored: StoredLatents, frames: list[bytes], meta_bytes: bytes) -> int:
    """CRC-32 over the stored latents, scales, frames and meta of one sample (Zarr format).

    Zarr returns fill values for a missing chunk instead of failing, so a checksum written
    after the data is what tells a lost chunk from real zeros.
    """
    value = crc32(np.ascontiguousarray(stored.values).view(np.uint8).reshape(-1))
    if stored.scales is not None:
        value = crc32(np.ascontiguousarray(stored.scales, dtype="<f4").tobytes(), value)
    for data in frames:
        value = crc32(data, value)
    return crc32(meta_bytes, value)
