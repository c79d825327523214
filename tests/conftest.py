"""Shared fixtures: data made once per session, in the test, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from salt.models import build_encoder, save_encoder
from salt.video.synthetic import SyntheticSpec, make_synthetic, write_mp4

# Small geometry shared by the suite: 16 frames step 4 at 64² from 80² videos.
SYNTHETIC_SPEC = SyntheticSpec(videos=64, seed=7, size=80, frames=16, frame_step=4, tubelet=2)


@pytest.fixture(scope="session", autouse=True)
def node_index_dir(tmp_path_factory) -> Path:
    """The suite's own folder for the node-shared cache indexes (salt/latents/node_index.py),
    inherited by every process a test starts."""
    folder = tmp_path_factory.mktemp("node-index")
    os.environ["SALT_INDEX_DIR"] = str(folder)
    return folder


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


@pytest.fixture(scope="session")
def rope_student_run(tmp_path_factory, synthetic_set) -> dict[str, Path]:
    """The demo's student config (configs/student/vit_tiny.yaml, RoPE) trained 2 steps, with no
    geometry given, from the cache of a V-JEPA 2 trainer checkpoint (patch 16, 8 frames at 32²):
    {"teacher", "cache", "run"}. Checkpoints at steps 1 and 2; `run/student.pt` at the end."""
    from salt.cache_latents import CacheJob, run_cache
    from salt.training.student import run_student
    from tests.test_rope import vjepa2_checkpoint

    root = tmp_path_factory.mktemp("rope_student")
    torch.manual_seed(0)
    teacher = build_encoder("vit_tiny_rope", embed_dim=64, depth=2, num_heads=4, img_size=32, num_frames=8)
    torch.save(vjepa2_checkpoint({k: v.detach() for k, v in teacher.state_dict().items()}), root / "vjepa2.pt")
    job = CacheJob(
        teacher=str(root / "vjepa2.pt"),
        checkpoint_key="target_encoder",
        arch={"num_heads": 4},
        data=str(synthetic_set / "train.csv"),
        out=str(root / "cache"),
        views=1,
        max_videos=4,
        shard_videos=2,
        workers=0,
        precision="fp32",
        frames=8,
        size=32,
        progress=False,
    )
    run_cache(job)
    sets = [f"cache.path={root / 'cache'}", f"run.out_dir={root / 'run'}", "encoder.overrides.depth=1"]
    sets += ["predictor.depth=1", "data.batch_size=4", "data.workers=0", "optim.steps=2", "optim.warmup_steps=1"]
    sets += ["run.checkpoint_every=1", "run.log_every=1", "run.progress=false"]
    group = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    inherited = {k: os.environ[k] for k in group if k in os.environ}
    run_student(str(Path(__file__).resolve().parents[1] / "configs/student/vit_tiny.yaml"), sets)
    for key in group:  # this process's group of one: `salt` children must not inherit its port
        if key not in inherited:
            os.environ.pop(key, None)
    return {"teacher": root / "vjepa2.pt", "cache": root / "cache", "run": root / "run"}
