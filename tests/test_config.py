import ast
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
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
        ("geometry.size=-1", "geometry:"),
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


# ----------------------------------------------------------------------------- keys that messages and docs suggest

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDERS = {"a.b", "section.key", "KEY"}  # how the docs write "a key" in general


def config_classes() -> tuple:
    from salt.evaluation.probe import ProbeConfig
    from salt.tools.reproduce_chain import ReproduceConfig
    from salt.training.config import StudentConfig, TeacherConfig

    return StudentConfig, TeacherConfig, ProbeConfig, ReproduceConfig


def accepted(key: str) -> bool:
    """Whether some config's loader takes `key` (`encoder.overrides.X` only for architecture keys)."""
    from salt.models import ARCH_KEYS

    for cls in config_classes():
        node, parts = cls, key.split(".")
        for i, part in enumerate(parts):
            hints = typing.get_type_hints(node) if dataclasses.is_dataclass(node) else {}
            if part not in hints:
                break
            node = hints[part]
            if typing.get_origin(node) is dict:  # encoder.overrides, engine.extra
                rest = parts[i + 1 :]
                if part != "overrides" or (len(rest) == 1 and rest[0] in ARCH_KEYS):
                    return True
                break
        else:
            return True
    return False


def suggested_keys() -> dict[str, set[str]]:
    """Config keys the project tells a user to set, and where: `--set KEY=…` anywhere (code, docs,
    configs, Makefile); `section.key` in salt's error and warning messages; `section.key: value` or
    `section.key=value` in backticks in README.md and docs/ (docs/results.md, a record of past runs,
    only for its --set lines); the keys check_against_manifest builds its hints from."""
    from salt.training.student import MANIFEST_KEYS

    sections = sorted(
        {
            f.name
            for cls in config_classes()
            for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name])
            or typing.get_origin(typing.get_type_hints(cls)[f.name]) is dict
        }
    )
    key = r"((?:%s)(?:\.[a-z_]+)+)" % "|".join(sections)
    in_message = re.compile(r"(?<![\w./-])" + key + r"(?=[=:]| \d| to | must| is|$|[ ,;)`'])")
    in_backticks = re.compile(key + r"(?:: |=)\S.*")
    set_flag = re.compile(r"--(?:set|student-set|teacher-set)[ =]+([A-Za-z_][\w.]*)=")
    found: dict[str, set[str]] = {value: {"salt/training/student.py"} for value in MANIFEST_KEYS.values()}

    def add(name: str, where: Path) -> None:
        if name not in PLACEHOLDERS:
            found.setdefault(name, set()).add(str(where.relative_to(REPO)))

    for path in sorted((REPO / "salt").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for match in set_flag.finditer(node.value):
                    add(match.group(1), path)
            called = getattr(getattr(node, "func", None), "attr", getattr(getattr(node, "func", None), "id", ""))
            if isinstance(node, ast.Raise) or called in ("warn", "warning", "echo", "append"):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        for match in in_message.finditer(sub.value):
                            add(match.group(1), path)
    texts = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md", REPO / "Makefile"]
    for path in texts + sorted(p for p in (REPO / "configs").rglob("*") if p.is_file()):
        text = path.read_text()
        for match in set_flag.finditer(text):
            add(match.group(1), path)
        if path.suffix == ".md" and path.name != "results.md":
            for span in re.findall(r"`([^`\n]+)`", text):
                match = in_backticks.fullmatch(span)
                if match:
                    add(match.group(1), path)
    return found


def test_every_key_a_message_or_a_doc_suggests_is_one_the_loader_accepts():
    found = suggested_keys()
    assert {"cache.path", "geometry.size", "encoder.arch", "optim.steps", "run.out_dir"} <= set(found)
    refused = {name: sorted(where) for name, where in found.items() if not accepted(name)}
    assert not refused, f"suggested but refused by the config loader: {refused}"
    assert not accepted("encoder.pos_embed") and accepted("encoder.overrides.pos_embed")  # the example


def test_a_students_geometry_patch_and_tubelet_default_to_the_caches():
    from salt.training.config import StudentConfig, with_cache_geometry

    cached = {"frames": 8, "frame_step": 4, "size": 32, "patch": 8, "tubelet": 2}
    cfg = load_config(StudentConfig, REPO / "configs/student/vit_tiny.yaml")
    assert (cfg.geometry.frames, cfg.geometry.size, cfg.encoder.overrides) == (0, 0, {})  # left to the cache
    filled = with_cache_geometry(cfg, cached)
    assert (filled.geometry.frames, filled.geometry.frame_step, filled.geometry.size) == (8, 4, 32)
    assert filled.encoder.overrides == {"patch_size": 8}  # vit_tiny_rope's own tubelet (2) is the cache's
    given = load_config(
        StudentConfig, REPO / "configs/student/vit_tiny.yaml", ["geometry.size=64", "encoder.overrides.patch_size=16"]
    )
    kept = with_cache_geometry(given, cached)  # what was given stays, for check_against_manifest to refuse
    assert kept.geometry.size == 64 and kept.encoder.overrides == {"patch_size": 16} and kept.geometry.frames == 8
