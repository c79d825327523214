"""Training checkpoints that survive a kill at any instant: save, resume, export.

A checkpoint `checkpoints/stepN/` is committed in this order:
1. every rank writes its DeepSpeed files (`save_checkpoint(..., save_latest=False)`) and fsyncs them;
2. after a barrier, rank 0 writes `stepN/salt_run_state.json` atomically (temporary file, fsync,
   rename, fsync of the folder). From this instant the checkpoint is complete;
3. rank 0 points `checkpoints/latest` at it, atomically too (for people and scripts: resume
   does not read it);
4. rank 0 deletes the checkpoints beyond `keep`, each one's run-state file first, so that a
   kill during deletion leaves an incomplete folder, never a "complete" one missing weights.
A folder without its run-state file is incomplete whatever `latest` says, and `--resume` takes
the newest complete one. The run state is JSON so the settings can be checked before torch
loads anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch.distributed as dist

from salt.models import save_encoder
from salt.models.checkpoint import load_state_dict_strict
from salt.training.errors import TrainingError

RUN_STATE = "salt_run_state.json"  # per checkpoint: step and settings, readable without torch
POINTER = "latest"


def tag_of(step: int) -> str:
    return f"step{step}"


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Committed checkpoint folders, oldest first (a folder counts once its run state exists)."""
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.glob("step*") if p.name[4:].isdigit() and (p / RUN_STATE).is_file()]
    return sorted(found, key=lambda p: int(p.name[4:]))


def save(engine, checkpoint_dir: Path, step: int, client: dict, rank: int, keep: int) -> None:
    """Commit the checkpoint of `step` on every rank (see the module docstring for the order)."""
    tag = tag_of(step)
    folder = checkpoint_dir / tag
    if rank == 0 and folder.exists():  # an incomplete leftover of a killed run: start it clean
        _retract(folder)
        shutil.rmtree(folder)
    dist.barrier()
    # The objective's own state (e.g. an EMA encoder kept outside the engine) rides along.
    state = {**client, "step": step, "objective_state": engine.module.extra_state()}
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=state, save_latest=False)
    _fsync_tree(folder)
    dist.barrier()  # every rank's files are on disk before the checkpoint is called complete
    if rank == 0:
        write_atomic(folder / RUN_STATE, json.dumps({**client, "step": step}, indent=1))
        write_atomic(checkpoint_dir / POINTER, tag)
        if keep > 0:
            older = [
                p
                for p in checkpoint_dir.glob("step*")
                if p.is_dir() and p.name[4:].isdigit() and int(p.name[4:]) < step
            ]
            committed = [p for p in complete_checkpoints(checkpoint_dir) if int(p.name[4:]) < step]
            kept = set(committed[-(keep - 1) :]) if keep > 1 else set()  # with the new one: `keep` in all
            for old in sorted(older, key=lambda p: int(p.name[4:])):
                if old not in kept:  # incomplete leftovers go too
                    _retract(old)
                    shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def find_resume_point(checkpoint_dir: Path, out_dir: Path, announce: bool = True) -> Path | None:
    """The newest complete checkpoint; None (start at step 0) when a run was started in
    `out_dir` but none was committed. A folder holding no run at all is refused. Call it
    before the run writes anything into `out_dir`."""
    complete = complete_checkpoints(checkpoint_dir)
    if complete:
        pointed = _read_pointer(checkpoint_dir)
        if pointed and pointed != complete[-1].name and announce:
            print(
                f"--resume: {checkpoint_dir / POINTER} names {pointed}, but the newest complete checkpoint is "
                f"{complete[-1].name}; resuming from {complete[-1].name}",
                flush=True,
            )
        return complete[-1]
    if not (out_dir / "config.yaml").is_file() and not checkpoint_dir.is_dir():
        raise TrainingError(
            f"--resume: no checkpoint in {checkpoint_dir} and no run was started in {out_dir}; "
            "drop --resume to start fresh, or check run.out_dir"
        )
    if announce:
        print(
            f"--resume: no complete checkpoint in {checkpoint_dir} (stopped "
            "before the first one was committed); starting at step 0",
            flush=True,
        )
    return None


def load(engine, folder: Path, client: dict, defaults: dict | None = None) -> int:
    """Check the saved settings of the checkpoint `folder` (the JSON beside the weights, read
    first), then load its state into `engine`. Returns the step to continue from. A setting
    the checkpoint predates is accepted when it has its default value in `defaults` (the
    same config section, defaults only): the checkpoint was made with that behaviour."""
    checkpoint_dir = folder.parent
    state_file = folder / RUN_STATE
    try:
        saved = json.loads(state_file.read_text())
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"--resume: {state_file} is unreadable ({err}); delete {folder} to resume from the one before"
        ) from err
    differences = config_differences(saved.get("config", {}), client["config"], defaults=defaults)
    for key, value in client.items():
        if key not in ("config", "bad_videos") and saved.get(key) != value:
            differences.append(f"{key}: checkpoint {saved.get(key)!r}, now {value!r}")
    if differences:
        raise TrainingError(f"--resume: {folder} was made with other settings: " + "; ".join(differences))
    try:
        path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=folder.name)
    except Exception as err:  # DeepSpeed raises many kinds; all mean "these files cannot be used"
        raise TrainingError(f"--resume: checkpoint {folder} cannot be loaded ({type(err).__name__}: {err})") from err
    if path is None:
        raise TrainingError(f"--resume: checkpoint {folder} is missing or incomplete")
    engine.module.load_extra_state(client_state.get("objective_state", {}))
    return int(saved["step"])


def has_committed_run(checkpoint_dir: Path) -> bool:
    return bool(complete_checkpoints(checkpoint_dir)) or (checkpoint_dir / POINTER).exists()


_ABSENT = object()


# Settings since removed, with the value at which they behaved as today's code does: a
# checkpoint that saved them at that value resumes; at any other value it is refused. Users'
# checkpoints hold them: pixels.norm_pix: true was VideoMAE's per-channel targets, today's
# `pixels.norm: channel` (the default, so such a teacher resumes unless its config now asks for
# another normalisation); every student checkpoint before 2026-12-03 saved data.replay_every: 0
# (a benchmark mode, now `python -m salt.tools.replayed_student`), and older ones the two before it.
RETIRED_SETTINGS = {
    "data.reuse_first_batch": False,
    "data.preload_batches": 0,
    "data.replay_every": 0,
    "pixels.norm_pix": True,
}


def config_differences(saved: Any, now: Any, prefix: str = "", defaults: Any = None) -> list[str]:
    """Dotted keys whose values differ between a checkpoint's config and the current one; a key
    the checkpoint lacks is no difference while it holds its default (from `defaults`), nor is
    a retired key the checkpoint holds at its no-op value (`RETIRED_SETTINGS`)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        defaults = defaults if isinstance(defaults, dict) else {}
        for key in sorted(set(saved) | set(now)):
            dotted = f"{prefix}.{key}" if prefix else key
            value = saved.get(key, _ABSENT)
            if value is _ABSENT and key in defaults and now.get(key) == defaults[key]:
                continue  # a setting added after the checkpoint was made, at its default
            if key not in now and dotted in RETIRED_SETTINGS:
                if value == RETIRED_SETTINGS[dotted]:
                    continue
                found.append(f"{dotted}: checkpoint {value!r}, a setting this version no longer has")
                continue
            found += config_differences(None if value is _ABSENT else value, now.get(key), dotted, defaults.get(key))
        return found
    return [] if saved == now else [f"{prefix}: checkpoint {saved!r}, now {now!r}"]


def export(engine, objective, checkpoint_dir: Path, tag: str, path: Path, rank: int, meta: dict) -> None:
    """The encoder as fp32, consolidated in process from the ZeRO checkpoint, in our format."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if rank == 0:
        if engine.zero_optimization_stage() > 0:
            # its "Processing zero checkpoint …" lines and "Loading checkpoint shards" bar
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
        else:
            state = {k: v.float() for k, v in engine.module.state_dict().items()}
        encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        encoder = type(objective.encoder)(objective.encoder.arch)
        load_state_dict_strict(encoder, encoder_state, str(path))
        save_encoder(path, encoder, kind=objective.kind, meta=meta)
    dist.barrier()


def write_atomic(path: Path, text: str) -> None:
    """Write, fsync, rename over `path`, fsync the folder: readers see the old or the new file."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _read_pointer(checkpoint_dir: Path) -> str | None:
    try:
        return (checkpoint_dir / POINTER).read_text().strip() or None
    except OSError:
        return None


def _retract(folder: Path) -> None:
    """Make a checkpoint incomplete before touching its weights."""
    state = folder / RUN_STATE
    if state.exists():
        state.unlink()
        _fsync_dir(folder)


def _fsync_tree(folder: Path) -> None:
    """Flush what this rank (and any other on this node) wrote for the checkpoint."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
