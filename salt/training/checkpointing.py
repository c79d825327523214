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

Every phase ends with the ranks agreeing on its outcome (`engine.agree`), so a write that fails
on one rank (a full disk) stops all of them together: the partial folder is removed at once,
the previous checkpoint stays, and every rank raises the same error. A checkpoint resumes on
another number of ranks through DeepSpeed's universal checkpoint (`universal_for`): ZeRO's
optimiser partitions are merged and re-split for the new ranks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from salt.errors import NO_SPACE, NoSpaceLeft, no_space
from salt.models import save_encoder
from salt.models.checkpoint import load_state_dict_strict
from salt.training.engine import agree
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
    failure = None
    if rank == 0:
        try:
            if folder.exists():  # an incomplete leftover of a killed run: start it clean
                _retract(folder)
                shutil.rmtree(folder)
            folder.mkdir(parents=True)  # made here, so DeepSpeed's own makedirs cannot fail
        except OSError as err:
            failure = err
    _settle(engine, folder, failure, remove=False)
    # The objective's own state (e.g. an EMA encoder kept outside the engine) rides along.
    state = {**client, "step": step, "objective_state": engine.module.extra_state()}
    try:
        engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=state, save_latest=False)
    except Exception as err:  # a write failed after DeepSpeed's collectives: meet its closing barrier
        failure = err
        dist.barrier()
    else:
        try:
            _fsync_tree(folder)
        except OSError as err:
            failure = err
    _settle(engine, folder, failure, remove=True)  # every rank's files are on disk before it is complete
    committed = False
    if rank == 0:
        try:
            write_atomic(folder / RUN_STATE, json.dumps({**client, "step": step}, indent=1))
            committed = True
            write_atomic(checkpoint_dir / POINTER, tag)
            if keep > 0:
                _delete_older(checkpoint_dir, step, keep)
        except OSError as err:
            failure = err
    _settle(engine, folder, failure, remove=not committed)


def _delete_older(checkpoint_dir: Path, step: int, keep: int) -> None:
    older = [p for p in checkpoint_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit() and int(p.name[4:]) < step]
    committed = [p for p in complete_checkpoints(checkpoint_dir) if int(p.name[4:]) < step]
    kept = set(committed[-(keep - 1) :]) if keep > 1 else set()  # with the new one: `keep` in all
    for old in sorted(older, key=lambda p: int(p.name[4:])):
        if old not in kept:  # incomplete leftovers go too
            _retract(old)
            shutil.rmtree(old, ignore_errors=True)


def _settle(engine, folder: Path, failure: BaseException | None, remove: bool) -> None:
    """The ranks agree on one phase of a save; when a rank failed, the partial folder goes
    (`remove`, rank 0) and every rank raises: one line for a full disk, the error itself
    (with its traceback) on the rank it happened on otherwise."""
    full = failure is not None and (no_space(failure) is not None or _disk_full(folder))
    code = 2.0 if full else 1.0 if failure is not None else 0.0
    worst = agree([code], engine.device)[0]
    if worst == 0:
        return
    if remove and dist.get_rank() == 0:
        _retract(folder)
        shutil.rmtree(folder, ignore_errors=True)
    dist.barrier()
    if worst == 2:
        raise NoSpaceLeft(folder, every_rank=True) from None
    if failure is not None:
        raise failure
    raise TrainingError(f"another rank could not write the checkpoint {folder} (its lines say why); --resume continues")


def _disk_full(folder: Path) -> bool:
    """Whether writing into `folder`'s file system fails for want of space now (torch's
    checkpoint writer reports a full disk as a RuntimeError about file positions)."""
    probe = folder.parent / f".space_probe.{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(bytes(1 << 16))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        return err.errno in NO_SPACE
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return False


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


def read_run_state(folder: Path) -> dict:
    """A complete checkpoint's settings and step (the JSON beside the weights, read before torch
    loads anything)."""
    state_file = folder / RUN_STATE
    try:
        return json.loads(state_file.read_text())
    except (OSError, ValueError) as err:
        raise TrainingError(
            f"--resume: {state_file} is unreadable ({err}); delete {folder} to resume from the one before"
        ) from err


def check_settings(folder: Path, saved: dict, client: dict, defaults: dict | None = None) -> None:
    """Refuse a resume whose settings differ from the checkpoint's, naming each one. A setting
    the checkpoint predates is accepted when it has its default value in `defaults` (the same
    config section, defaults only): the checkpoint was made with that behaviour. The number of
    ranks may change (`global_batch` is checked by the loop); `schedule` and `data_order` are
    reported by the loop, not refused."""
    differences = config_differences(saved.get("config", {}), client["config"], defaults=defaults)
    for key, value in client.items():
        if key not in ("config", "bad_videos", *RESUME_MAY_CHANGE) and saved.get(key) != value:
            differences.append(f"{key}: checkpoint {saved.get(key)!r}, now {value!r}")
    if differences:
        raise TrainingError(
            f"--resume: {folder} was made with other settings: "
            + "; ".join(differences)
            + " — set them back to the checkpoint's values (--set KEY=VALUE), or start a new run in another "
            "run.out_dir"
        )


