"""Stage 2: students trained from a tiny cache, in process (a process group of one)."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from salt.cache_latents import CacheJob, run_cache
from salt.config import ConfigError
from salt.models import Predictor, build_encoder, load_encoder, save_encoder
from salt.tools.replayed_student import replay_windows
from salt.training.data import CacheBatches, ReaderShare
from salt.training.loop import TrainingError
from salt.training.objectives import StudentObjective
from salt.training.student import run_student
from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory, synthetic_set):
    """A vit_tiny teacher (depth 2, 8 frames at 32²) and its cache: 8 videos × 2 views, 4 shards."""
    root = tmp_path_factory.mktemp("student")
    torch.manual_seed(0)
    teacher = root / "teacher.pt"
    save_encoder(teacher, build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2), kind="teacher")
    run_cache(
        CacheJob(
            teacher=str(teacher),
            data=str(synthetic_set / "train.csv"),
            out=str(root / "cache"),
            views=2,
            max_videos=8,
            shard_videos=2,
            workers=0,
            precision="fp32",
            progress=False,
        )
    )
    return root


def student_config(tmp_path: Path, demo_cache: Path, **sections) -> Path:
    config = {
        "targets": "cache",
        "cache": {"path": str(demo_cache / "cache")},
        "teacher": str(demo_cache / "teacher.pt"),
        "geometry": {"frames": 8, "frame_step": 4, "size": 32},
        "data": {"batch_size": 4, "workers": 0},
        "encoder": {"arch": "vit_tiny", "overrides": {"depth": 2}},
        "predictor": {"width": 64, "depth": 1, "num_heads": 4},
        "optim": {"steps": 6, "warmup_steps": 2, "lr_peak": 1e-3},
        "engine": {"precision": "fp32", "zero_stage": 2},
        "health_every": 2,
        "run": {"out_dir": str(tmp_path / "run"), "log_every": 1, "checkpoint_every": 3, "progress": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_loss_goes_down_and_health_is_logged(tmp_path, demo_cache):
    config = student_config(tmp_path, demo_cache, optim={"steps": 30, "warmup_steps": 3, "lr_peak": 2e-3})
    result = run_student(str(config), [])
    losses = [r["loss"] for r in records(tmp_path / "run")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05, losses
    first = records(tmp_path / "run")[0]  # micro-step 0: health_every=2
    assert first["feature_std"] > 0 and first["feature_rank"] > 1 and first["flops_frozen"] == 0
    assert result.export_path.name == "student.pt"
    explained = [r["explained_variance"] for r in records(tmp_path / "run")]
    assert all(r["baseline_loss"] > 0 for r in records(tmp_path / "run"))
    assert np.mean(explained[-5:]) > np.mean(explained[:5]), explained


def test_baseline_is_the_mean_target_and_explained_variance_its_share(demo_cache):
    """`baseline_loss`: the run's loss for predicting the cache's mean (layer-normed) target
    vector at every masked token; `explained_variance`: 1 − SSE / (spread about that mean)."""
    from salt.latents import normalise_targets
    from salt.masks import DEFAULT_MASKS, apply_masks
    from salt.training.student import sample_of_targets

    dataset = CacheBatches(
        cache_path=str(demo_cache / "cache"),
        cache_format="auto",
        batch_size=4,
        seed=0,
        share=ReaderShare(num_workers=1),
        mask_configs=list(DEFAULT_MASKS),
        token_grid=(4, 2, 2),
    )
    batch = next(iter(dataset))
    objective = StudentObjective(
        build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2),
        Predictor(128, 128, width=64, depth=1, num_heads=4),
        "cache",
    )
    stored = sample_of_targets(str(demo_cache / "cache"), count=5)
    assert stored.shape == (5, 16, 128)
    objective.set_target_mean(stored)
    mean = normalise_targets(stored, "layer_norm").mean(dim=(0, 1))
    torch.testing.assert_close(objective.target_mean, mean)
    with torch.no_grad():
        _, metrics = objective(batch)
    targets = normalise_targets(batch.float_targets(), "layer_norm")
    expected = [(apply_masks(targets, m.target_idx) - mean).abs().mean() for m in batch.masks]
    assert float(metrics["baseline_loss"]) == pytest.approx(float(torch.stack(expected).mean()), rel=1e-5)
    masked = apply_masks(targets, batch.masks[0].target_idx)
    baseline, share = objective._against_the_mean(masked, masked)
    assert float(share) == pytest.approx(1.0) and float(baseline) == pytest.approx(float(expected[0]), rel=1e-5)
    _, share = objective._against_the_mean(mean.expand_as(masked), masked)
    assert float(share) == pytest.approx(0.0, abs=1e-6)


def test_cache_and_online_teacher_give_the_same_loss(demo_cache):
    teacher, _ = load_encoder(demo_cache / "teacher.pt")
    dataset = CacheBatches(
        cache_path=str(demo_cache / "cache"),
        cache_format="auto",
        batch_size=4,
        seed=0,
        share=ReaderShare(num_workers=1),
        mask_configs=list(__import__("salt.masks", fromlist=["DEFAULT_MASKS"]).DEFAULT_MASKS),
        token_grid=(4, 2, 2),
    )
    batch = next(iter(dataset))
    torch.manual_seed(1)
    encoder = build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2)
    predictor = Predictor(128, 128, width=64, depth=1, num_heads=4)
    from_cache = StudentObjective(encoder, predictor, "cache")
    online = StudentObjective(copy.deepcopy(encoder), copy.deepcopy(predictor), "teacher", frozen=teacher)
    with torch.no_grad():
        loss_cache, _ = from_cache(batch)
        loss_online, _ = online(batch)
    assert abs(loss_cache.item() - loss_online.item()) < 1e-3, (loss_cache.item(), loss_online.item())


def test_teacher_is_never_opened(tmp_path, demo_cache):
    teacher_copy = tmp_path / "teacher.pt"
    teacher_copy.write_bytes((demo_cache / "teacher.pt").read_bytes())
    opened = []
    watching = {"on": True}

    def audit(event, args):
        if watching["on"] and event == "open" and args and "teacher.pt" in str(args[0]):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    teacher_copy.unlink()  # deleted: the run must not need it
    config = student_config(tmp_path, demo_cache, teacher=str(teacher_copy), optim={"steps": 2})
    try:
        run_student(str(config), [])
    finally:
        watching["on"] = False
    assert opened == [], opened


def test_manifest_mismatch_is_refused(tmp_path, demo_cache):
    config = student_config(tmp_path, demo_cache)
    with pytest.raises(ConfigError, match="frame_step: config 2, cache 4"):
        run_student(str(config), ["geometry.frame_step=2"])
    with pytest.raises(ConfigError, match="size: config 48, cache 32"):
        run_student(str(config), ["geometry.size=48"])
    with pytest.raises(ConfigError, match="patch: config 8, cache 16"):
        run_student(str(config), ["encoder.overrides.patch_size=8"])


def test_two_student_sizes_from_one_cache(tmp_path, demo_cache):
    small = student_config(tmp_path / "a", demo_cache)
    other = student_config(
        tmp_path / "b",
        demo_cache,
        encoder={"arch": "vit_tiny", "overrides": {"embed_dim": 64, "num_heads": 2, "depth": 1}},
    )
    for config, dim in ((small, 128), (other, 64)):
        result = run_student(str(config), ["optim.steps=2"])
        encoder, arch = load_encoder(result.export_path)
        assert arch["embed_dim"] == dim


def test_resume_equals_uninterrupted_with_workers(tmp_path, demo_cache):
    full = student_config(tmp_path / "full", demo_cache, data={"batch_size": 4, "workers": 2})
    split = student_config(tmp_path / "split", demo_cache, data={"batch_size": 4, "workers": 2})
    run_student(str(full), [])
    run_student(str(split), ["run.stop_at=3"])
    run_student(str(split), [], resume=True)
    a = [r["loss"] for r in records(tmp_path / "full" / "run")]
    b = [r["loss"] for r in records(tmp_path / "split" / "run")]
    np.testing.assert_allclose(b, a, rtol=1e-5)


def test_frames_decoded_by_the_training_process_equal_the_workers(tmp_path, demo_cache):
    """data.decode_frames: device. The workers hand over JPEG bytes and the batch is decoded
    where `to(device)` sends it (nvJPEG on a GPU). On a CPU it is the workers' decoder: the
    same batches bit for bit, and a run may resume with either setting."""
    import itertools

    from salt.masks import DEFAULT_MASKS

    def batches(where):
        dataset = CacheBatches(
            cache_path=str(demo_cache / "cache"),
            cache_format="auto",
            batch_size=4,
            seed=0,
            share=ReaderShare(num_workers=2),
            mask_configs=list(DEFAULT_MASKS),
            token_grid=(4, 2, 2),
            decode_frames=where,
        )
        return list(itertools.islice(iter(dataset), 3))

    for in_workers, undecoded in zip(batches("workers"), batches("device")):
        assert undecoded.frames is None and undecoded.jpeg is not None
        on_device = undecoded.to("cpu")
        assert on_device.jpeg is None and on_device.keys == in_workers.keys
        assert torch.equal(on_device.frames, in_workers.frames) and torch.equal(on_device.targets, in_workers.targets)
        assert torch.equal(on_device.float_targets(), in_workers.float_targets())
        for a, b in zip(on_device.masks, in_workers.masks):
            assert torch.equal(a.context_idx, b.context_idx) and torch.equal(a.target_idx, b.target_idx)
    full = student_config(tmp_path / "full", demo_cache, data={"batch_size": 4, "workers": 2})
    split = student_config(
        tmp_path / "split", demo_cache, data={"batch_size": 4, "workers": 2, "decode_frames": "device"}
    )
    run_student(str(full), [])
    run_student(str(split), ["run.stop_at=3"])
    run_student(str(split), ["data.decode_frames=workers"], resume=True)
    np.testing.assert_allclose(
        [r["loss"] for r in records(tmp_path / "split" / "run")],
        [r["loss"] for r in records(tmp_path / "full" / "run")],
        rtol=1e-5,
    )


def test_resume_refuses_a_cache_from_another_teacher(tmp_path, demo_cache):
    cache = tmp_path / "cache"
    import shutil

    shutil.copytree(demo_cache / "cache", cache)
    config = student_config(tmp_path, demo_cache, cache={"path": str(cache)})
    run_student(str(config), ["run.stop_at=3"])
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["teacher"]["fingerprint"] = "0" * 64
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainingError, match="cache_teacher_fingerprint"):
        run_student(str(config), [], resume=True)


def test_ema_baseline_trains_and_refuses_zero3(tmp_path, demo_cache):
    config = student_config(tmp_path, demo_cache, targets="ema", optim={"steps": 4})
    with pytest.raises(ConfigError, match="ZeRO-3"):
        run_student(str(config), ["engine.zero_stage=3"])
    result = run_student(str(config), [])
    rows = records(tmp_path / "run")
    assert rows[-1]["flops_frozen"] > 0 and np.isfinite(rows[-1]["loss"])
    ema = result.objective.frozen.state_dict()
    online = result.objective.encoder.state_dict()
    assert any(not torch.equal(ema[k], online[k].float()) for k in ema)  # EMA lags the online encoder


def test_exported_student_serves_as_the_next_teacher(tmp_path, demo_cache, synthetic_set):
    result = run_student(str(student_config(tmp_path, demo_cache)), ["optim.steps=2"])
    manifest = run_cache(
        CacheJob(
            teacher=str(result.export_path),
            data=str(synthetic_set / "train.csv"),
            out=str(tmp_path / "c2"),
            max_videos=2,
            workers=0,
            progress=False,
        )
    )
    assert json.loads(manifest.read_text())["sample_count"] == 2


def test_corrupt_sample_raises_naming_it_or_is_skipped(tmp_path, demo_cache):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(demo_cache / "cache", cache)
    tar = sorted((cache / "wds").glob("*.tar"))[0]
    index = json.loads(Path(str(tar)[: -len(".tar")] + ".idx.json").read_text())
    member, (offset, size, _) = next((m, v) for m, v in index["members"].items() if m.endswith(".latents"))
    data = bytearray(tar.read_bytes())
    data[offset + size // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    config = student_config(tmp_path, demo_cache, cache={"path": str(cache), "format": "wds"}, optim={"steps": 8})
    with pytest.raises(Exception, match=member.split(".")[0]):
        run_student(str(config), [])
    skip = student_config(
        tmp_path / "s", demo_cache, cache={"path": str(cache), "format": "wds", "on_error": "skip"}, optim={"steps": 8}
    )
    run_student(str(skip), [])
    assert records(tmp_path / "s" / "run")[-1]["bad_videos"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_deepspeed_run(tmp_path, demo_cache, stage):
    config = student_config(tmp_path, demo_cache, optim={"steps": 3}, engine={"precision": "fp32", "zero_stage": stage})
    launcher = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run(
        [
            str(launcher),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            str(REPO / "salt" / "train_student.py"),
            "--config",
            str(config),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    encoder, _ = load_encoder(tmp_path / "run" / "student.pt")
    assert encoder.arch["depth"] == 2
    # One line for the run, not one per rank; no third-party progress bar when student.pt is written.
    assert result.stdout.count("exported ") == 1, result.stdout[-3000:]
    assert "Loading checkpoint shards" not in result.stdout + result.stderr


def test_non_finite_targets_stop_the_run_naming_the_samples(tmp_path, demo_cache, monkeypatch):
    """The loop reads one finiteness flag per micro-step; only a non-finite loss makes the
    objective look for the cause, and the error names the samples."""
    from salt.training.data import CacheBatch

    original = CacheBatch.float_targets

    def poisoned(self):
        targets = original(self)
        if self.micro_step >= 2:
            targets[1] = float("nan")
        return targets

    monkeypatch.setattr(CacheBatch, "float_targets", poisoned)
    config = student_config(tmp_path, demo_cache)
    with pytest.raises(
        TrainingError, match=r"loss is nan at step 2 \(non-finite targets from cache in samples \['v\d+k\d+'\]\)"
    ):
        run_student(str(config), [])
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step2"


def test_compiled_student_trains_as_the_eager_one(tmp_path, demo_cache):
    """run.compile: the encoder and predictor run through torch.compile in place. The same
    losses up to kernel rounding, and the export keeps the eager parameter names (loads strict)."""
    eager = student_config(tmp_path / "eager", demo_cache, optim={"steps": 4, "warmup_steps": 2, "lr_peak": 1e-3})
    compiled = student_config(
        tmp_path / "compiled",
        demo_cache,
        optim={"steps": 4, "warmup_steps": 2, "lr_peak": 1e-3},
        run={
            "out_dir": str(tmp_path / "compiled" / "run"),
            "log_every": 1,
            "checkpoint_every": 4,
            "progress": False,
            "compile": True,
        },
    )
    run_student(str(eager), [])
    result = run_student(str(compiled), [])
    np.testing.assert_allclose(
        [r["loss"] for r in records(tmp_path / "compiled" / "run")],
        [r["loss"] for r in records(tmp_path / "eager" / "run")],
        rtol=2e-3,
    )
    encoder, _ = load_encoder(result.export_path)  # strict load
    reference, _ = load_encoder(tmp_path / "eager" / "run" / "student.pt")
    assert encoder.state_dict().keys() == reference.state_dict().keys()
    with pytest.raises(TrainingError, match="run.compile with engine.zero_stage 3"):
        run_student(str(compiled), ["engine.zero_stage=3", f"run.out_dir={tmp_path / 'zero3'}"])


def test_replay_windows_stream_then_repeat():
    """`salt bench student`'s in-memory reference: k loader batches, then the same k again from memory."""
    import itertools

    whole = list(itertools.islice(replay_windows(itertools.count(), 3), 18))
    assert whole == [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5, 6, 7, 8, 6, 7, 8]


def test_replayed_student_trains_its_first_window_on_the_streamed_batches(tmp_path, demo_cache):
    """The benchmark's mode, run as the benchmark runs it (its own entry point, no training
    setting): the first window is the streamed run's first batches; the next one replays them."""
    run = {"log_every": 2, "checkpoint_every": 100, "progress": False}
    data = {"batch_size": 4, "workers": 2}
    streamed = student_config(tmp_path / "streamed", demo_cache, data=data)
    replay = student_config(
        tmp_path / "replay", demo_cache, data=data, run={**run, "out_dir": str(tmp_path / "replay" / "run")}
    )
    run_student(str(streamed), [])
    group = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")  # this process's group of one
    env = {k: v for k, v in os.environ.items() if k not in group}
    result = subprocess.run(
        [sys.executable, "-m", "salt.tools.replayed_student", "2", "--config", str(replay)],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    a = [r["loss"] for r in records(tmp_path / "streamed" / "run")]
    b = [r["loss"] for r in records(tmp_path / "replay" / "run")]
    np.testing.assert_allclose(b[0], np.mean(a[:2]), rtol=1e-6)
    assert len(b) == len(a) // 2  # every logged window is all streamed or all replayed batches
