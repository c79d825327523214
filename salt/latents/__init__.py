"""The latent cache: the only contract between the teacher process and student training.

Writers: LatentCodec + encode_frames -> write_wds_shard / ZarrCacheWriter.write_shard, then a
Manifest written with write_json_atomic. Readers: open_cache -> LatentCache (get, stream),
verify, apply_target_norm. The format is docs/cache_format.md.

Names are imported lazily: a storage path or an error class needs no torch (`salt --help`,
`salt check-data` and one-line refusals stay quick).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BASIS_NAME": "basis",
    "BasisFit": "basis",
    "TargetBasis": "basis",
    "DEFAULT_COMPRESSOR": "codecs",
    "FRAME_EXT": "codecs",
    "LatentCodec": "codecs",
    "StoredLatents": "codecs",
    "crc32": "codecs",
    "decode_frames": "codecs",
    "decode_meta": "codecs",
    "encode_frames": "codecs",
    "encode_meta": "codecs",
    "frames_decoder_id": "codecs",
    "roundtrip_frames": "codecs",
    "sample_checksum": "codecs",
    "CacheError": "errors",
    "CacheWriteError": "errors",
    "FORMAT_VERSION": "manifest",
    "MANIFEST_NAME": "manifest",
    "WDS_DIR": "manifest",
    "ZARR_DIR": "manifest",
    "Manifest": "manifest",
    "ShardRecord": "manifest",
    "load_manifest": "manifest",
    "write_json_atomic": "manifest",
    "LatentCache": "reader",
    "apply_target_norm": "reader",
    "first_views": "reader",
    "load_basis": "reader",
    "normalise_targets": "reader",
    "open_cache": "reader",
    "verify": "reader",
    "CacheSample": "samples",
    "EncodedSample": "samples",
    "Problem": "samples",
    "ShardId": "samples",
    "parse_key": "samples",
    "sample_key": "samples",
    "ShardFiles": "wds",
    "WdsShardReader": "wds",
    "complete_shard_files": "wds",
    "split_members": "wds",
    "write_wds_shard": "wds",
    "ZarrCacheReader": "zarr_store",
    "ZarrCacheWriter": "zarr_store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'salt.latents' has no attribute {name!r}")
    return getattr(importlib.import_module(f"salt.latents.{_EXPORTS[name]}"), name)
