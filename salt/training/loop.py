"""The one training loop: stage 1, stage 2 and the EMA baseline all run through `train`.

The loop owns iteration, the DeepSpeed engine, schedules and logging; checkpoints (commit,
resume, export) live in `checkpointing`, measurements in `metrics`. What differs between
stages lives in the `Objective` (model parts, targets, loss, hooks) and in the loader the
stage builds (`make_batches(start_micro_step)`), so `train` reads top to bottom: fetch, to
device, forward, backward, step, log, checkpoint. "Step" is an optimiser step; a micro-step
is one micro-batch (optim.grad_accum of them per step).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from salt.config import override_argument, save_config, to_dict
from salt.precision import resolve_precision
from salt.training import checkpointing
from salt.training.config import EngineConfig, OptimConfig, schedule_warnings
from salt.training.errors import TrainingError
from salt.training.metrics import FlopCount, MetricsLog, Window
from salt.training.objectives import Objective
from salt.training.schedules import Cosine, WarmupCosine

__all__ = ["Distributed", "TrainResult", "TrainingError", "describe", "init_distributed", "launcher_main", "train"]


@dataclass
class TrainResult:
    export_path: Path | None  # None when run.stop_at ended the run before optim.steps
    step: int  # optimiser steps done
    objective: Objective  # the trained module (on its device, in its training precision)


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


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
    from salt.noise import quiet_third_party

    quiet_third_party()
    with one_line_errors():
        result = run_stage(args.config, args.overrides, args.resume)
        if int(os.environ.get("RANK", "0")) == 0:  # one line for the run, not one per rank
            print(describe(result))


def init_distributed(timeout_s: int) -> Distributed:
    """Join (or, for a plain single process, create) the process group, with a timeout.

    The timeout makes the surviving ranks fail with an error when one dies, instead of hanging.
    """
    import deepspeed

    if "RANK" not in os.environ:  # a plain `python …` / `salt …` run: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device)


def deepspeed_config(
    optim: OptimConfig, engine: EngineConfig, micro_batch: int, world_size: int, precision: str
) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": micro_batch * optim.grad_accum * world_size,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": engine.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,  # our logger reports; DeepSpeed's would interleave
        "wall_clock_breakdown": False,
    }
    config.update(engine.extra)
    return config


def param_groups(module: torch.nn.Module) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on weight matrices only, not on biases and norms (V-JEPA)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": 0.0, "apply_wd": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_wd": False},
    ]


def train(
    config: Any,
    objective: Objective,
    make_batches: Callable[[int], Iterable],
    dist_info: Distributed,
    *,
    resume: bool,
    export_name: str,
    compatible_keys: Callable[[dict], dict],
    max_bad_videos: int = 0,
    client_extra: dict | None = None,
) -> TrainResult:
    """Train `objective` for `config.optim.steps` optimiser steps and export its encoder; with
    `run.stop_at`, stop early after a checkpoint that `resume` continues from.

    `config` is a stage's config (its `optim`, `engine`, `run` and `data.batch_size` are read
    here); `make_batches(start_micro_step)` gives the stage's micro-batches from that one on.
    `compatible_keys(config_dict)` picks the parts of a config that must not change across a
    resume (geometry, model, data order); a checkpoint whose parts differ is refused.
    """
    optim, run, world = config.optim, config.run, dist_info.world_size
    checkpoints = _Checkpoints(Path(run.out_dir) / "checkpoints", dist_info.rank, run.keep_checkpoints)
    resume_from = _open_run_dir(config, checkpoints.folder, resume, dist_info.rank)
    engine, optimizer = _deepspeed_engine(config, objective, world)
    lr_at = WarmupCosine(optim.lr_start, optim.lr_peak, optim.lr_final, optim.warmup_steps, optim.steps)
    wd_at = Cosine(optim.wd_start, optim.wd_final, optim.steps)
    checkpoints.client = {"config": compatible_keys(to_dict(config)), "world_size": world, **(client_extra or {})}
    start_step = checkpoints.resume(engine, resume_from, compatible_keys(to_dict(type(config)())), optim.steps)
    last_step = min(optim.steps, run.stop_at) if run.stop_at > 0 else optim.steps
    micro_batches = iter(make_batches(start_step * optim.grad_accum))
    bad_videos, flops = BadVideos(max_bad_videos), FlopCount(optim.grad_accum * world, start_step)
    report, window = _Report(run, dist_info.rank, start_step, optim.steps), Window()
    try:
        for step in range(start_step, last_step):
            step_start = time.perf_counter()
            _set_schedules(optimizer, lr_at(step), wd_at(step))
            for _ in range(optim.grad_accum):
                batch = window.timed(next, micro_batches)  # the wait for the loader is measured
                bad_videos.add(getattr(batch, "skipped", []))
                batch = batch.to(dist_info.device, non_blocking=True)
                flops.measure_once(engine.module, batch)
                loss, metrics = engine(batch)
                finite = _finite_flag(loss)  # reduced over ranks, read after backward is queued
                engine.backward(loss)
                if not bool(finite.item() == 1.0):  # the step's one device sync; weights change only in step()
                    checkpoints.stop_at_non_finite(engine, batch, loss, step, bad_videos.videos)
                engine.step()
                window.add(loss, metrics, config.data.batch_size * world)
            engine.module.after_step(step)
            flops.add_step()
            window.seconds += time.perf_counter() - step_start
            done = step + 1
            if done % run.log_every == 0 or done == last_step:
                grad_norm = engine.get_global_grad_norm()
                report.write(
                    window.record(
                        done, lr_at(step), wd_at(step), grad_norm, optim.grad_accum, flops.total, len(bad_videos.videos)
                    )
                )
                window = Window()
            report.step_done()
            if done % run.checkpoint_every == 0 or done == last_step:
                checkpoints.save(engine, done, bad_videos.videos)
    finally:
        report.close()
    if last_step < optim.steps:
        return TrainResult(None, last_step, engine.module)
    export_path = Path(run.out_dir) / export_name
    meta = {"step": optim.steps, "config": to_dict(config)}
    checkpointing.export(
        engine, objective, checkpoints.folder, checkpointing.tag_of(optim.steps), export_path, dist_info.rank, meta
    )
    return TrainResult(export_path, last_step, engine.module)


def _open_run_dir(config: Any, checkpoint_dir: Path, resume: bool, rank: int) -> Path | None:
    """The checkpoint to resume from (None: start at step 0); rank 0 writes the config. Decided
    on every rank from the same files, before this run writes any."""
    if not resume and checkpointing.has_committed_run(checkpoint_dir):
        raise TrainingError(
            f"{checkpoint_dir} already holds a run; pass --resume to continue it, or choose another run.out_dir"
        )
    out_dir = Path(config.run.out_dir)
    resume_from = checkpointing.find_resume_point(checkpoint_dir, out_dir, announce=rank == 0) if resume else None
    if rank == 0:
        for line in schedule_warnings(config.optim, config.run):
            print(f"warning: {line}", file=sys.stderr, flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    return resume_from


def _deepspeed_engine(config: Any, objective: Objective, world_size: int):
    """The DeepSpeed engine over `objective` (compiled first with run.compile) and its AdamW."""
    import deepspeed

    optim = config.optim
    precision = resolve_precision(config.engine.precision)
    if config.run.compile:
        if config.engine.zero_stage == 3:
            raise TrainingError(
                "run.compile with engine.zero_stage 3: ZeRO-3 gathers parameters in hooks that torch.compile "
                "does not trace here; use zero_stage 1 or 2, or run.compile: false"
            )
        objective.compile_parts()
    optimizer = torch.optim.AdamW(param_groups(objective), lr=optim.lr_start, betas=optim.betas, eps=optim.eps)
    ds_config = deepspeed_config(optim, config.engine, config.data.batch_size, world_size, precision)
    engine, optimizer, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, config=ds_config)
    return engine, optimizer


def _set_schedules(optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group["apply_wd"] else 0.0


class _Checkpoints:
    """The run's checkpoint folder, with what every checkpoint records beside the weights."""

    def __init__(self, folder: Path, rank: int, keep: int):
        self.folder, self.rank, self.keep = folder, rank, keep
        self.client: dict = {}  # settings that must match on resume, and the world size

    def resume(self, engine, resume_from: Path | None, defaults: dict, steps: int) -> int:
        """The optimiser step to continue from (0 for a fresh run), the state loaded."""
        start_step = checkpointing.load(engine, resume_from, self.client, defaults) if resume_from is not None else 0
        if start_step >= steps:
            raise TrainingError(
                f"the checkpoint in {self.folder} is already at step {start_step} of {steps}: nothing to train"
            )
        return start_step

    def save(self, engine, step: int, bad_videos: dict[str, str]) -> None:
        checkpointing.save(engine, self.folder, step, {**self.client, "bad_videos": bad_videos}, self.rank, self.keep)

    def stop_at_non_finite(self, engine, batch, loss: torch.Tensor, step: int, bad_videos: dict[str, str]) -> None:
        """Save the last good state (backward ran, the weights did not change) and stop, naming the cause."""
        self.save(engine, step, bad_videos)
        cause = engine.module.diagnose(batch)
        raise TrainingError(
            f"loss is {loss.item()} at step {step}{f' ({cause})' if cause else ''}: stopping. The last good state is "
            f"saved in {self.folder} (tag step{step}); lower the learning rate or check the data, then --resume."
        )


