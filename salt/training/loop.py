"""The one training loop: stage 1, stage 2 and the EMA baseline all run through `train`.

The loop owns iteration, the DeepSpeed engine, schedules and logging; checkpoints (commit,
resume, export) live in `checkpointing`, measurements in `metrics`. What differs between
stages lives in the `Objective` (model parts, targets, loss, hooks) and in the loader the
stage builds (`make_batches(start_step)`), so `train` reads top to bottom.
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

from salt.config import save_config, to_dict
from salt.precision import resolve_precision
from salt.training import checkpointing
from salt.training.config import EngineConfig, OptimConfig, schedule_warnings
from salt.training.errors import TrainingError
from salt.training.metrics import MetricsLog, Window, measure_flops
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
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from salt.noise import quiet_third_party

    quiet_third_party()
    with one_line_errors():
        print(describe(run_stage(args.config, args.overrides, args.resume)))


def init_distributed(timeout_s: int) -> Distributed:
    """Join (or, for a plain single process, create) the process group, with a timeout.

    The timeout makes the surviving ranks fail with an error when one dies, instead of hanging.
    """
    import deepspeed

    if "RANK" not in os.environ:  # a plain `python …` / `salt …` run: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
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
    here). `compatible_keys(config_dict)` picks the parts of a config that must not change
    across a resume (geometry, model, data order); a checkpoint whose parts differ is refused.
    """
    import deepspeed

    optim, run, micro_batch = config.optim, config.run, config.data.batch_size
    rank, world = dist_info.rank, dist_info.world_size
    out_dir = Path(run.out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    # Decided on every rank from the same files, before this run writes any.
    if not resume and checkpointing.has_committed_run(checkpoint_dir):
        raise TrainingError(
            f"{checkpoint_dir} already holds a run; pass --resume to continue it, or choose another run.out_dir"
        )
    resume_from = checkpointing.find_resume_point(checkpoint_dir, out_dir, announce=rank == 0) if resume else None
    if rank == 0:
        for line in schedule_warnings(optim, run):
            print(f"warning: {line}", file=sys.stderr, flush=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    precision = resolve_precision(config.engine.precision)

    if run.compile:
        if config.engine.zero_stage == 3:
            raise TrainingError(
                "run.compile with engine.zero_stage 3: ZeRO-3 gathers parameters in hooks that torch.compile "
                "does not trace here; use zero_stage 1 or 2, or run.compile: false"
            )
        objective.compile_parts()
    optimizer = torch.optim.AdamW(param_groups(objective), lr=optim.lr_start, betas=optim.betas, eps=optim.eps)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=objective,
        optimizer=optimizer,
        config=deepspeed_config(optim, config.engine, micro_batch, world, precision),
    )
    lr_at = WarmupCosine(optim.lr_start, optim.lr_peak, optim.lr_final, optim.warmup_steps, optim.steps)
    wd_at = Cosine(optim.wd_start, optim.wd_final, optim.steps)
    config_dict = to_dict(config)
    client = {"config": compatible_keys(config_dict), "world_size": world, **(client_extra or {})}

    defaults = compatible_keys(to_dict(type(config)()))
    start_step = checkpointing.load(engine, resume_from, client, defaults) if resume_from is not None else 0
    if start_step >= optim.steps:
        raise TrainingError(
            f"the checkpoint in {checkpoint_dir} is already at step {start_step} of {optim.steps}: nothing to train"
        )

    log = MetricsLog(out_dir / "metrics.jsonl", enabled=rank == 0, tensorboard=run.tensorboard, start_step=start_step)
    progress = _progress_bar(run, rank, start_step, optim.steps)
    batches = iter(make_batches(start_step * optim.grad_accum))
    flops_per_step = None
    cumulative_flops = {"trained": 0.0, "frozen": 0.0}
    bad_videos: dict[str, str] = {}
    window = Window()
    last_step = min(optim.steps, run.stop_at) if run.stop_at > 0 else optim.steps
    started = time.perf_counter()
    try:
        for step in range(start_step, last_step):
            step_start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
                group["weight_decay"] = wd_at(step) if group["apply_wd"] else 0.0
            for _ in range(optim.grad_accum):
                wait_start = time.perf_counter()
                batch = next(batches)
                window.wait += time.perf_counter() - wait_start
                for video, reason in getattr(batch, "skipped", []):
                    bad_videos.setdefault(video, reason)
                if len(bad_videos) > max_bad_videos:
                    raise TrainingError(
                        f"{len(bad_videos)} videos could not be decoded (limit data.max_bad_videos={max_bad_videos}); "
                        f"first: {next(iter(bad_videos.items()))}. Fix the data list or raise the limit."
                    )
                batch = batch.to(dist_info.device, non_blocking=True)
                if flops_per_step is None:
                    trained, frozen = measure_flops(engine.module, batch)
                    # Backward costs about twice the forward; frozen parts run forward only.
                    flops_per_step = {
                        "trained": 3 * trained * optim.grad_accum * world,
                        "frozen": frozen * optim.grad_accum * world,
                    }
                    # Counted from step 0, so a resumed run reports the whole run's FLOPs.
                    cumulative_flops = {source: flops * start_step for source, flops in flops_per_step.items()}
                loss, metrics = engine(batch)
                finite = _finite_flag(loss)  # reduced over ranks, read after backward is queued
                engine.backward(loss)
                if not bool(finite.item() == 1.0):  # the step's one device sync; weights change only in step()
                    checkpointing.save(engine, checkpoint_dir, step, client, rank, run.keep_checkpoints)
                    cause = engine.module.diagnose(batch)
                    raise TrainingError(
                        f"loss is {loss.item()} at step {step}{f' ({cause})' if cause else ''}: stopping. The last "
                        "good "
                        f"state is saved in {checkpoint_dir} (tag step{step}); lower the learning rate or check the "
                        "data, "
                        "then --resume."
                    )
                engine.step()
                window.add(loss, metrics, micro_batch * world)
            engine.module.after_step(step)
            for source, flops in flops_per_step.items():
                cumulative_flops[source] += flops
            window.seconds += time.perf_counter() - step_start
            done = step + 1
            if progress is not None:
                progress.update(1)
            if done % run.log_every == 0 or done == last_step:
                record = window.record(
                    done,
                    lr_at(step),
                    wd_at(step),
                    engine.get_global_grad_norm(),
                    engine.gradient_accumulation_steps(),
                    cumulative_flops,
                    len(bad_videos),
                )
                record["elapsed_s"] = time.perf_counter() - started  # wall time of this invocation
                log.write(record)
                if progress is not None:
                    progress.set_postfix(
                        loss=f"{record['loss']:.4f}",
                        sps=f"{record['samples_per_s']:.1f}",
                        wait=f"{record['data_wait_share']:.0%}",
                    )
                window = Window()
            if done % run.checkpoint_every == 0 or done == last_step:
                client["bad_videos"] = bad_videos
                checkpointing.save(engine, checkpoint_dir, done, client, rank, run.keep_checkpoints)
    finally:
        if progress is not None:
            progress.close()
        log.close()

    if last_step < optim.steps:
        return TrainResult(None, last_step, engine.module)
    export_path = out_dir / export_name
    checkpointing.export(
        engine,
        objective,
        checkpoint_dir,
        checkpointing.tag_of(optim.steps),
        export_path,
        rank,
        {"step": optim.steps, "config": config_dict},
    )
    return TrainResult(export_path, last_step, engine.module)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
