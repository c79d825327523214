"""`salt cache-latents`: a tiny teacher over the session's synthetic videos."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from salt.cache_latents import CacheJob, CacheWriteError, OutputLock, plan_missing, run_cache
from salt.latents import CacheError, ShardId, open_cache
from salt.models import build_encoder, save_encoder
from salt.video import replay_view, to_model_input
from salt.video.views import ViewParams

REPO = Path(__file__).resolve().parent.parent


def job(teacher, data, out, **kwargs) -> CacheJob:
    settings = dict(
        teacher=str(teacher),
        data=str(data),
        out=str(out),
        views=2,
        max_videos=6,
        shard_videos=2,
        workers=0,
        batch_size=4,
        precision="fp32",
        progress=False,
    )
    settings.update(kwargs)
    return CacheJob(**settings)


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_plan_covers_missing_rectangles():
    assert plan_missing(5, 2, 2, []) == [ShardId(0, 2, 0, 2), ShardId(2, 4, 0, 2), ShardId(4, 5, 0, 2)]
    done = [ShardId(0, 2, 0, 2), ShardId(2, 4, 0, 1)]
    assert plan_missing(6, 3, 2, done) == [ShardId(0, 2, 2, 3), ShardId(2, 4, 1, 3), ShardId(4, 6, 0, 3)]
    assert plan_missing(3, 1, 4, [ShardId(0, 2, 0, 1)]) == [ShardId(2, 3, 0, 1)]  # more videos later


def test_both_formats_hold_identical_samples_and_the_teachers_latents(tmp_path, teacher, synthetic_set):
    manifest_path = run_cache(job(teacher, synthetic_set / "train.csv", tmp_path / "c", formats=("wds", "zarr")))
    manifest = json.loads(manifest_path.read_text())
    assert manifest["sample_count"] == 12 and manifest["grid"] == [4, 2, 2] and manifest["dim"] == 128
    wds, zarr = open_cache(tmp_path / "c", format="wds"), open_cache(tmp_path / "c", format="zarr")
    assert wds.keys() == zarr.keys() and len(wds) == 12
    encoder, _ = __import__("salt.models", fromlist=["load_encoder"]).load_encoder(teacher)
    for key in wds.keys():
        a, b = wds.get(key), zarr.get(key)
        np.testing.assert_array_equal(a.frames, b.frames)
        torch.testing.assert_close(a.latents, b.latents, rtol=0, atol=0)
        assert a.meta == b.meta
        # The stored latents are the teacher's output on the decoded stored frames (fp16-rounded).
        with torch.no_grad():
            expected = encoder(to_model_input(torch.from_numpy(a.frames)[None]))[0]
        torch.testing.assert_close(a.latents, expected.half().float(), rtol=0, atol=2e-3)
    # Frames rebuilt from the source video with the sample's ViewParams match up to JPEG error.
    sample = wds.get(wds.keys()[3])
    params = ViewParams.from_dict(sample.meta["view_params"])
    rebuilt = replay_view(sample.meta["source"], params)
    assert np.abs(rebuilt.astype(np.float32) - sample.frames.astype(np.float32)).mean() < 3.0


def test_compiled_teacher_writes_the_eager_teachers_latents(tmp_path, teacher, synthetic_set):
    """--compile: torch.compile with static shapes (12 views in batches of 5: the last batch is
    padded, its padding dropped). The same samples and frames; latents equal up to fp32 kernel
    rounding, well inside fp16 storage."""
    eager = run_cache(job(teacher, synthetic_set / "train.csv", tmp_path / "eager", batch_size=5))
    compiled = run_cache(job(teacher, synthetic_set / "train.csv", tmp_path / "compiled", batch_size=5, compile=True))
    a, b = open_cache(eager.parent), open_cache(compiled.parent)
    assert a.keys() == b.keys() and len(a) == 12
    for key in a.keys():
        x, y = a.get(key), b.get(key)
        np.testing.assert_array_equal(x.frames, y.frames)
        torch.testing.assert_close(y.latents, x.latents, rtol=2e-3, atol=2e-3)  # fp16 storage: 1-ulp flips at most
    from click.testing import CliRunner

    from salt.cli import main

    assert "--compile" in CliRunner().invoke(main, ["cache-latents", "--help"]).output


def test_adding_views_keeps_old_samples_byte_identical(tmp_path, teacher, synthetic_set):
    out = tmp_path / "c"
    run_cache(job(teacher, synthetic_set / "train.csv", out, views=1))
    before = tree_digest(out / "wds")
    run_cache(job(teacher, synthetic_set / "train.csv", out, views=3))
    after = tree_digest(out / "wds")
    assert all(after[name] == digest for name, digest in before.items())
    cache = open_cache(out)
    assert len(cache) == 18 and json.loads((out / "manifest.json").read_text())["views"] == 3
    assert sorted({k[-3:] for k in cache.keys()}) == ["000", "001", "002"]
    # The cache grew as views 0..0, then 1..2: the first view alone is a set of whole shards,
    # the first two are not (view 1 shares its shards with view 2).
    first = open_cache(out, views=1)
    assert len(first) == 6 and {k[-3:] for k in first.keys()} == {"000"}
    assert {s.view for s in first.stream(seed=0, epoch=0)} == {0}
    with pytest.raises(CacheError, match="views 1..2 together"):
        open_cache(out, views=2)
    with pytest.raises(CacheError, match="fewer than 4 views"):
        open_cache(out, views=4)


def test_broken_videos_are_skipped_and_recorded(tmp_path, teacher, synthetic_set):
    lines = (synthetic_set / "train.csv").read_text().splitlines()[:3]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    csv = tmp_path / "data.csv"
    csv.write_text(
        "".join(f"{synthetic_set / line}\n" for line in lines[:2]) + f"{broken} 1\n" + f"{synthetic_set / lines[2]}\n"
    )
    manifest = json.loads(run_cache(job(teacher, csv, tmp_path / "c", max_skipped=0.25)).read_text())  # 1 of 4 skipped
    assert manifest["sample_count"] == 6
    assert [(s["video"], s["path"]) for s in manifest["skipped"]] == [(2, str(broken))]
    assert "not a decodable video" in manifest["skipped"][0]["reason"]


def test_other_teacher_is_refused_unless_overwrite(tmp_path, teacher, synthetic_set):
    out = tmp_path / "c"
    run_cache(job(teacher, synthetic_set / "train.csv", out, max_videos=2))
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    save_encoder(other, build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2), kind="teacher")
    with pytest.raises(CacheWriteError, match="teacher_fingerprint"):
        run_cache(job(other, synthetic_set / "train.csv", out, max_videos=2))
    run_cache(job(other, synthetic_set / "train.csv", out, max_videos=2, overwrite=True))
    assert json.loads((out / "manifest.json").read_text())["teacher"]["fingerprint"] != ""


def test_second_live_writer_refused_and_stale_lock_taken_over(tmp_path):
    lock_path = tmp_path / "locks" / "rank0-of-1.lock"
    first = OutputLock(lock_path)
    first.acquire()
    with pytest.raises(CacheWriteError, match=f"pid {os.getpid()}"):
        OutputLock(lock_path).acquire()
    first.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": dead.pid, "started": 0}))
    taker = OutputLock(lock_path)
    taker.acquire()  # the owner is gone: the stale lock is taken over
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    taker.release()


def test_two_ranks_then_merge_equal_one_rank(tmp_path, teacher, synthetic_set):
    single = run_cache(job(teacher, synthetic_set / "train.csv", tmp_path / "one"))
    assert run_cache(job(teacher, synthetic_set / "train.csv", tmp_path / "two", rank=1, world_size=2)) is None
    merged = run_cache(job(teacher, synthetic_set / "train.csv", tmp_path / "two", rank=0, world_size=2))
    a, b = open_cache(tmp_path / "one"), open_cache(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a.keys():
        x, y = a.get(key), b.get(key)
        np.testing.assert_array_equal(x.frames, y.frames)
        torch.testing.assert_close(x.latents, y.latents, rtol=0, atol=2e-3)
    assert json.loads(single.read_text())["sample_count"] == json.loads(merged.read_text())["sample_count"]


def test_vjepa_checkpoint_as_teacher(tmp_path, teacher, synthetic_set):
    from salt.models import load_encoder, position_table

    encoder, _ = load_encoder(teacher)
    state = {f"module.backbone.{k}": v for k, v in encoder.state_dict().items()}
    state["module.backbone.pos_embed"] = position_table("sincos3d", 128, (4, 2, 2))[None]  # V-JEPA stores its table
    vjepa = tmp_path / "vjepa.pth.tar"
    torch.save({"target_encoder": state, "epoch": 3}, vjepa)
    ours = run_cache(job(teacher, synthetic_set / "train.csv", tmp_path / "ours", max_videos=2, views=1))
    theirs = run_cache(
        job(
            vjepa,
            synthetic_set / "train.csv",
            tmp_path / "vjepa",
            max_videos=2,
            views=1,
            arch={"num_heads": 4, "img_size": 32, "num_frames": 8},
        )
    )
    a, b = open_cache(ours.parent), open_cache(theirs.parent)
    for key in a.keys():
        torch.testing.assert_close(a.get(key).latents, b.get(key).latents, rtol=0, atol=0)


def test_video_shards_as_input(tmp_path, teacher, synthetic_set):
    from salt.video.shards import make_shards

    make_shards(synthetic_set / "train.csv", tmp_path / "shards", shard_size=3)
    from_files = open_cache(
        run_cache(job(teacher, synthetic_set / "train.csv", tmp_path / "a", max_videos=4, views=1)).parent
    )
    from_shards = open_cache(run_cache(job(teacher, tmp_path / "shards", tmp_path / "b", max_videos=4, views=1)).parent)
    for key in from_files.keys():
        np.testing.assert_array_equal(from_files.get(key).frames, from_shards.get(key).frames)
