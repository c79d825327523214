"""Encoder, predictor and checkpoints (save, safe load, V-JEPA / VideoMAE import).

Names are imported lazily: the size registry (archs.py) needs no torch, so `salt models` and
config checks answer without importing torch and timm.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ARCH_KEYS": "archs",
    "ARCHS": "archs",
    "DEFAULT_ARCH": "archs",
    "complete_arch": "archs",
    "count_params": "archs",
    "resolve_arch": "archs",
    "token_grid": "archs",
    "FORMAT": "checkpoint",
    "FORMAT_VERSION": "checkpoint",
    "fingerprint": "checkpoint",
    "load_encoder": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_encoder": "checkpoint",
    "CheckpointError": "errors",
    "Predictor": "predictor",
    "VideoViT": "vit",
    "build_encoder": "vit",
    "position_table": "vit",
    "sincos_3d_table": "vit",
    "sinusoid_1d_table": "vit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'salt.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"salt.models.{_EXPORTS[name]}"), name)
