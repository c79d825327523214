"""Every file the project writes has the mode the umask gives any new file (not mkstemp's 0600),
so a cache or an encoder shared on a cluster is readable by colleagues."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from salt.cache_latents import CacheJob, run_cache
from salt.latents.manifest import write_bytes_atomic, write_json_atomic
from salt.models import build_encoder, save_encoder


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    saved = os.umask(request.param)
    yield request.param
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_and_checkpoints_follow_the_umask(tmp_path, umask):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_bytes_atomic(tmp_path / "b.bin", b"x")
    write_bytes_atomic(tmp_path / "c.bin", b"x", exclusive=True)
    save_encoder(tmp_path / "e.pt", build_encoder("vit_tiny", img_size=32, num_frames=8, depth=1), kind="student")
    save_encoder(
        tmp_path / "e.safetensors", build_encoder("vit_tiny", img_size=32, num_frames=8, depth=1), kind="student"
    )
    assert {p.name: mode(p) for p in tmp_path.iterdir()} == {
        name: 0o666 & ~umask for name in ("a.json", "b.bin", "c.bin", "e.pt", "e.safetensors")
    }


def test_every_file_of_a_cache_follows_the_umask(tmp_path, teacher, synthetic_set):
    umask = 0o027
    saved = os.umask(umask)
    out = tmp_path / "cache"
    try:
        run_cache(
            CacheJob(
                teacher=str(teacher),
                data=str(synthetic_set / "train.csv"),
                out=str(out),
                views=1,
                max_videos=2,
                shard_videos=1,
                workers=0,
                batch_size=2,
                precision="fp32",
                progress=False,
                formats=("wds",),
            )
        )
    finally:
        os.umask(saved)
    files = {str(p.relative_to(out)): mode(p) for p in out.rglob("*") if p.is_file()}
    assert {"manifest.json", "cache_settings.json"} <= set(files) and any(f.endswith(".idx.json") for f in files)
    assert files == {name: 0o666 & ~umask for name in files}
    assert {mode(p) for p in out.rglob("*") if p.is_dir()} == {0o777 & ~umask}
