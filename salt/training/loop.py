"""The one training loop: stage 1, stage 2 and the EMA baseline all run through `train`.

A `Stage` says what differs between them: the objective (model parts, targets, loss, hooks),
where micro-batches come from (`make_batches(start_micro_step)`), what a checkpoint must share
with a resumed run, and the exported encoder's name. The loop reads top to bottom: fetch, to
device, forward, backward, step (`train_step`), log, agree, checkpoint. Around it: the engine
and the process group (`engine`), the run folder with its lock, status and checkpoints
(`run_folder`, `checkpointing`), measurements and the report (`metrics`). "Step" is an
optimiser step; a micro-step is one micro-batch (optim.grad_accum of them per step).

At the end of every step the ranks agree (one small all-reduce) on whether any of them was
signalled (`run.stop_signals`) or failed to write its records; a signal ends the run after
that step with a checkpoint and exit status 75 (`Interrupted`), a failure with its error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from salt.config import override_argument, to_dict
from salt.runtime.loader_workers import close_workers
from salt.runtime.preemption import Interrupted, StopSignals, signal_name
from salt.training import checkpointing
from salt.training.engine import Distributed, agree, build_engine, free_port, init_distributed, set_schedules
from salt.training.errors import TrainingError
from salt.training.metrics import BadVideos, FlopCount, Report, Window
from salt.training.objectives import Objective
from salt.training.run_folder import DATA_ORDER, RunFolder
from salt.training.schedules import Cosine, WarmupCosine

__all__ = [
    "Distributed",
    "Stage",
    "TrainResult",
    "TrainingError",
    "describe",
    "free_port",
    "init_distributed",
    "launcher_main",
    "train",
]


@dataclass
class Stage:
    """What one training stage brings to the loop."""

    config: Any  # TeacherConfig or StudentConfig: its optim, engine, run and data.batch_size are read here
    objective: Objective
    make_batches: Callable[[int], Iterable]  # micro-batches from a rank's micro-step on
    export_name: str  # teacher.pt, supervised.pt, student.pt
    # The parts of a config dict that must not change across a resume (geometry, model, data
    # order); a checkpoint whose parts differ is refused.
    compatible_keys: Callable[[dict], dict]
    command: str  # for messages: "salt train-teacher", "salt train-student"
    max_bad_videos: int = 0
    client_extra: dict = field(default_factory=dict)  # more a checkpoint records and a resume must match

    def client(self, world_size: int) -> dict:
        """What every checkpoint records beside the weights."""
        optim = self.config.optim
        schedule = ("steps", "warmup_steps", "lr_start", "lr_peak", "lr_final", "wd_start", "wd_final")
        return {
            "config": self.compatible_keys(to_dict(self.config)),
            "world_size": world_size,
            "global_batch": self.config.data.batch_size * optim.grad_accum * world_size,
            "data_order": DATA_ORDER,
            "schedule": {key: getattr(optim, key) for key in schedule},
            **self.client_extra,
        }


@dataclass
class TrainResult:
    export_path: Path | None  # None when run.stop_at ended the run before optim.steps
    step: int  # optimiser steps done
    objective: Objective  # the trained module (on its device, in its training precision)


def describe(result: TrainResult) -> str:
    """The last line a training command prints."""
    if result.export_path is not None:
        return f"exported {result.export_path}"
    return f"stopped after step {result.step} (run.stop_at); continue with --resume"


def launcher_main(
    description: str, run_stage: Callable[[str, list[str], bool], TrainResult], argv: list[str] | None = None
) -> None:
    """Entry point for `deepspeed salt/train_*.py`: --config, --set, --resume, and the launcher's --local_rank."""
    import argparse

    from salt.errors import one_line_errors

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", type=override_argument
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from salt.runtime.quiet_logs import quiet_third_party

    quiet_third_party()
    with one_line_errors():
        result = run_stage(args.config, args.overrides, args.resume)
        if dist.get_rank() == 0:
            print(describe(result))


def train(stage: Stage, dist_info: Distributed, *, resume: bool) -> TrainResult:
    """Train `stage.objective` for `optim.steps` optimiser steps and export its encoder; with
    `run.stop_at`, stop early after a checkpoint that `resume` continues from; on a stop
    signal, after the step in progress with a checkpoint (`Interrupted`)."""
    config, objective = stage.config, stage.objective
    optim, run, world = config.optim, config.run, dist_info.world_size
    with StopSignals(run.stop_signals) as stop:
        folder = RunFolder(config, dist_info, stage.client(world), stage.command)
        try:
            point = folder.open(resume, stage.compatible_keys(to_dict(type(config)())))
            engine, optimizer = build_engine(
                config, objective, world, load_universal=point is not None and point.universal
            )
            start_step = folder.load(engine, point, optim.steps)
            last_step = min(optim.steps, run.stop_at) if run.stop_at > 0 else optim.steps
            _loop(stage, engine, optimizer, folder, stop, dist_info, start_step, last_step)
            if last_step < optim.steps:
                folder.status("stopped", step=last_step)
                return TrainResult(None, last_step, engine.module)
            export_path = Path(run.out_dir) / stage.export_name
            meta = {"step": optim.steps, "config": to_dict(config)}
            checkpointing.export(
                engine,
                objective,
                folder.checkpoints,
                checkpointing.tag_of(optim.steps),
                export_path,
                dist_info.rank,
                meta,
            )
            folder.status("finished", step=optim.steps, export=str(export_path))
            return TrainResult(export_path, last_step, engine.module)
        except (TrainingError, OSError) as err:
            folder.status("failed", error=str(err))
            raise
        finally:
            folder.close()


