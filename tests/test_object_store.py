"""Caches and video shards on an object store: the pipeline on s3:// URLs against a real
S3-protocol server (moto's standalone server, started here on 127.0.0.1 and stopped by pid)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from salt.latents import open_cache
from tests.helpers import REPO, free_port, killed, local_s3_server, salt

BUCKET = "salt-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 (stopped by pid) with fsspec pointed at it, here and in children."""
    with local_s3_server(BUCKET) as fs:
        yield fs


def cache_args(teacher: Path, data: str, out: str, *extra: str) -> list[str]:
    return [
        "cache-latents",
        "--teacher",
        str(teacher),
        "--data",
        data,
        "--out",
        out,
        "--views",
        "2",
        "--max-videos",
        "8",
        "--shard-videos",
        "2",
        "--workers",
        "1",
        "--batch-size",
        "3",
        "--precision",
        "fp32",
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def s3_videos(s3, synthetic_set) -> dict[str, str]:
    urls = {}
    for split in ("train", "val"):
        url = f"s3://{BUCKET}/videos/{split}"
        result = salt("make-shards", "--data", str(synthetic_set / f"{split}.csv"), "--out", url, "--shard-size", "8")
        assert result.returncode == 0, result.stderr
        urls[split] = url
    return urls


@pytest.fixture(scope="module")
def s3_cache(s3, s3_videos, teacher) -> str:
    url = f"s3://{BUCKET}/cache/a"
    result = salt(*cache_args(teacher, s3_videos["train"], url))
    assert result.returncode == 0, result.stderr
    return url


def test_unserveable_schemes_are_refused_and_never_become_local_folders(tmp_path, teacher, synthetic_set):
    for out, named in (("nosuchscheme://bucket/cache", "nosuchscheme://"), ("s3:/bucket/cache", "one slash")):
        result = salt(*cache_args(teacher, str(synthetic_set / "train.csv"), out), cwd=tmp_path)
        assert result.returncode != 0 and named in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())  # no local folder named after a URL
    inspect = salt("inspect", "nosuchscheme://bucket/cache", cwd=tmp_path)
    assert inspect.returncode != 0 and "nosuchscheme://" in inspect.stderr


def test_s3_cache_holds_what_a_local_cache_holds(tmp_path, s3, s3_cache, teacher, synthetic_set):
    local = tmp_path / "local"
    assert salt(*cache_args(teacher, str(synthetic_set / "train.csv"), str(local))).returncode == 0
    remote, here = open_cache(s3_cache), open_cache(local)
    assert remote.keys() == here.keys() == sorted(f"v{v:08d}k{k:03d}" for v in range(8) for k in range(2))
    for key in remote.keys()[::3]:
        a, b = remote.get(key), here.get(key)  # range reads from the bucket
        np.testing.assert_array_equal(a.frames, b.frames)
        assert np.array_equal(a.latents.numpy(), b.latents.numpy()) and a.meta["view_params"] == b.meta["view_params"]
    streamed = [s.key for s in remote.stream(seed=3, epoch=1)]  # whole shards, read ahead
    assert streamed == [s.key for s in here.stream(seed=3, epoch=1)]
    assert [s.key for s in remote.stream(seed=3, epoch=1, start=5)] == streamed[5:]  # exact arithmetic resume
    verify = salt("inspect", s3_cache, "--verify", "--samples", "0")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not list(tmp_path.glob("s3:*")) and not (REPO / "s3:").exists()


