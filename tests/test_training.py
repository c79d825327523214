"""Stage 1 and the shared loop: tiny models on the session's synthetic videos, in process.

The process group is created once (a group of one) and reused by every run in this file.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from salt.config import ConfigError
from salt.models import load_encoder
from salt.training.loop import TrainingError
from salt.training.objectives import PixelObjective, pixel_targets
from salt.training.teacher import run_teacher
from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent


def tiny_config(tmp_path: Path, train_csv: Path, **sections) -> Path:
    config = {
        "objective": "pixels",
        "data": {
            "train": str(train_csv),
            "view": {"frames": 8, "frame_step": 4, "size": 32},
            "batch_size": 4,
            "workers": 0,
        },
        "encoder": {"arch": "vit_tiny", "overrides": {"depth": 2}},
        "decoder": {"width": 64, "depth": 1, "num_heads": 4},
        "optim": {"steps": 6, "warmup_steps": 2, "lr_peak": 1e-3},
        "engine": {"precision": "fp32"},
        "run": {"out_dir": str(tmp_path / "run"), "log_every": 1, "checkpoint_every": 3, "progress": False},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def test_pixel_targets_equal_direct_computation():
    frames = torch.randint(0, 256, (2, 4, 32, 48, 3), dtype=torch.uint8)
    targets = pixel_targets(frames, tubelet=2, patch=16, norm="channel")
    raw = pixel_targets(frames, tubelet=2, patch=16, norm="none")
    whole = pixel_targets(frames, tubelet=2, patch=16, norm="patch")
    assert targets.shape == raw.shape == (2, 2 * 2 * 3, 2 * 16 * 16 * 3)
    x = frames.double() / 255
    for b, t, h, w in [(0, 0, 0, 0), (1, 1, 1, 2), (0, 1, 0, 1)]:
        token = t * 2 * 3 + h * 3 + w
        cube = x[b, 2 * t : 2 * t + 2, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16]  # t, y, x, c
        np.testing.assert_allclose(raw[b, token].numpy(), cube.reshape(-1).numpy(), rtol=1e-6)
        values = cube.reshape(-1, 3)
        expected = (values - values.mean(0)) / (values.std(0, unbiased=True) + 1e-6)
        np.testing.assert_allclose(targets[b, token].numpy(), expected.reshape(-1).numpy(), rtol=1e-4, atol=1e-5)
        values = cube.reshape(-1)
        expected = (values - values.mean()) / (values.std(unbiased=True) + 1e-6)
        np.testing.assert_allclose(whole[b, token].numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pixels.norm"):
        pixel_targets(frames, tubelet=2, patch=16, norm="pixel")


def planted_clips(generator: torch.Generator, batch: int = 8) -> torch.Tensor:
    """uint8 [B, 4, 16, 16, 3] clips whose every 8×8 patch holds the same ramp (x for red, y
    for green, x + y for blue) on a random per-clip colour: under every normalisation the
    masked patches follow from the visible ones, so a model can beat the trivial predictor."""
    ramp = torch.arange(8, dtype=torch.float32) * 12
    y, x = torch.meshgrid(ramp, ramp, indexing="ij")
    patch = torch.stack([x, y, (x + y) / 2], dim=-1).repeat(2, 2, 1)  # [16, 16, 3]
    base = torch.randint(0, 120, (batch, 1, 1, 1, 3), generator=generator).float()
    return (base + patch).expand(batch, 4, 16, 16, 3).round().to(torch.uint8)


@pytest.mark.parametrize("norm", ["patch", "channel", "none"])
def test_each_pixel_norm_learns_below_its_trivial_baseline(norm):
    """On planted clips each `pixels.norm` ends well below the loss of predicting zeros, which
    each micro-batch reports as `baseline_loss` (for standardised targets zero is each patch's
    mean; for raw pixels it is a weak baseline)."""
    from salt.masks import MultiBlockMasker
    from salt.models import build_encoder
    from salt.training.data import ClipBatch

    torch.manual_seed(0)
    encoder = build_encoder("vit_tiny", img_size=16, num_frames=4, patch_size=8, depth=1, embed_dim=64, num_heads=4)
    objective = PixelObjective(encoder, width=64, depth=1, num_heads=4, num_masks=1, norm=norm)
    optimiser = torch.optim.AdamW(objective.parameters(), lr=2e-3)
    masker, generator = MultiBlockMasker(encoder.grid(4, 16, 16), seed=0), torch.Generator().manual_seed(0)
    masker.configs = masker.configs[:1]
    for step in range(60):
        frames = planted_clips(generator)
        batch = ClipBatch(step, frames, torch.zeros(8, dtype=torch.long), torch.arange(8), masker(8, step))
        loss, metrics = objective(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    targets, mask = pixel_targets(frames, 2, 8, norm), batch.masks[0].target_idx
    masked = torch.gather(targets, 1, mask[..., None].expand(-1, -1, targets.shape[-1]))
    assert float(metrics["baseline_loss"]) == pytest.approx(float(masked.square().mean()), rel=1e-5)  # zeros' MSE
    final = loss.item()
    assert final < 0.3 * float(metrics["baseline_loss"]), (norm, final, float(metrics["baseline_loss"]))


def test_loss_goes_down(tmp_path, synthetic_set):
    # Raw-pixel targets: a few dozen steps show learning. (Normalised targets start at the
    # trivial 0-prediction loss of ~1.0 and need hundreds of steps; see the demo's teacher.)
    config = tiny_config(
        tmp_path,
        synthetic_set / "train.csv",
        pixels={"norm": "none"},
        optim={"steps": 30, "warmup_steps": 5, "lr_peak": 3e-3},
    )
    result = run_teacher(str(config), [])
    curve = losses(tmp_path / "run")
    first, last = np.mean([curve[s] for s in range(1, 6)]), np.mean([curve[s] for s in range(26, 31)])
    assert last < 0.5 * first, (first, last)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("lr", "wd", "grad_norm", "samples_per_s", "data_wait_share", "flops", "loss_mask0", "loss_mask1"):
        assert key in record
    assert record["flops"] > 0 and 0 <= record["data_wait_share"] <= 1
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert result.export_path == tmp_path / "run" / "teacher.pt"
    assert all(
        r["baseline_loss"] > 0 for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    )
    # The run's reconstructions, from its newest checkpoint (the decoder is not in teacher.pt).
    from click.testing import CliRunner

    from salt.cli import main

    picture = tmp_path / "pictures" / "reconstruction.png"
    shown = CliRunner().invoke(
        main,
        [
            "reconstruct",
            str(tmp_path / "run"),
            "--data",
            str(synthetic_set / "val.csv"),
            "--out",
            str(picture),
            "--clips",
            "2",
        ],
    )
    assert shown.exit_code == 0, shown.output
    assert picture.stat().st_size > 1000 and "2 clips" in shown.output and "(step30)" in shown.output
    refused = CliRunner().invoke(
        main,
        ["reconstruct", str(tmp_path / "pictures"), "--data", str(synthetic_set / "val.csv"), "--out", str(picture)],
    )
    assert refused.exit_code != 0 and "no config.yaml" in str(refused.exception)


@pytest.mark.parametrize("norm", ["patch", "channel", "none"])
def test_unnormalised_targets_are_the_pixels(norm):
    """What `salt reconstruct` draws: targets mapped back with each patch's own statistics."""
    from salt.evaluation.reconstruction import tokens_to_frames, unnormalise

    frames = torch.randint(0, 256, (2, 4, 16, 24, 3), dtype=torch.uint8)
    targets, raw = pixel_targets(frames, 2, 8, norm), pixel_targets(frames, 2, 8, "none")
    back = unnormalise(targets.flatten(0, 1), raw.flatten(0, 1), norm, 2 * 8 * 8).view_as(raw)
    torch.testing.assert_close(back, raw, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(tokens_to_frames(back[1], (2, 2, 3), 2, 8), frames[1].numpy())


def test_resume_equals_uninterrupted_and_export_matches(tmp_path, synthetic_set):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full_dir.mkdir(), split_dir.mkdir()
    full = tiny_config(full_dir, synthetic_set / "train.csv")
    split = tiny_config(split_dir, synthetic_set / "train.csv")
    run_teacher(str(full), [])
    stopped = run_teacher(str(split), ["run.stop_at=3"])
    assert stopped.export_path is None and stopped.step == 3
    # As if killed after logging steps past the checkpoint (and mid-line): those records go.
    with open(split_dir / "run" / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 4, "loss": 99.0}) + "\n" + '{"step": 5, "lo')
    resumed = run_teacher(str(split), [], resume=True)
    a, b = losses(full_dir / "run"), losses(split_dir / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert len((split_dir / "run" / "metrics.jsonl").read_text().splitlines()) == 6
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], rtol=1e-5)
    last = [
        json.loads(line)
        for line in ((d / "run" / "metrics.jsonl").read_text().splitlines()[-1] for d in (full_dir, split_dir))
    ]
    # Counted from step 0 after a resume (per-step FLOPs come from the first batch each
    # invocation sees, and mask sizes vary by step, hence the tolerance; half would be wrong).
    assert last[1]["flops"] == pytest.approx(last[0]["flops"], rel=0.1)

    # The exported teacher.pt gives the in-training encoder's outputs (fp32 run: exact weights).
    encoder, arch = load_encoder(resumed.export_path)
    assert arch["depth"] == 2 and arch["img_size"] == 32 and arch["num_frames"] == 8
    clip = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        trained = resumed.objective.encoder(clip)
        exported = encoder(clip)
    torch.testing.assert_close(exported, trained, rtol=1e-5, atol=1e-5)
    assert isinstance(resumed.objective, PixelObjective)


def test_resume_skips_a_checkpoint_cut_off_before_its_run_state(tmp_path, synthetic_set):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full_dir.mkdir(), split_dir.mkdir()
    run_teacher(str(tiny_config(full_dir, synthetic_set / "train.csv")), [])
    split = tiny_config(split_dir, synthetic_set / "train.csv")
    run_teacher(str(split), ["run.stop_at=3", "run.keep_checkpoints=2"])
    run_teacher(str(split), ["run.stop_at=5", "run.keep_checkpoints=2"], resume=True)
    # As if killed after DeepSpeed wrote step5 and `latest` but before our run-state file.
    (split_dir / "run" / "checkpoints" / "step5" / "salt_run_state.json").unlink()
    run_teacher(str(split), ["run.keep_checkpoints=2"], resume=True)  # from step 3
    a, b = losses(full_dir / "run"), losses(split_dir / "run")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], rtol=1e-5)


def test_resume_refuses_other_settings_and_missing_checkpoint(tmp_path, synthetic_set):
    config = tiny_config(tmp_path, synthetic_set / "train.csv")
    with pytest.raises(TrainingError, match="no checkpoint"):
        run_teacher(str(config), [], resume=True)
    run_teacher(str(config), ["run.stop_at=3"])
    with pytest.raises(TrainingError, match="pass --resume"):
        run_teacher(str(config), [])
    with pytest.raises(TrainingError, match="encoder.overrides.depth: checkpoint 2, now 3"):
        run_teacher(str(config), ["encoder.overrides.depth=3"], resume=True)
    (tmp_path / "run" / "checkpoints" / "step3" / "mp_rank_00_model_states.pt").write_bytes(b"garbage")
    with pytest.raises(TrainingError, match="cannot be loaded"):
        run_teacher(str(config), [], resume=True)


def test_resume_that_changes_the_schedule_says_how(tmp_path, synthetic_set, capsys):
    config = tiny_config(tmp_path, synthetic_set / "train.csv")
    run_teacher(str(config), ["run.stop_at=3"])
    run_teacher(str(config), ["optim.steps=8"], resume=True)
    out = capsys.readouterr().out
    assert "--resume: the schedule changes (optim.steps 6 → 8): the learning rate at step 3 goes from" in out
    assert sorted(losses(tmp_path / "run")) == list(range(1, 9))


def test_run_folder_that_is_a_file_is_refused_and_kept(tmp_path, synthetic_set):
    (tmp_path / "run").write_text("keep me")
    with pytest.raises(TrainingError, match="run.out_dir .*run is a file, not a folder"):
        run_teacher(str(tiny_config(tmp_path, synthetic_set / "train.csv")), [])
    assert (tmp_path / "run").read_text() == "keep me"


def test_second_run_in_one_process_trains_after_its_group_variables_are_cleared(tmp_path, synthetic_set, monkeypatch):
    """A notebook or test process runs twice: the second run finds the group of one already formed
    and LOCAL_RANK gone (cleared so that children do not inherit it); DeepSpeed still needs it."""
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    short = {"steps": 2, "warmup_steps": 1}
    run_teacher(str(tiny_config(tmp_path / "first", synthetic_set / "train.csv", optim=short)), [])
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    run_teacher(str(tiny_config(tmp_path / "second", synthetic_set / "train.csv", optim=short)), [])
    assert losses(tmp_path / "second" / "run").keys() == {1, 2}