def _loop(stage: Stage, engine, optimizer, folder: RunFolder, stop, dist_info, start_step: int, last_step: int):
    config = stage.config
    optim, run, world = config.optim, config.run, dist_info.world_size
    lr_at = WarmupCosine(optim.lr_start, optim.lr_peak, optim.lr_final, optim.warmup_steps, optim.steps)
    wd_at = Cosine(optim.wd_start, optim.wd_final, optim.steps)
    micro_batches = iter(stage.make_batches(start_step * optim.grad_accum))
    bad_videos, flops = BadVideos(stage.max_bad_videos), FlopCount(optim.grad_accum * world, start_step)
    report, window = Report(run, dist_info.rank, start_step, optim.steps), Window()
    try:
        _stop_if_agreed(folder, stop, report, dist_info, start_step, bad_videos, engine, saved=True)
        for step in range(start_step, last_step):
            step_start = time.perf_counter()
            set_schedules(optimizer, lr_at(step), wd_at(step))
            for _ in range(optim.grad_accum):
                train_step(
                    engine, micro_batches, window, bad_videos, flops, folder, step, config.data.batch_size * world
                )
            engine.module.after_step(step)
            flops.add_step()
            window.seconds += time.perf_counter() - step_start
            done = step + 1
            if done % run.log_every == 0 or done == last_step:
                grad_norm = engine.get_global_grad_norm()
                record = window.record(
                    done, lr_at(step), wd_at(step), grad_norm, optim.grad_accum, flops.total, len(bad_videos.videos)
                )
                report.write(record)
                window = Window()
            report.step_done()
            saved = done % run.checkpoint_every == 0 or done == last_step
            if saved:
                folder.save(engine, done, bad_videos.videos)
            _stop_if_agreed(folder, stop, report, dist_info, done, bad_videos, engine, saved)
    finally:
        close_workers(micro_batches)
        report.close()


def train_step(engine, micro_batches, window: Window, bad_videos, flops, folder, step: int, samples: int) -> None:
    """One micro-step: fetch, to device, forward, backward, and the optimiser step once the
    micro-batches of a step are in (DeepSpeed counts them)."""
    batch = window.timed(next, micro_batches)  # the wait for the loader is measured
    bad_videos.add(getattr(batch, "skipped", []))
    batch = batch.to(engine.device, non_blocking=True)
    flops.measure_once(engine.module, batch)
    loss, metrics = engine(batch)
    finite = _finite_flag(loss)  # reduced over ranks, read after backward is queued
    engine.backward(loss)
    if not bool(finite.item() == 1.0):  # the step's one device sync; weights change only in step()
        folder.stop_at_non_finite(engine, batch, loss, step, bad_videos.videos)
    engine.step()
    window.add(loss, metrics, samples)


def _stop_if_agreed(folder: RunFolder, stop: StopSignals, report: Report, dist_info, step: int, bad, engine, saved):
    """Agree with the other ranks on stopping after `step`: for a signal any rank received
    (checkpoint, status, `Interrupted`), or for a record rank 0 could not write (its error)."""
    signal_code, failed = agree([float(stop.code), 1.0 if report.failure else 0.0], dist_info.device)
    if failed:
        if report.failure is not None:
            raise report.failure
        raise TrainingError("rank 0 could not write the run's records (its line says why)", every_rank=True)
    if not signal_code:
        return
    name = signal_name(int(signal_code))
    if step == 0:
        folder.status("preempted", step=0, signal=name, checkpoint=None, exit_status=Interrupted.exit_status)
        raise Interrupted(
            f"preempted before step 1 by {name}: nothing to save yet — rerun the same command with --resume"
        )
    checkpoint = folder.checkpoints / checkpointing.tag_of(step)
    if not saved:
        checkpoint = folder.save(engine, step, bad.videos)
    folder.status("preempted", step=step, signal=name, checkpoint=str(checkpoint), exit_status=Interrupted.exit_status)
    raise Interrupted(
        f"preempted at step {step} by {name}: checkpoint saved in {checkpoint} — rerun the same command with --resume"
    )


def _finite_flag(loss: torch.Tensor) -> torch.Tensor:
    """1.0 on every rank if every rank's loss is finite, else 0.0: one rank's NaN stops all of
    them at the same step. Computed on the loss's device, so nothing waits until it is read."""
    flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag
