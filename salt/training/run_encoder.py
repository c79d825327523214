"""The encoder of a training run's checkpoint, for `salt export RUN_DIR` (or a step folder of it,
or a file inside one): the newest committed checkpoint's weights (or the step named), the arch
from the run's resolved `config.yaml`, and the clip's frame step.

A run folder holds `config.yaml` and `checkpoints/stepN/` (DeepSpeed's files, ZeRO-partitioned);
those are consolidated in this process, quietly, exactly as the run exports `teacher.pt` /
`student.pt` at its end.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from salt.training.checkpointing import RUN_STATE, complete_checkpoints
from salt.training.errors import TrainingError


@dataclass(frozen=True)
class RunCheckpoint:
    run_dir: Path
    step_dir: Path

    @property
    def label(self) -> str:
        return f"{self.run_dir} at {self.step_dir.name}"


def find_run_checkpoint(path: str | Path) -> RunCheckpoint | None:
    """The checkpoint `path` names: a run folder (its newest committed checkpoint), its
    checkpoints/ folder, a step folder, or a file in one; None when `path` is none of these."""
    path = Path(path)
    step_dir = path.parent if path.is_file() else path
    if step_dir.name.startswith("step") and step_dir.name[4:].isdigit() and step_dir.parent.name == "checkpoints":
        run_dir = step_dir.parent.parent
        if not (run_dir / "config.yaml").is_file():
            return None
        if not (step_dir / RUN_STATE).is_file():
            raise TrainingError(
                f"{step_dir} is not a committed checkpoint (no {RUN_STATE}: its run was stopped while writing it) — "
                f"export {run_dir} for its newest committed one"
            )
        return RunCheckpoint(run_dir, step_dir)
    run_dir = path.parent if path.is_dir() and path.name == "checkpoints" else path
    if not (path.is_dir() and (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir()):
        return None
    committed = complete_checkpoints(run_dir / "checkpoints")
    if not committed:
        raise TrainingError(
            f"{run_dir}/checkpoints holds no committed checkpoint yet — train longer, or pass an exported encoder"
        )
    return RunCheckpoint(run_dir, committed[-1])


def run_config(run_dir: Path):
    """The run's resolved config: a StudentConfig (it has `targets`) or a TeacherConfig."""
    import yaml

    from salt.config import load_config
    from salt.training.config import StudentConfig, TeacherConfig

    saved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return load_config(StudentConfig if "targets" in saved else TeacherConfig, run_dir / "config.yaml")


def clip_of(cfg) -> tuple[int, int, int]:
    """(frames, frame_step, size) of a run's clips."""
    from salt.training.config import StudentConfig

    if isinstance(cfg, StudentConfig):
        return cfg.geometry.frames, cfg.geometry.frame_step, cfg.geometry.size
    view = cfg.data.view
    return view.frames, view.frame_step, view.size


def load_run_encoder(checkpoint: RunCheckpoint):
    """(encoder in fp32, its arch, the run's frame step) of a committed checkpoint."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from salt.models import build_encoder
    from salt.models.checkpoint import load_state_dict_strict

    cfg = run_config(checkpoint.run_dir)
    frames, frame_step, size = clip_of(cfg)
    if not (frames and size):
        raise TrainingError(f"{checkpoint.run_dir}/config.yaml does not record the clip geometry it trained on")
    encoder = build_encoder(cfg.encoder.arch, **{"img_size": size, "num_frames": frames, **cfg.encoder.overrides})
    # DeepSpeed prints "Processing zero checkpoint …" and draws a "Loading checkpoint shards" bar.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.step_dir.parent), tag=checkpoint.step_dir.name)
    encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    load_state_dict_strict(encoder, encoder_state, str(checkpoint.step_dir))
    return encoder.float(), encoder.arch, frame_step