def test_geometry_refused_before_training(tmp_path, synthetic_set):
    config = tiny_config(tmp_path, synthetic_set / "train.csv")
    with pytest.raises(ConfigError, match="does not divide"):
        run_teacher(str(config), ["data.view.size=40"])
    with pytest.raises(ConfigError, match="does not divide"):
        run_teacher(str(config), ["data.view.frames=7"])
    assert not (tmp_path / "run").exists()


def test_bad_videos_are_skipped_counted_and_capped(tmp_path, synthetic_set):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    csv = tmp_path / "with_broken.csv"
    good = (synthetic_set / "train.csv").read_text().splitlines()[:7]
    csv.write_text("\n".join([f"{synthetic_set / line}" for line in good] + [f"{broken} 0"]) + "\n")
    config = tiny_config(tmp_path, csv, data={"max_bad_videos": 1})
    run_teacher(str(config), ["optim.steps=3"])
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["bad_videos"] == 1
    capped = tiny_config(tmp_path, csv, data={"max_bad_videos": 0}, run={"out_dir": str(tmp_path / "capped")})
    with pytest.raises(TrainingError, match="could not be decoded.*broken.mp4"):
        run_teacher(str(capped), ["optim.steps=3"])


def test_non_finite_loss_stops_with_a_checkpoint(tmp_path, synthetic_set, monkeypatch):
    original = PixelObjective.forward

    def forward(self, batch):
        loss, metrics = original(self, batch)
        return (loss * float("nan") if batch.micro_step >= 2 else loss), metrics

    monkeypatch.setattr(PixelObjective, "forward", forward)
    config = tiny_config(tmp_path, synthetic_set / "train.csv")
    with pytest.raises(TrainingError, match="loss is nan at step 2"):
        run_teacher(str(config), [])
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step2"


def test_supervised_objective_learns_labels(tmp_path, synthetic_set):
    """Fits the labels of one video per class within a few dozen steps (chance is 1/8).

    Generalising to new videos of the motion classes takes ~1k steps (probe calibration)."""
    csv = tmp_path / "one_per_class.csv"
    lines = (synthetic_set / "train.csv").read_text().splitlines()[:8]
    csv.write_text("".join(f"{synthetic_set / line}\n" for line in lines))
    config = tiny_config(
        tmp_path,
        csv,
        objective="supervised",
        data={"batch_size": 8},
        optim={"steps": 40, "warmup_steps": 5, "lr_peak": 2e-3, "wd_start": 0.0, "wd_final": 0.0},
    )
    run_teacher(str(config), [])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert np.mean([r["accuracy"] for r in records[:3]]) < 0.6
    assert np.mean([r["accuracy"] for r in records[-5:]]) >= 0.9
    assert (tmp_path / "run" / "supervised.pt").is_file()


@pytest.mark.slow
def test_two_process_deepspeed_run(tmp_path, synthetic_set):
    config = tiny_config(tmp_path, synthetic_set / "train.csv", optim={"steps": 3}, engine={"zero_stage": 2})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    launcher = Path(sys.executable).parent / "deepspeed"
    result = subprocess.run(
        [
            str(launcher),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            str(REPO / "salt" / "train_teacher.py"),
            "--config",
            str(config),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "run" / "teacher.pt").is_file()
    assert losses(tmp_path / "run").keys() == {1, 2, 3}
    encoder, _ = load_encoder(tmp_path / "run" / "teacher.pt")
    assert encoder.arch["depth"] == 2