def load(engine, folder: Path, tag: str | None = None) -> None:
    """Load the checkpoint `folder` (or its universal form, `tag` under the checkpoint folder)
    into `engine`, the objective's own state included."""
    try:
        path, client_state = engine.load_checkpoint(str(folder.parent), tag=tag or folder.name)
    except Exception as err:  # DeepSpeed raises many kinds; all mean "these files cannot be used"
        raise TrainingError(f"--resume: checkpoint {folder} cannot be loaded ({type(err).__name__}: {err})") from err
    if path is None:
        raise TrainingError(f"--resume: checkpoint {folder} is missing or incomplete")
    engine.module.load_extra_state(client_state.get("objective_state", {}))


def needs_universal(folder: Path) -> bool:
    """Whether a checkpoint holds optimiser state partitioned over its ranks (ZeRO, or bf16's
    optimiser): what must be merged and re-split to resume on another number of ranks."""
    return any(folder.glob("*optim_states.pt"))


def universal_for(folder: Path, device) -> str:
    """The tag of `folder`'s universal checkpoint (`stepN/universal`), made once by rank 0 with
    DeepSpeed's ds_to_universal while the other ranks wait: ZeRO's optimiser partitions merged
    per parameter, which any number of ranks can load (`build_engine(load_universal=True)`)."""
    target = folder / "universal"
    failure = None
    if dist.get_rank() == 0 and not (target / "zero").is_dir():
        temporary = folder / ".universal.tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(folder),
            "--output_folder",
            str(temporary),
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(temporary, target)
        else:
            shutil.rmtree(temporary, ignore_errors=True)
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-1:])
            failure = TrainingError(
                f"--resume: {folder} (made on another number of ranks) could not be converted for these ranks "
                f"({tail}); resume on the number of ranks it was made on"
            )
    if agree([1.0 if failure else 0.0], device)[0]:
        raise failure or TrainingError(f"--resume: {folder} could not be converted for these ranks (rank 0 says why)")
    return f"{folder.name}/universal"


def has_committed_run(checkpoint_dir: Path) -> bool:
    return bool(complete_checkpoints(checkpoint_dir)) or (checkpoint_dir / POINTER).exists()


_ABSENT = object()


# Settings since removed, with the value at which they behaved as today's code does: a
# checkpoint that saved them at that value resumes; at any other value it is refused. Users'
# checkpoints hold them: pixels.norm_pix: true was VideoMAE's per-channel targets, today's
# `pixels.norm: channel` (the default, so such a teacher resumes unless its config now asks for
# another normalisation); every student checkpoint before 2026-12-03 saved data.replay_every: 0
# (a benchmark mode, now `python -m salt.tools.replayed_student`), and older ones the two before it.
# What may differ on resume: the number of ranks (and with it how the global batch is split)
# and the schedule, which the loop reports in a line; and whether the order predates
# `data_order` (reported too).
RESUME_MAY_CHANGE = ("world_size", "global_batch", "schedule", "data_order")
# Settings a checkpoint compared before resumes could change the number of ranks: the global
# batch they made is compared now (`global_batch`), so they may differ one by one.
SPLIT_OF_THE_GLOBAL_BATCH = ("grad_accum", "batch_size", "data.batch_size", "data.workers", "workers")

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
            if key not in now and dotted in SPLIT_OF_THE_GLOBAL_BATCH:
                continue
            if key not in now and dotted in RETIRED_SETTINGS:
                if value == RETIRED_SETTINGS[dotted]:
                    continue
                found.append(f"{dotted}: checkpoint {value!r}, a setting this version no longer has")
                continue
            found += config_differences(None if value is _ABSENT else value, now.get(key), dotted, defaults.get(key))
        return found
    return [] if saved == now else [f"{prefix}: checkpoint {saved!r}, now {now!r}"]


def export(engine, objective, checkpoint_dir: Path, tag: str, path: Path, rank: int, meta: dict) -> None:
    """The encoder as fp32, consolidated in process from the ZeRO checkpoint, in our format
    (rank 0 writes it; the ranks agree on the outcome, so a full disk stops all of them alike)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    failure = None
    if rank == 0:
        try:
            if engine.zero_optimization_stage() > 0:
                # Its "Processing zero checkpoint …" lines and its "Loading checkpoint shards" bar.
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
            else:
                state = {k: v.float() for k, v in engine.module.state_dict().items()}
            encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
            encoder = type(objective.encoder)(objective.encoder.arch)
            load_state_dict_strict(encoder, encoder_state, str(path))
            save_encoder(path, encoder, kind=objective.kind, meta=meta)
        except OSError as err:
            failure = err
    if agree([1.0 if failure is not None else 0.0], engine.device)[0]:
        if failure is not None:
            raise failure
        raise TrainingError(f"rank 0 could not write {path} (its line says why)", every_rank=True)


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
