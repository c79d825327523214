from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from salt.config import ConfigError, load_config, save_config, to_dict


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "bf16"
    resume: bool = False
    note: str | None = None
    optim: Optim = field(default_factory=Optim)

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def write(tmp_path, data) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_loads_nested_values_and_defaults(tmp_path):
    cfg = load_config(Run, write(tmp_path, {"steps": 5, "optim": {"lr": 2}}))
    assert cfg.steps == 5 and cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.precision == "bf16"


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, {"optim": {"lrr": 1.0}})
    with pytest.raises(ConfigError) as err:
        load_config(Run, path)
    assert "optim.lrr" in str(err.value) and path in str(err.value) and "lr" in str(err.value)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"steps": "ten"}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"optim": {"lr": "fast"}}, "optim.lr"),
        ({"resume": "yes"}, "resume"),
        ({"precision": "fp16"}, "precision"),
        ({"optim": {"betas": [0.9]}}, "optim.betas"),
        ({"optim": 3}, "optim"),
    ],
)
def test_wrong_types_name_key_and_file(tmp_path, data, key):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(Run, path)
    assert key in str(err.value) and path in str(err.value)


def test_validate_hook_errors_name_file(tmp_path):
    path = write(tmp_path, {"steps": 0})
    with pytest.raises(ConfigError, match="steps must be >= 1") as err:
        load_config(Run, path)
    assert path in str(err.value)


def test_set_overrides(tmp_path):
    path = write(tmp_path, {"steps": 5})
    assert load_config(Run, path, ["optim.lr=2e-3"]).optim.lr == 0.002  # YAML 1.1 reads 2e-3 as text
    cfg = load_config(Run, path, ["steps=7", "optim.lr=0.5", "optim.betas=[0.8, 0.9]", "note=hello world"])
    assert cfg.steps == 7 and cfg.optim.lr == 0.5 and cfg.optim.betas == (0.8, 0.9) and cfg.note == "hello world"
    with pytest.raises(ConfigError, match="optim.nope"):
        load_config(Run, path, ["optim.nope=1"])
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        load_config(Run, path, ["steps"])
    with pytest.raises(ConfigError, match="not a section"):
        load_config(Run, path, ["steps.x=1"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Run, bad)


def test_duplicate_key_is_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("steps: 3\noptim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="'lr' is given twice") as err:
        load_config(Run, path)
    assert str(path) in str(err.value)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Run, write(tmp_path, {"steps": 3}), ["optim.lr=0.1"])
    saved = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(Run, saved) == cfg
    assert yaml.safe_load(saved.read_text()) == to_dict(cfg)


def test_every_training_section_validates():
    from salt.training.config import StudentConfig, TeacherConfig

    for override, message in [
        ("run.log_every=0", "log_every and checkpoint_every must be >= 1"),
        ("run.keep_checkpoints=-1", "keep_checkpoints >= 0"),
        ("optim.betas=[0.9, 1.5]", "optim.betas must lie in"),
        ("decoder.num_heads=5", "not divisible by num_heads"),
        ("engine.timeout_s=0", "engine.timeout_s must be >= 1"),
        ("supervised.num_classes=1", "num_classes >= 2"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(TeacherConfig, None, [override])
    for override, message in [
        ("cache.views=-1", "cache.views must be >= 0"),
        ("geometry.size=0", "geometry:"),
        ("ema.momentum_start=1.5", "ema: momentum"),
        ("health_every=-1", "health_every"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(StudentConfig, None, [override])


def test_the_deepspeed_entry_point_reports_user_errors_in_one_line(tmp_path, capsys):
    from salt.training.student import main as student_main

    config = tmp_path / "student.yaml"
    config.write_text(f"cache: {{path: {tmp_path / 'no_cache'}}}\n")
    with pytest.raises(SystemExit) as exit_info:
        student_main(["--config", str(config)])
    assert str(exit_info.value).startswith("error: ") and "no_cache" in str(exit_info.value)


def test_resume_accepts_a_setting_added_after_the_checkpoint_at_its_default():
    from salt.training.checkpointing import config_differences

    saved = {"predictor": {"width": 64, "depth": 1}}
    defaults = {"predictor": {"width": 384, "depth": 12, "pos_embed": "sincos3d"}}
    now = {"predictor": {"width": 64, "depth": 1, "pos_embed": "sincos3d"}}
    assert config_differences(saved, now, defaults=defaults) == []
    changed = {"predictor": {"width": 64, "depth": 1, "pos_embed": "rope"}}
    assert config_differences(saved, changed, defaults=defaults) == ["predictor.pos_embed: checkpoint None, now 'rope'"]
    assert config_differences(saved, now) == ["predictor.pos_embed: checkpoint None, now 'sincos3d'"]


def test_resume_accepts_a_retired_setting_at_its_no_op_value():
    """Benchmark-only settings since removed (data.preload_batches, data.reuse_first_batch) do
    not block resuming a checkpoint that saved them at the value that trained as today's code."""
    from salt.training.checkpointing import config_differences

    now = {"data": {"batch_size": 4, "replay_every": 0}}
    defaults = {"data": {"batch_size": 16, "replay_every": 0}}
    assert config_differences({"data": {"batch_size": 4, "preload_batches": 0}}, now, defaults=defaults) == []
    assert config_differences({"data": {"batch_size": 4, "reuse_first_batch": False}}, now, defaults=defaults) == []
    assert config_differences({"data": {"batch_size": 4, "preload_batches": 3}}, now, defaults=defaults) == [
        "data.preload_batches: checkpoint 3, a setting this version no longer has"
    ]
    # A teacher of pixels.norm_pix: true (per-channel targets) resumes as pixels.norm: channel only.
    defaults = {"pixels": {"norm": "channel"}}
    assert config_differences({"pixels": {"norm_pix": True}}, {"pixels": {"norm": "channel"}}, defaults=defaults) == []
    assert config_differences({"pixels": {"norm_pix": True}}, {"pixels": {"norm": "patch"}}, defaults=defaults) == [
        "pixels.norm: checkpoint None, now 'patch'"
    ]
    assert config_differences({"pixels": {"norm_pix": False}}, {"pixels": {"norm": "none"}}, defaults=defaults)[0] == (
        "pixels.norm: checkpoint None, now 'none'"
    )


def test_schedules_that_cannot_be_meant_are_warned_with_the_key_to_set():
    from salt.training.config import OptimConfig, RunConfig, schedule_warnings

    assert (
        schedule_warnings(OptimConfig(steps=100, warmup_steps=10), RunConfig(log_every=10, checkpoint_every=50)) == []
    )
    found = schedule_warnings(OptimConfig(steps=20, warmup_steps=40), RunConfig(log_every=50, checkpoint_every=200))
    assert [line.split()[0] for line in found] == ["optim.warmup_steps", "run.log_every", "run.checkpoint_every"]
    assert all(" — set " in line for line in found)