class BadVideos:
    """Videos the loader could not decode (with the first reason); more than `limit` stops the run."""

    def __init__(self, limit: int):
        self.limit = limit
        self.videos: dict[str, str] = {}

    def add(self, skipped: list[tuple[str, str]]) -> None:
        for video, reason in skipped:
            self.videos.setdefault(video, reason)
        if len(self.videos) > self.limit:
            raise TrainingError(
                f"{len(self.videos)} videos could not be decoded (limit data.max_bad_videos={self.limit}); "
                f"first: {next(iter(self.videos.items()))}. Fix the data list or raise the limit."
            )


class _Report:
    """metrics.jsonl (rank 0) and the progress bar."""

    def __init__(self, run, rank: int, start_step: int, steps: int):
        path = Path(run.out_dir) / "metrics.jsonl"
        self.log = MetricsLog(path, enabled=rank == 0, tensorboard=run.tensorboard, start_step=start_step)
        self.progress = _progress_bar(run, rank, start_step, steps)
        self.started = time.perf_counter()

    def write(self, record: dict) -> None:
        record["elapsed_s"] = time.perf_counter() - self.started  # wall time of this invocation
        self.log.write(record)
        if self.progress is not None:
            postfix = {
                "loss": f"{record['loss']:.4f}",
                "sps": f"{record['samples_per_s']:.1f}",
                "wait": f"{record['data_wait_share']:.0%}",
            }
            self.progress.set_postfix(postfix)

    def step_done(self) -> None:
        if self.progress is not None:
            self.progress.update(1)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.log.close()


def _finite_flag(loss: torch.Tensor) -> torch.Tensor:
    """1.0 on every rank if every rank's loss is finite, else 0.0: one rank's NaN stops all of
    them at the same step. Computed on the loss's device, so nothing waits until it is read."""
    flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag


def _progress_bar(run, rank: int, start: int, total: int):
    if rank != 0 or not run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
