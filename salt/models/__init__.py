"""Encoder, predictor and checkpoints (save, safe load, V-JEPA / VideoMAE import)."""

from salt.models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    fingerprint,
    load_encoder,
    read_checkpoint,
    save_encoder,
)
from salt.models.predictor import Predictor
from salt.models.vit import (
    ARCH_KEYS,
    ARCHS,
    DEFAULT_ARCH,
    VideoViT,
    build_encoder,
    complete_arch,
    count_params,
    position_table,
    resolve_arch,
    sincos_3d_table,
    sinusoid_1d_table,
    token_grid,
)

__all__ = [
    "ARCH_KEYS",
    "ARCHS",
    "DEFAULT_ARCH",
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "Predictor",
    "VideoViT",
    "build_encoder",
    "complete_arch",
    "count_params",
    "fingerprint",
    "load_encoder",
    "position_table",
    "read_checkpoint",
    "resolve_arch",
    "save_encoder",
    "sincos_3d_table",
    "sinusoid_1d_table",
    "token_grid",
]