def test_a_corrupted_object_is_named_by_inspect_verify(s3, s3_cache, tmp_path):
    copy = f"s3://{BUCKET}/cache/corrupt"
    s3.copy(s3_cache.removeprefix("s3://"), copy.removeprefix("s3://"), recursive=True)
    tar = sorted(p for p in s3.ls(copy.removeprefix("s3://") + "/wds") if p.endswith(".tar"))[1]
    data = bytearray(s3.cat_file(tar))
    data[len(data) // 2] ^= 0xFF
    s3.pipe_file(tar, bytes(data))
    verify = salt("inspect", copy, "--verify", "--samples", "0")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert Path(tar).name.removesuffix(".tar") in verify.stdout


def test_a_writer_killed_mid_shard_leaves_nothing_visible_and_the_rerun_completes(s3, s3_videos, teacher):
    url = f"s3://{BUCKET}/cache/killed"
    args = cache_args(teacher, s3_videos["train"], url)
    assert killed(salt(*args, fault="kill-mid-shard"))
    prefix = url.removeprefix("s3://")
    assert not s3.exists(prefix + "/manifest.json")
    tars = [p for p in s3.find(prefix) if p.endswith(".tar")]
    indexes = [p for p in s3.find(prefix) if p.endswith(".idx.json")]
    assert len(tars) == len(indexes)  # the shard being written when killed is not visible at all
    rerun = salt(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert len(open_cache(url)) == 16
    assert salt("inspect", url, "--verify", "--samples", "0").returncode == 0


@pytest.mark.slow
def test_two_rank_student_and_probe_read_from_the_bucket(tmp_path, s3, s3_cache, s3_videos):
    config = {
        "cache": {"path": s3_cache},
        "geometry": {"frames": 8, "frame_step": 4, "size": 32},
        "data": {"batch_size": 2, "workers": 1},
        "encoder": {"arch": "vit_tiny", "overrides": {"depth": 2}},
        "predictor": {"width": 64, "depth": 1, "num_heads": 4},
        "optim": {"steps": 4, "warmup_steps": 1, "lr_peak": 1e-3},
        "engine": {"precision": "fp32", "zero_stage": 2, "timeout_s": 60},
        "run": {"out_dir": str(tmp_path / "run"), "log_every": 1, "checkpoint_every": 4, "progress": False},
    }
    (tmp_path / "student.yaml").write_text(yaml.safe_dump(config))
    launcher = Path(sys.executable).parent / "deepspeed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    student = subprocess.run(
        [
            str(launcher),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            str(REPO / "salt" / "train_student.py"),
            "--config",
            str(tmp_path / "student.yaml"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert student.returncode == 0, student.stdout[-3000:] + student.stderr[-3000:]
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if "loss" in line
    ]
    assert len(losses) == 4 and all(np.isfinite(losses))
    probe = salt(
        "probe",
        "--encoder",
        str(tmp_path / "run" / "student.pt"),
        "--train",
        s3_videos["train"],
        "--val",
        s3_videos["val"],
        "--out",
        str(tmp_path / "probe.json"),
        "--set",
        "epochs=1",
        "--set",
        "train_views=1",
        "--set",
        "eval_clips=1",
        "--set",
        "eval_spatial=1",
        "--set",
        "lrs=[1e-3]",
        "--set",
        "weight_decays=[0.01]",
        "--set",
        "workers=0",
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads((tmp_path / "probe.json").read_text())
    assert report["val_videos"] == 16 and 0 <= report["best"]["top1"] <= 1


def test_many_small_objects_are_read_without_asking_their_sizes(s3, monkeypatch):
    """The merge lists done/ and then reads every mark: after a listing, s3fs answers a whole-object
    read's size lookup by scanning the cached listing, once per object (quadratic: 25 ms a mark at
    83 000). read_many asks from byte 0 instead; an empty object is read plainly; a missing one raises."""
    from salt.latents import storage

    folder = f"s3://{BUCKET}/read-many"
    names = [f"{i:03d}.json" for i in range(40)]
    for name in names:
        s3.pipe(f"{BUCKET}/read-many/{name}", name.encode())
    s3.pipe(f"{BUCKET}/read-many/empty.json", b"")
    assert storage.list_names(folder, suffix=".json") == sorted(names + ["empty.json"])
    fs, _ = storage.filesystem(folder)
    asked, info = [], type(fs)._info

    async def counted_info(self, path, **kwargs):
        asked.append(path)
        return await info(self, path, **kwargs)

    monkeypatch.setattr(type(fs), "_info", counted_info)
    found = storage.read_many([f"{folder}/{name}" for name in [*names, "empty.json"]])
    assert found == [name.encode() for name in names] + [b""]
    assert asked == [f"{BUCKET}/read-many/empty.json"]
    with pytest.raises(FileNotFoundError):
        storage.read_many([f"{folder}/{names[0]}", f"{folder}/missing.json"])
