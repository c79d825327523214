"""The run folder (`run.out_dir`), built with everything a run saves there.

- `run.lock`: one trainer at a time (`salt.runtime.locks.HolderLock`, taken by rank 0 before
  anything is written; a killed run's lock is taken over). Every other rank checks that it sees
  the same lock file: ranks on nodes that do not share the folder are refused by name.
- `config.yaml`: the resolved config; `status.json`: `running`, `preempted` (with the step, the
  signal and the checkpoint), `finished` or `failed` — what a requeue script reads, since a
  launcher's own exit status does not always carry the run's (docs/cluster.md).
- `checkpoints/`: committed by `checkpointing.save`; a resume is checked against the settings
  each checkpoint records (`client`), which may change only in the number of ranks (with the
  global batch kept) and in the schedule (reported in a line).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from salt.config import save_config
from salt.runtime.locks import HolderLock, LockHeld
from salt.training import checkpointing
from salt.training.config import schedule_warnings
from salt.training.engine import Distributed, agree
from salt.training.errors import TrainingError
from salt.training.schedules import WarmupCosine

LOCK = "run.lock"
STATUS = "status.json"
# Version of the sample order (salt/training/data.py). 2: a global order, the same on any
# number of ranks; checkpoints before it (no `data_order`) ordered samples per rank.
DATA_ORDER = 2


@dataclass
class ResumePoint:
    folder: Path  # the complete checkpoint to continue from
    saved: dict  # its run state: step and settings
    universal: bool  # made on another number of ranks: loaded through its universal form


class RunFolder:
    def __init__(self, config: Any, dist_info: Distributed, client: dict, holder: str):
        self.config, self.dist = config, dist_info
        self.out_dir = Path(config.run.out_dir)
        self.checkpoints = self.out_dir / "checkpoints"
        self.client = client  # what every checkpoint records beside the weights (checked on resume)
        self.lock = HolderLock(self.out_dir / LOCK, holder)
        self.status_fields: dict = {}
        self.held = False  # rank 0 holds the lock: only then does it write into the folder
        self.started = False  # the run passed every check and wrote its config: it has a status

    # -- opening -----------------------------------------------------------------------------
    def open(self, resume: bool, defaults: dict) -> ResumePoint | None:
        """Take the folder (rank 0), check every rank sees it, and pick the checkpoint to resume
        from (None: step 0). Every refusal is raised on all ranks alike, before anything is written."""
        problem = self._take() if self.dist.rank == 0 else None
        self._raise_if_any(self._from_rank0(problem))
        self._raise_if_any(self._see(self.out_dir / LOCK, self._from_rank0(self.lock.token)))
        found, problem = self._resume_folder(resume) if self.dist.rank == 0 else (None, None)
        self._raise_if_any(self._from_rank0(problem))
        found = self._from_rank0(found)
        point = None
        if found is not None:
            self._raise_if_any(self._see(found / checkpointing.RUN_STATE, None))
            point = self._check_resume(found, defaults)
        if self.dist.rank == 0:
            for line in schedule_warnings(self.config.optim, self.config.run):
                print(f"warning: {line}", file=sys.stderr, flush=True)
            save_config(self.config, self.out_dir / "config.yaml")
            self.status("running", step=int(point.saved["step"]) if point else 0)
        self.started = True
        return point

    def _resume_folder(self, resume: bool) -> tuple[Path | None, str | None]:
        """Rank 0: the checkpoint to resume from, or why the run cannot start here."""
        if not resume:
            if checkpointing.has_committed_run(self.checkpoints):
                return None, (
                    f"{self.checkpoints} already holds a run; pass --resume to continue it, or choose another "
                    "run.out_dir"
                )
            return None, None
        try:
            return checkpointing.find_resume_point(self.checkpoints, self.out_dir), None
        except TrainingError as err:
            return None, str(err)

    def _take(self) -> str | None:
        """Rank 0: the lock, or why it cannot be taken (one line)."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            return f"run.out_dir {self.out_dir} is a file, not a folder — choose a folder (new, or a run to resume)"
        try:
            self.lock.acquire()
            self.held = True
        except LockHeld as err:
            return f"{err}"
        except OSError as err:
            from salt.errors import one_line

            return (one_line(err) or f"error: {err}").removeprefix("error: ")
        return None

    def _from_rank0(self, value):
        if self.dist.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _see(self, path: Path, token: str | None) -> str | None:
        """Why this rank cannot see rank 0's `path` (with `token` in it, for the lock), if it cannot."""
        try:
            seen = path.is_file() and (token is None or json.loads(path.read_text()).get("token") == token)
        except (OSError, ValueError):
            seen = False
        if seen:
            return None
        return (
            f"rank {self.dist.rank} on {socket.gethostname()} cannot see {path}, which rank 0 wrote: run.out_dir must "
            "be one folder that every node shares (a shared file system), not a path on each node's own disk"
        )

    def _raise_if_any(self, problem: str | None) -> None:
        """Every rank raises when any rank has a problem: rank 0's line when it has one (printed by
        rank 0), else the rank's own line on the rank that has it."""
        if self.dist.world_size == 1:
            if problem:
                raise TrainingError(problem)
            return
        if not agree([1.0 if problem else 0.0], self.dist.device)[0]:
            return
        first = self._from_rank0(problem)
        if first is not None:
            raise TrainingError(first, every_rank=True)
        if problem is not None:
            raise TrainingError(problem)
        raise TrainingError("another rank of the run stopped (its line says why)", every_rank=True)

    def _check_resume(self, folder: Path, defaults: dict) -> ResumePoint:
        saved = checkpointing.read_run_state(folder)
        checkpointing.check_settings(folder, saved, self.client, defaults)
        self._check_global_batch(folder, saved)
        if self.dist.rank == 0:
            for line in self._resume_notes(folder, saved):
                print(f"--resume: {line}", flush=True)
        changed = saved.get("world_size", self.dist.world_size) != self.dist.world_size
        universal = changed and checkpointing.needs_universal(folder)
        if universal and self.config.engine.zero_stage == 3:
            raise TrainingError(
                f"--resume: {folder} was made on {_ranks(saved['world_size'])} with ZeRO-3, which resumes only on "
                f"that number of ranks here — run it on {_ranks(saved['world_size'])}",
                every_rank=True,
            )
        return ResumePoint(folder, saved, universal)

    def _check_global_batch(self, folder: Path, saved: dict) -> None:
        before = saved.get("global_batch") or _legacy_global_batch(saved)
        now = self.client["global_batch"]
        if before in (None, now):
            return
        micro, accum, ranks = self.config.data.batch_size, self.config.optim.grad_accum, self.dist.world_size
        ways = [f"--set optim.grad_accum={before // (micro * ranks)}"] if before % (micro * ranks) == 0 else []
        if before % (accum * ranks) == 0:
            ways.append(f"--set data.batch_size={before // (accum * ranks)}")
        fix = " or ".join(ways) if ways else f"choose data.batch_size × optim.grad_accum × ranks = {before}"
        raise TrainingError(
            f"--resume: {folder} trained with a global batch of {before} samples "
            f"({_split(saved)}); now {now} = {micro} × {accum} × {_ranks(ranks)} (data.batch_size × optim.grad_accum "
            f"× ranks) — keep the global batch: {fix}",
            every_rank=True,
        )

    def _resume_notes(self, folder: Path, saved: dict) -> list[str]:
        notes = []
        if saved.get("world_size", self.dist.world_size) != self.dist.world_size:
            before, now = _ranks(saved["world_size"]), _ranks(self.dist.world_size)
            notes.append(
                f"{folder.name} was made on {before}, this run has {now}: the global batch of "
                f"{self.client['global_batch']} samples is kept, the optimiser state re-split"
            )
        if "data_order" not in saved:
            notes.append(
                f"{folder.name} predates the sample order that is the same on any number of ranks: the run continues "
                "in that order from here, so part of the current epoch may be seen twice or not at all"
            )
        before, now = saved.get("schedule"), self.client["schedule"]
        if before and before != now:
            step = int(saved["step"])
            changed = ", ".join(f"optim.{k} {before.get(k)} → {v}" for k, v in now.items() if before.get(k) != v)
            notes.append(
                f"the schedule changes ({changed}): the learning rate at step {step} goes from "
                f"{_lr(before, step):.3g} to {_lr(now, step):.3g}"
            )
        return notes

    # -- checkpoints and status --------------------------------------------------------------
    def load(self, engine, point: ResumePoint | None, steps: int) -> int:
        """The optimiser step to continue from (0 for a fresh run), the state loaded."""
        if point is None:
            return 0
        start_step = int(point.saved["step"])
        if start_step >= steps:
            raise TrainingError(
                f"the checkpoint in {self.checkpoints} is already at step {start_step} of {steps}: nothing to train",
                every_rank=True,
            )
        tag = checkpointing.universal_for(point.folder, engine.device) if point.universal else None
        checkpointing.load(engine, point.folder, tag)
        return start_step

    def save(self, engine, step: int, bad_videos: dict[str, str]) -> Path:
        client = {**self.client, "bad_videos": bad_videos}
        checkpointing.save(engine, self.checkpoints, step, client, self.dist.rank, self.config.run.keep_checkpoints)
        return self.checkpoints / checkpointing.tag_of(step)

    def stop_at_non_finite(self, engine, batch, loss: torch.Tensor, step: int, bad_videos: dict[str, str]) -> None:
        """Save the last good state (backward ran, the weights did not change) and stop, naming the cause."""
        self.save(engine, step, bad_videos)
        cause = engine.module.diagnose(batch)
        raise TrainingError(
            f"loss is {loss.item()} at step {step}{f' ({cause})' if cause else ''}: stopping. The last good state is "
            f"saved in {self.checkpoints} (tag step{step}); lower the learning rate or check the data, then --resume."
        )

    def status(self, state: str, **fields) -> None:
        """Rank 0: status.json, replaced atomically (a full disk leaves the previous one)."""
        if not (self.held and (self.started or state == "running")):
            return  # a refused run leaves the folder's status as it was
        self.status_fields = {"state": state, **fields, "host": socket.gethostname(), "updated": time.time()}
        try:
            checkpointing.write_atomic(self.out_dir / STATUS, json.dumps(self.status_fields, indent=1))
        except OSError:
            if state != "failed":  # reporting a failure must not hide it
                raise

    def close(self) -> None:
        if self.held:
            self.lock.release()
            self.held = False


def _legacy_global_batch(saved: dict) -> int | None:
    """The global batch of a checkpoint made before it was recorded."""
    config = saved.get("config", {})
    micro = config.get("batch_size", config.get("data", {}).get("batch_size"))
    if micro is None or "world_size" not in saved:
        return None
    return int(micro) * int(config.get("grad_accum", 1)) * int(saved["world_size"])


def _split(saved: dict) -> str:
    ranks = saved.get("world_size")
    return _ranks(ranks) if ranks else "another split"


def _ranks(count: int) -> str:
    return f"{count} rank" if count == 1 else f"{count} ranks"


def _lr(schedule: dict, step: int) -> float:
    keys = ("lr_start", "lr_peak", "lr_final", "warmup_steps", "steps")
    return WarmupCosine(*(schedule[k] for k in keys))(step)
