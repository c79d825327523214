"""Broken videos, corrupt caches, bad checkpoints and misuse: each gets its exact outcome, in
bounded time, with a message that names the thing; nothing already done is lost."""

from __future__ import annotations

import errno
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import salt.cache_latents.local as local_engine
from salt.cache_latents import CacheJob, CacheWriteError, OutputLock, run_cache
from salt.latents import load_manifest, open_cache
from salt.models import build_encoder, fingerprint, save_encoder
from salt.video.isolated import IsolatedDecoder
from salt.video.synthetic import write_mp4
from tests.helpers import cache_args, salt

pytestmark = pytest.mark.timeout(600)  # the bound: nothing here may hang


def job(teacher: Path, data: Path, out: Path, **overrides) -> CacheJob:
    settings = dict(
        teacher=str(teacher),
        data=str(data),
        out=str(out),
        views=1,
        shard_videos=2,
        workers=0,
        batch_size=4,
        precision="fp32",
        progress=False,
        formats=("wds", "zarr"),
    )
    return CacheJob(**{**settings, **overrides})


# --------------------------------------------------------------------------------- videos
def test_bad_videos_are_skipped_and_recorded_or_handled(tmp_path, teacher, synthetic_set, monkeypatch):
    videos, good = tmp_path / "videos", sorted((synthetic_set / "videos").glob("*.mp4"))
    odd = videos / "dir with space é" / "vidéo ü.mp4"
    odd.parent.mkdir(parents=True)
    shutil.copy(good[0], videos / "good.mp4")
    shutil.copy(good[1], odd)
    shutil.copy(good[2], videos / "hang.mp4")  # the decoder stub hangs on this name
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "truncated.mp4").write_bytes(good[3].read_bytes()[: good[3].stat().st_size // 2])
    (videos / "random.mp4").write_bytes(np.random.default_rng(0).bytes(20_000))
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(videos / "image.png")
    (videos / "image.png").rename(videos / "image.mp4")
    rng = np.random.default_rng(1)
    write_mp4(videos / "short.mp4", rng.integers(0, 255, (5, 48, 48, 3), dtype=np.uint8))  # < one clip of 29 frames
    write_mp4(videos / "tiny 2x2.mp4", rng.integers(0, 255, (40, 2, 2, 3), dtype=np.uint8))
    write_mp4(
        videos / "tiny 1x1.mkv", rng.integers(0, 255, (40, 1, 1, 3), dtype=np.uint8), codec="ffv1", pix_fmt="yuv444p"
    )
    names = [
        "good.mp4",
        str(odd.relative_to(videos)),
        "hang.mp4",
        "empty.mp4",
        "truncated.mp4",
        "random.mp4",
        "image.mp4",
        "short.mp4",
        "tiny 2x2.mp4",
        "tiny 1x1.mkv",
        "missing.mp4",
    ]
    (videos / "list.csv").write_text("".join(f"{name} {i % 8}\n" for i, name in enumerate(names)))
    monkeypatch.setattr(
        local_engine, "IsolatedDecoder", functools.partial(IsolatedDecoder, "tests.faults.stubs:hang_on_marked")
    )

    run_cache(job(teacher, videos / "list.csv", tmp_path / "cache", decode_timeout=5.0, max_skipped=1.0))

    manifest = load_manifest(tmp_path / "cache")
    reasons = {Path(entry["path"]).name: entry["reason"] for entry in manifest.skipped}
    assert set(reasons) == {"hang.mp4", "empty.mp4", "truncated.mp4", "random.mp4", "image.mp4", "missing.mp4"}
    assert "longer than 5 s" in reasons["hang.mp4"] and "0 bytes" in reasons["empty.mp4"]
    assert "not found" in reasons["missing.mp4"]
    assert all("not a decodable video" in reasons[n] for n in ("truncated.mp4", "random.mp4", "image.mp4"))
    # Handled by the documented rules: a short video repeats its last frame; a tiny one is
    # cropped and upscaled; odd paths are just paths. decord 0.6 cannot copy out 1/2-px-wide
    # (or 24/48-px-wide) frames, so those are decoded with PyAV instead.
    kept = {
        names[s.video] for s in (open_cache(tmp_path / "cache").get(k) for k in open_cache(tmp_path / "cache").keys())
    }
    assert kept == {"good.mp4", str(odd.relative_to(videos)), "short.mp4", "tiny 2x2.mp4", "tiny 1x1.mkv"}


# --------------------------------------------------------------------------------- caches
@pytest.fixture(scope="module")
def healthy_cache(tmp_path_factory, teacher, synthetic_set) -> Path:
    out = tmp_path_factory.mktemp("healthy") / "cache"
    run_cache(job(teacher, synthetic_set / "train.csv", out, views=2, max_videos=6))
    return out


def member_offset(cache: Path, shard: str, member: str) -> tuple[int, int]:
    index = json.loads((cache / "wds" / f"{shard}.idx.json").read_text())
    offset, length, _ = index["members"][member]
    return offset, length


def corrupt(cache: Path, case: str) -> str:
    """Damage a copy of the cache; returns what the error message must name."""
    shard = load_manifest(cache).shards[1].name
    tar = cache / "wds" / f"{shard}.tar"
    if case == "truncated tar":
        offset, _ = member_offset(cache, shard, "v00000003k000.latents")
        tar.write_bytes(tar.read_bytes()[: offset + 10])
        return shard
    if case in ("flipped byte in latents", "flipped byte in frames"):
        member = "v00000002k001.latents" if "latents" in case else "v00000002k001.f03.jpg"
        offset, length = member_offset(cache, shard, member)
        data = bytearray(tar.read_bytes())
        data[offset + length // 2] ^= 0xFF
        tar.write_bytes(bytes(data))
        return "v00000002k001"
    if case == "deleted shard":
        tar.unlink()
        return shard
    manifest = json.loads((cache / "manifest.json").read_text())
    if case == "manifest with wrong dims":
        manifest["dim"] += 1
    elif case == "future format version":
        manifest["format_version"] = 99
    (cache / "manifest.json").write_text(json.dumps(manifest))
    return {"manifest with wrong dims": "dim", "future format version": "newer SALT"}[case]


CACHE_CASES = [
    "truncated tar",
    "flipped byte in latents",
    "flipped byte in frames",
    "deleted shard",
    "manifest with wrong dims",
    "future format version",
]


@pytest.mark.parametrize("case", CACHE_CASES)
def test_corrupt_cache_is_detected_naming_the_shard_or_key(tmp_path, healthy_cache, case):
    cache = tmp_path / "cache"
    shutil.copytree(healthy_cache, cache)
    named = corrupt(cache, case)
    result = salt("inspect", str(cache), "--verify", "--samples", "0", "--format", "wds")
    assert result.returncode == 1, result.stdout + result.stderr
    assert named in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_zarr_missing_chunk_is_detected_not_read_as_zeros(tmp_path, healthy_cache):
    cache = tmp_path / "cache"
    shutil.copytree(healthy_cache, cache)
    chunks = sorted(p for p in (cache / "cache.zarr" / "latents").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunks[0].unlink()
    result = salt("inspect", str(cache), "--verify", "--samples", "0", "--format", "zarr")
    assert result.returncode == 1 and "checksum mismatch" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("case", ["flipped byte in latents", "deleted shard"])
def test_student_stops_naming_the_sample_or_skips_and_counts(tmp_path, healthy_cache, case):
    cache = tmp_path / "cache"
    shutil.copytree(healthy_cache, cache)
    named = corrupt(cache, case)
    config = {
        "cache": {"path": str(cache), "format": "wds"},
        "geometry": {"frames": 8, "frame_step": 4, "size": 32},
        "data": {"batch_size": 4, "workers": 0},
        "encoder": {"arch": "vit_tiny", "overrides": {"depth": 1}},
        "predictor": {"width": 32, "depth": 1, "num_heads": 2},
        "optim": {"steps": 4, "warmup_steps": 1},
        "engine": {"precision": "fp32"},
        "run": {"out_dir": str(tmp_path / "run"), "progress": False, "log_every": 1},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    stopped = salt("train-student", "--config", str(tmp_path / "s.yaml"))
    assert stopped.returncode == 1 and named in stopped.stderr and "Traceback" not in stopped.stderr, stopped.stderr[
        -2000:
    ]
    shutil.rmtree(tmp_path / "run")
    skipped = salt("train-student", "--config", str(tmp_path / "s.yaml"), "--set", "cache.on_error=skip")
    assert skipped.returncode == 0, skipped.stderr[-2000:]
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and last["bad_videos"] == (1 if "flipped" in case else 4)


# ---------------------------------------------------------------------------- checkpoints
class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def bad_checkpoint(tmp_path: Path, teacher: Path, case: str) -> tuple[Path, list[str], str]:
    path = tmp_path / "bad.pt"
    if case == "code payload":
        torch.save({"encoder": Payload(tmp_path / "marker")}, path)
        return path, [], "nothing was executed"
    if case == "truncated file":
        path.write_bytes(teacher.read_bytes()[: teacher.stat().st_size // 2])
        return path, [], "bad.pt"
    if case == "missing block":
        checkpoint = torch.load(teacher, weights_only=True)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("blocks.0.")}
        checkpoint["fingerprint"] = fingerprint(checkpoint["state_dict"])  # edited, not damaged: its own hash fits
        torch.save(checkpoint, path)  # our format, its first block gone
        return path, [], "blocks.0."
    encoder = build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2)
    save_encoder(path, encoder, kind="teacher")
    return path, ["--arch", "embed_dim=192"], "embed_dim"


@pytest.mark.parametrize("case", ["code payload", "truncated file", "missing block", "arch that does not fit"])
def test_bad_checkpoint_is_refused_with_one_line(tmp_path, teacher, synthetic_set, case):
    path, extra, named = bad_checkpoint(tmp_path, teacher, case)
    result = salt(*cache_args(path, synthetic_set / "train.csv", tmp_path / "cache", *extra))
    assert result.returncode == 1 and named in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "marker").exists()  # the payload never ran
    assert not (tmp_path / "cache" / "manifest.json").exists()


# --------------------------------------------------------------------------------- misuse
def test_student_geometry_that_differs_from_the_cache_is_refused(tmp_path, healthy_cache):
    config = {
        "cache": {"path": str(healthy_cache)},
        "geometry": {"frames": 16, "frame_step": 4, "size": 32},
        "encoder": {"arch": "vit_tiny"},
        "run": {"out_dir": str(tmp_path / "run")},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    result = salt("train-student", "--config", str(tmp_path / "s.yaml"))
    assert result.returncode == 1 and "frames: config 16, cache 8" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_second_live_writer_is_refused(tmp_path, teacher, synthetic_set):
    out = tmp_path / "cache"
    lock = OutputLock(out / "locks" / "rank0-of-1.lock")
    lock.acquire()  # a live writer: this test process
    try:
        result = salt(*cache_args(teacher, synthetic_set / "train.csv", out))
    finally:
        lock.release()
    assert result.returncode == 1 and "rank0-of-1.lock" in result.stderr, result.stderr[-2000:]


def test_out_that_is_a_file_is_refused_and_kept(tmp_path, teacher, synthetic_set):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    result = salt(*cache_args(teacher, synthetic_set / "train.csv", out))
    assert result.returncode == 1 and "is a file, not a cache folder" in result.stderr, result.stderr[-2000:]
    assert out.read_text() == "keep me"


def test_out_over_another_teachers_cache_is_refused(tmp_path, healthy_cache, synthetic_set):
    cache = tmp_path / "cache"
    shutil.copytree(healthy_cache, cache)
    before = {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_encoder(other, build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2), kind="teacher")
    result = salt(*cache_args(other, synthetic_set / "train.csv", cache, views=2, videos=6))
    assert result.returncode == 1 and "--overwrite" in result.stderr, result.stderr[-2000:]
    assert {p: p.read_bytes() for p in cache.rglob("*") if p.is_file()} == before  # nothing lost


def test_resume_against_a_cache_of_another_teacher_is_refused(tmp_path, healthy_cache, synthetic_set):
    cache = tmp_path / "cache"
    shutil.copytree(healthy_cache, cache)
    config = {
        "cache": {"path": str(cache)},
        "geometry": {"frames": 8, "frame_step": 4, "size": 32},
        "data": {"batch_size": 4, "workers": 0},
        "encoder": {"arch": "vit_tiny", "overrides": {"depth": 1}},
        "predictor": {"width": 32, "depth": 1, "num_heads": 2},
        "optim": {"steps": 6, "warmup_steps": 1},
        "engine": {"precision": "fp32"},
        "run": {"out_dir": str(tmp_path / "run"), "progress": False, "checkpoint_every": 2},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    assert salt("train-student", "--config", str(tmp_path / "s.yaml"), "--set", "run.stop_at=2").returncode == 0
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_encoder(other, build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2), kind="teacher")
    assert (
        salt(*cache_args(other, synthetic_set / "train.csv", cache, "--overwrite", views=2, videos=6)).returncode == 0
    )
    result = salt("train-student", "--config", str(tmp_path / "s.yaml"), "--resume")
    assert result.returncode == 1 and "cache_teacher_fingerprint" in result.stderr, result.stderr[-2000:]


def test_full_disk_removes_the_partial_shard_and_the_rerun_resumes(tmp_path, teacher, synthetic_set, monkeypatch):
    from salt.latents import wds

    out, writes = tmp_path / "cache", {"bytes": 0}
    real_write = wds._HashingWriter.write

    def write(self, data):  # the disk fills up inside the third shard's tar
        writes["bytes"] += len(data)
        if len(list((out / "done").glob("*.json"))) >= 2 and writes["bytes"] > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(wds._HashingWriter, "write", write)
    with pytest.raises(
        CacheWriteError, match=r"writing shard \S+ failed: No space left on device.*run the same command again"
    ):
        run_cache(job(teacher, synthetic_set / "train.csv", out, views=2, max_videos=8, formats=("wds",)))
    assert not list((out / "wds").glob("*.tmp")), "the partial shard is removed"
    assert len(list((out / "done").glob("*.json"))) == 2 and not (out / "manifest.json").exists()
    monkeypatch.setattr(wds._HashingWriter, "write", real_write)
    run_cache(job(teacher, synthetic_set / "train.csv", out, views=2, max_videos=8, formats=("wds",)))
    assert open_cache(out).keys() == sorted(f"v{v:08d}k{k:03d}" for v in range(8) for k in range(2))
    assert salt("inspect", str(out), "--verify", "--samples", "0").returncode == 0
