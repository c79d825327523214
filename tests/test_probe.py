import json

import pytest
import torch
from click.testing import CliRunner

from salt.cli import main
from salt.evaluation.probe import ProbeConfig, train_heads, view_averaged_accuracy


def features(labels: torch.Tensor, views: int, separable: bool, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    n, tokens, dim = len(labels) * views, 8, 16
    x = torch.randn(n, tokens, dim, generator=generator)
    repeated = labels.repeat_interleave(views)
    if separable:
        x[torch.arange(n), :, repeated] += 3.0  # the class shows in one channel of every token
    return {"tokens": x, "labels": repeated, "videos": torch.arange(len(labels)).repeat_interleave(views)}


CFG = ProbeConfig(epochs=30, batch_size=16, lrs=[3e-3], weight_decays=[0.01], head_heads=2)


def test_probe_reaches_high_accuracy_on_separable_features():
    labels = torch.arange(64) % 8
    report = train_heads(features(labels, 2, True, 0), features(torch.arange(32) % 8, 3, True, 1), 8, CFG)
    assert report["best"]["top1"] >= 0.9 and report["best"]["top5"] == 1.0


def test_probe_is_near_chance_on_shuffled_labels():
    labels = torch.arange(64) % 8
    train = features(labels, 2, True, 0)
    train["labels"] = train["labels"][torch.randperm(len(train["labels"]), generator=torch.Generator().manual_seed(3))]
    report = train_heads(train, features(torch.arange(48) % 8, 3, True, 1), 8, CFG)
    assert report["best"]["top1"] < 0.35


def test_multi_view_averaging():
    # Video 0 (label 1): one confident wrong view, two mildly right ones; video 1 (label 0) right.
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2]])
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    videos = torch.tensor([0, 0, 0, 1, 1, 1])
    assert view_averaged_accuracy(probabilities, labels, videos) == {
        "top1": 1.0,
        "videos": 2,
        "confusion": [[1, 0], [0, 1]],
        "correct": "11",  # per video, in video-id order: what paired comparisons of two probes read
    }
    single = view_averaged_accuracy(probabilities[[0, 3]], labels[[0, 3]], videos[[0, 3]])
    assert single["top1"] == 0.5 and single["correct"] == "01"
    assert single["confusion"] == [[1, 0], [1, 0]]  # [true][predicted]: video 0 (label 1) taken for class 0


def test_probe_command_writes_json(tmp_path, synthetic_set):
    out = tmp_path / "probe.json"
    result = CliRunner().invoke(
        main,
        [
            "probe",
            "--random-init",
            "vit_tiny",
            "--arch",
            "img_size=32",
            "--arch",
            "num_frames=8",
            "--arch",
            "depth=1",
            "--train",
            str(synthetic_set / "train.csv"),
            "--val",
            str(synthetic_set / "val.csv"),
            "--out",
            str(out),
            "--set",
            "epochs=1",
            "--set",
            "train_views=1",
            "--set",
            "eval_clips=1",
            "--set",
            "eval_spatial=2",
            "--set",
            "lrs=[1e-3]",
            "--set",
            "weight_decays=[0.01, 0.1]",
            "--set",
            "workers=0",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert len(report["heads"]) == 2 and report["classes"] == 8 and report["val_videos"] == 16
    assert (
        0 <= report["best"]["top1"] <= 1 and len(report["fingerprint"]) == 64 and report["feature_cache_speedup"] >= 1
    )  # = 1 at one epoch by definition
    assert "best" in result.output


LINEAR = ProbeConfig(protocol="linear")


def planted(labels: torch.Tensor, views: int, seed: int, signal: float) -> dict:
    """Tokens whose mean encodes the label (one channel shifted in every token) under noise that
    is strong per token; signal 0 is pure noise."""
    generator = torch.Generator().manual_seed(seed)
    n, tokens, dim = len(labels) * views, 16, 24
    repeated = labels.repeat_interleave(views)
    x = 2.0 * torch.randn(n, tokens, dim, generator=generator)
    x[torch.arange(n), :, repeated] += signal
    return {"tokens": x, "labels": repeated, "videos": torch.arange(len(labels)).repeat_interleave(views)}


def test_linear_protocol_reads_a_planted_mean_token():
    train = planted(torch.arange(160) % 8, 2, seed=0, signal=2.0)
    val = planted(torch.arange(80) % 8, 2, seed=1, signal=2.0)
    # One token alone does not show the class reliably (noise std 2 against a shift of 2);
    # their mean does.
    report = train_heads(train, val, 8, LINEAR)
    assert report["best"]["top1"] >= 0.95 and len(report["heads"]) == 4
    best = report["best"]
    assert best["videos"] == 80 and best["top1_se"] == pytest.approx((best["top1"] * (1 - best["top1"]) / 80) ** 0.5)


def test_linear_protocol_stays_near_chance_on_noise():
    report = train_heads(
        planted(torch.arange(160) % 8, 2, 0, 0.0), planted(torch.arange(160) % 8, 1, 1, 0.0), 8, LINEAR
    )
    assert report["best"]["top1"] < 0.25  # chance 12.5 %, 160 videos: s.e. 2.6 points, best of 4 heads


def test_probe_command_linear_protocol(tmp_path, synthetic_set):
    out = tmp_path / "linear.json"
    result = CliRunner().invoke(
        main,
        [
            "probe",
            "--random-init",
            "vit_tiny",
            "--arch",
            "img_size=32",
            "--arch",
            "num_frames=8",
            "--arch",
            "depth=1",
            "--train",
            str(synthetic_set / "train.csv"),
            "--val",
            str(synthetic_set / "val.csv"),
            "--out",
            str(out),
            "--protocol",
            "linear",
            "--work-dir",
            str(tmp_path / "work"),
            "--set",
            "train_views=1",
            "--set",
            "eval_clips=1",
            "--set",
            "eval_spatial=1",
            "--set",
            "workers=0",
            "--set",
            "linear.epochs=2",
            "--set",
            "linear.lrs=[1e-2]",
            "--set",
            "linear.weight_decays=[0.0]",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["protocol"] == "linear" and report["val_videos"] == 16 and len(report["heads"]) == 1
    assert 0 <= report["best"]["top1"] <= 1 and "top1_se" in report["best"]
    assert result.output.startswith("linear probe of random-init vit_tiny")
    # The same work dir serves the attentive protocol from the stored token maps.
    again = CliRunner().invoke(
        main,
        [
            "probe",
            "--random-init",
            "vit_tiny",
            "--arch",
            "img_size=32",
            "--arch",
            "num_frames=8",
            "--arch",
            "depth=1",
            "--train",
            str(synthetic_set / "train.csv"),
            "--val",
            str(synthetic_set / "val.csv"),
            "--out",
            str(tmp_path / "att.json"),
            "--work-dir",
            str(tmp_path / "work"),
            "--set",
            "train_views=1",
            "--set",
            "eval_clips=1",
            "--set",
            "eval_spatial=1",
            "--set",
            "workers=0",
            "--set",
            "epochs=1",
            "--set",
            "lrs=[1e-3]",
            "--set",
            "weight_decays=[0.01]",
        ],
    )
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "att.json").read_text())["protocol"] == "attentive"


def test_probe_config_refuses_an_empty_grid(tmp_path):
    from salt.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="linear.lrs needs at least one value"):
        load_config(ProbeConfig, None, ["linear.lrs=[]"])
