"""The latent cache: the only contract between the teacher process and student training.

Writers: LatentCodec + encode_frames -> write_wds_shard / ZarrCacheWriter.write_shard, then a
Manifest written with write_json_atomic. Readers: open_cache -> LatentCache (get, stream),
verify, apply_target_norm. The format is docs/cache_format.md.
"""

from salt.latents.basis import BASIS_NAME, BasisFit, TargetBasis
from salt.latents.codecs import (
    DEFAULT_COMPRESSOR,
    FRAME_EXT,
    LatentCodec,
    StoredLatents,
    crc32,
    decode_frames,
    decode_meta,
    encode_frames,
    encode_meta,
    frames_decoder_id,
    roundtrip_frames,
    sample_checksum,
)
from salt.latents.errors import CacheError, CacheWriteError
from salt.latents.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    WDS_DIR,
    ZARR_DIR,
    Manifest,
    ShardRecord,
    load_manifest,
    write_json_atomic,
)
from salt.latents.order import EpochOrder, SampleReader
from salt.latents.reader import (
    LatentCache,
    apply_target_norm,
    first_views,
    load_basis,
    normalise_targets,
    open_cache,
    verify,
)
from salt.latents.samples import CacheSample, EncodedSample, Problem, ShardId, parse_key, sample_key
from salt.latents.wds import ShardFiles, WdsShardReader, complete_shard_files, split_members, write_wds_shard
from salt.latents.zarr_store import ZarrCacheReader, ZarrCacheWriter

__all__ = [
    "BASIS_NAME",
    "BasisFit",
    "CacheError",
    "CacheSample",
    "CacheWriteError",
    "DEFAULT_COMPRESSOR",
    "EncodedSample",
    "EpochOrder",
    "FORMAT_VERSION",
    "FRAME_EXT",
    "LatentCache",
    "LatentCodec",
    "MANIFEST_NAME",
    "Manifest",
    "Problem",
    "SampleReader",
    "ShardFiles",
    "ShardId",
    "ShardRecord",
    "StoredLatents",
    "TargetBasis",
    "WDS_DIR",
    "WdsShardReader",
    "ZARR_DIR",
    "ZarrCacheReader",
    "ZarrCacheWriter",
    "apply_target_norm",
    "complete_shard_files",
    "crc32",
    "decode_frames",
    "decode_meta",
    "encode_frames",
    "encode_meta",
    "first_views",
    "frames_decoder_id",
    "load_basis",
    "load_manifest",
    "normalise_targets",
    "open_cache",
    "parse_key",
    "roundtrip_frames",
    "sample_checksum",
    "sample_key",
    "split_members",
    "verify",
    "write_json_atomic",
    "write_wds_shard",
]
