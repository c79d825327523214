"""Video input: sources, decoding (isolated), replayable views, the synthetic data set.

Names are imported lazily: listing or checking videos (`salt check-data`) needs no torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VideoDecodeError": "errors",
    "decode_views": "decode",
    "replay_view": "decode",
    "DECODERS": "decoders",
    "decode_frames": "decoders",
    "decoder_version": "decoders",
    "open_video": "decoders",
    "IsolatedDecoder": "isolated",
    "VideoRecord": "sources",
    "VideoSourceError": "sources",
    "list_folder": "sources",
    "load_records": "sources",
    "read_csv": "sources",
    "ViewConfig": "views",
    "ViewParams": "views",
    "render_view": "views",
    "sample_view": "views",
    "to_model_input": "views",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'salt.video' has no attribute {name!r}")
    return getattr(importlib.import_module(f"salt.video.{_EXPORTS[name]}"), name)
