"""The latent cache: the only contract between the teacher process and student training.

Writers: LatentCodec + encode_frames -> write_wds_shard / ZarrCacheWriter.write_shard, then a
Manifest written with write_json_atomic. Readers: open_cache -> LatentCache (get, stream),
EpochOrder + SampleReader (training), verify, student_targets. The format is docs/cache_format.md.

Reading, by job: `reader` (open_cache, LatentCache), `index` (the sample numbering from the
shards alone), `node_index` (what a reader needs of a manifest, one file per node), `sources`
(one per stored format: WebDataset tars, the Zarr store), `streaming` (split across readers,
resume, read-ahead), `order` (the global training order), `targets` (normalisation, basis,
student_targets), `verification` (verify).

Names are imported lazily (on first use), so a module that needs one small part, such as
`salt.latents.storage` for the checkpoint loader, does not load the codecs' numcodecs and
simplejpeg or zarr: the GPU scripts run on a machine without them (benchmarks/gpu_bench.py).
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
    "SampleIndex": "index",
    "ShardTable": "index",
    "reader_manifest": "node_index",
    "EpochOrder": "order",
    "SampleReader": "order",
    "LatentCache": "reader",
    "first_views": "reader",
    "open_cache": "reader",
    "SampleDecoder": "sources",
    "WdsSource": "sources",
    "ZarrSource": "sources",
    "apply_target_norm": "targets",
    "load_basis": "targets",
    "normalise_targets": "targets",
    "student_targets": "targets",
    "verify": "verification",
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


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
