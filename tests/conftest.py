"""Shared fixtures: data made once per session, in the test, never downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from salt.models import build_encoder, save_encoder
from salt.video.synthetic import SyntheticSpec, make_synthetic, write_mp4

# Small geometry shared by the suite: 16 frames step 4 at 64² from 80² videos.
SYNTHETIC_SPEC = SyntheticSpec(videos=64, seed=7, size=80, frames=16, frame_step=4, tubelet=2)


@pytest.fixture(scope="session")
def synthetic_set(tmp_path_factory) -> Path:
    """A small synthetic data set (64 videos) shared by every test that needs real videos."""
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic(out, SYNTHETIC_SPEC)
    return out


@pytest.fixture(scope="session")
def teacher(tmp_path_factory) -> Path:
    """A tiny random teacher (vit_tiny, depth 2, 8 frames at 32²) for the cache tests."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_encoder(path, build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2), kind="teacher")
    return path


@pytest.fixture
def make_video(tmp_path):
    """Write a short mp4 of moving noise-free gradients: `make_video(name, frames, h, w)`."""

    def _make(name: str = "clip.mp4", frames: int = 20, height: int = 48, width: int = 64, **kwargs) -> Path:
        t = np.arange(frames)[:, None, None]
        y = np.arange(height)[None, :, None]
        x = np.arange(width)[None, None, :]
        shape = (frames, height, width)
        channels = [(x * 4 + t * 9) % 256, (y * 5 + t * 3) % 256, (x + y + t * 17) % 256]
        image = np.stack([np.broadcast_to(c, shape) for c in channels], axis=-1)
        path = tmp_path / name
        write_mp4(path, image.astype(np.uint8), **kwargs)
        return path

    return _make
