"""The one training loop: stage 1, stage 2 and the EMA baseline all run through `train`.

The loop owns iteration, the DeepSpeed engine, schedules, logging, checkpoints and resume.
What differs between stages lives in the `Objective` (model parts, targets, loss, hooks) and
in the loader the stage builds (`make_batches(start_step)`), so this file reads top to bottom.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import resource
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from salt.config import save_config, to_dict
from salt.models import save_encoder
from salt.models.checkpoint import load_state_dict_strict
from salt.training.config import EngineConfig, OptimConfig, RunConfig
from salt.training.objectives import Objective
from salt.training.schedules import Cosine, WarmupCosine


RUN_STATE = "salt_run_state.json"  # per checkpoint: step and settings, readable without torch


class TrainingError(RuntimeError):
    """A run that must stop: non-finite loss, too many bad videos, an unusable checkpoint."""


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


def launcher_main(description: str, run_stage: Callable[[str, list[str], bool], TrainResult], argv: list[str] | None = None) -> None:
    """Entry point for `deepspeed salt/train_*.py`: --config, --set, --resume, and the launcher's --local_rank."""
    import argparse

    from salt.config import ConfigError

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        print(describe(run_stage(args.config, args.overrides, args.resume)))
    except (ConfigError, TrainingError) as err:
        raise SystemExit(f"error: {err}") from None


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


def resolve_precision(precision: str) -> str:
    """'auto' → bf16 where the hardware does bf16 matmuls natively, else fp32."""
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_bf16() else "fp32"


def deepspeed_config(optim: OptimConfig, engine: EngineConfig, micro_batch: int, world_size: int, precision: str) -> dict:
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


def measure_flops(objective: Objective, batch) -> tuple[float, float]:
    """Forward FLOPs of the trained parts and of the frozen target computation, once.

    `forward` includes making the targets; `frozen_forward` is that part alone."""
    from torch.utils.flop_counter import FlopCounterMode

    # With autograd on: the counter's module hooks expect it (its graph is dropped unused).
    with FlopCounterMode(display=False) as total:
        objective(batch)
    with torch.no_grad(), FlopCounterMode(display=False) as frozen:
        objective.frozen_forward(batch)
    return float(total.get_total_flops() - frozen.get_total_flops()), float(frozen.get_total_flops())


class MetricsLog:
    """JSONL metrics on rank 0. A resumed run continues the same file; records past the step
    it resumes from (written after the last checkpoint, about to be redone) are dropped first,
    so the file never holds a step twice."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool, start_step: int = 0):
        self.enabled = enabled
        if enabled and path.exists():
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut off by a kill
                    continue
                if record.get("step", 0) <= start_step:
                    kept.append(line)
            partial = path.with_name(path.name + ".partial")
            partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
            os.replace(partial, path)
        self.file = open(path, "a", encoding="utf-8") if enabled else None
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise TrainingError("run.tensorboard is on but tensorboard is not installed: pip install tensorboard") from err
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def train(
    *,
    config: Any,
    optim: OptimConfig,
    engine_config: EngineConfig,
    run: RunConfig,
    objective: Objective,
    make_batches: Callable[[int], Iterable],
    micro_batch: int,
    dist_info: Distributed,
    resume: bool,
    export_name: str,
    compatible_keys: Callable[[dict], dict],
    max_bad_videos: int = 0,
    client_extra: dict | None = None,
) -> TrainResult:
    """Train `objective` for `optim.steps` optimiser steps and export its encoder; with
    `run.stop_at`, stop early after a checkpoint that `resume` continues from.

    `compatible_keys(config_dict)` picks the parts of a config that must not change across a
    resume (geometry, model, data order); a checkpoint whose parts differ is refused.
    """
    import deepspeed

    rank, world = dist_info.rank, dist_info.world_size
    out_dir = Path(run.out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    precision = resolve_precision(engine_config.precision)

    optimizer = torch.optim.AdamW(param_groups(objective), lr=optim.lr_start, betas=optim.betas, eps=optim.eps)
    engine, optimizer, _, _ = deepspeed.initialize(
        model=objective,
        optimizer=optimizer,
        config=deepspeed_config(optim, engine_config, micro_batch, world, precision),
    )
    lr_at = WarmupCosine(optim.lr_start, optim.lr_peak, optim.lr_final, optim.warmup_steps, optim.steps)
    wd_at = Cosine(optim.wd_start, optim.wd_final, optim.steps)
    config_dict = to_dict(config)
    client = {"config": compatible_keys(config_dict), "world_size": world, **(client_extra or {})}

    start_step = 0
    if resume:
        start_step = _resume(engine, checkpoint_dir, client)
    elif rank == 0 and (checkpoint_dir / "latest").exists():
        raise TrainingError(
            f"{checkpoint_dir} already holds a run; pass --resume to continue it, or choose another run.out_dir"
        )
    if start_step >= optim.steps:
        raise TrainingError(f"the checkpoint in {checkpoint_dir} is already at step {start_step} of {optim.steps}: nothing to train")

    log = MetricsLog(out_dir / "metrics.jsonl", enabled=rank == 0, tensorboard=run.tensorboard, start_step=start_step)
    progress = _progress_bar(run, rank, start_step, optim.steps)
    batches = iter(make_batches(start_step * optim.grad_accum))
    flops_per_step = None
    cumulative_flops = {"trained": 0.0, "frozen": 0.0}
    bad_videos: dict[str, str] = {}
    window = {"time": 0.0, "wait": 0.0, "samples": 0, "losses": [], "metrics": {}}
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
                window["wait"] += time.perf_counter() - wait_start
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
                    flops_per_step = {"trained": 3 * trained * optim.grad_accum * world, "frozen": frozen * optim.grad_accum * world}
                    # Counted from step 0, so a resumed run reports the whole run's FLOPs.
                    cumulative_flops = {source: flops * start_step for source, flops in flops_per_step.items()}
                try:
                    loss, metrics = engine(batch)
                except FloatingPointError as err:  # non-finite targets, named by the objective
                    raise TrainingError(f"step {step}: {err}; the run stops (last checkpoint in {checkpoint_dir})") from None
                if not _all_finite(loss):
                    _save(engine, checkpoint_dir, step, client, rank, run.keep_checkpoints)
                    raise TrainingError(
                        f"loss is {loss.item()} at step {step}: stopping. The last good state is saved in "
                        f"{checkpoint_dir} (tag step{step}); lower the learning rate or check the data, then --resume."
                    )
                engine.backward(loss)
                engine.step()
                window["losses"].append(loss.item())
                for key, value in metrics.items():
                    window["metrics"].setdefault(key, []).append(value)
                window["samples"] += micro_batch * world
            engine.module.after_step(step)
            for source, flops in flops_per_step.items():
                cumulative_flops[source] += flops
            window["time"] += time.perf_counter() - step_start
            done = step + 1
            if progress is not None:
                progress.update(1)
            if done % run.log_every == 0 or done == last_step:
                record = _summarise(window, done, lr_at(step), wd_at(step), engine, cumulative_flops, len(bad_videos))
                record["elapsed_s"] = time.perf_counter() - started  # wall time of this invocation
                log.write(record)
                if progress is not None:
                    progress.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.1f}", wait=f"{record['data_wait_share']:.0%}")
                window = {"time": 0.0, "wait": 0.0, "samples": 0, "losses": [], "metrics": {}}
            if done % run.checkpoint_every == 0 or done == last_step:
                client["bad_videos"] = bad_videos
                _save(engine, checkpoint_dir, done, client, rank, run.keep_checkpoints)
    finally:
        if progress is not None:
            progress.close()
        log.close()

    if last_step < optim.steps:
        return TrainResult(None, last_step, engine.module)
    export_path = out_dir / export_name
    _export(engine, objective, checkpoint_dir, f"step{optim.steps}", export_path, rank, {"step": optim.steps, "config": config_dict})
    return TrainResult(export_path, last_step, engine.module)


def _resume(engine, checkpoint_dir: Path, client: dict) -> int:
    """Check the saved settings (a JSON beside the weights, read first), then load the state."""
    if not (checkpoint_dir / "latest").is_file():
        raise TrainingError(f"--resume: no checkpoint in {checkpoint_dir} (no 'latest' file); drop --resume to start fresh")
    tag = (checkpoint_dir / "latest").read_text().strip()
    state_file = checkpoint_dir / tag / RUN_STATE
    if not state_file.is_file():
        # Killed between DeepSpeed's `latest` and our state file: the previous complete
        # checkpoint is still on disk (old ones are removed only after the new one is whole).
        complete = sorted((p for p in checkpoint_dir.glob("step*") if (p / RUN_STATE).is_file()), key=lambda p: int(p.name[4:]))
        if complete:
            print(f"--resume: {checkpoint_dir / tag} is incomplete; resuming from {complete[-1].name}", flush=True)
            tag, state_file = complete[-1].name, complete[-1] / RUN_STATE
    try:
        saved = json.loads(state_file.read_text())
    except (OSError, ValueError) as err:
        raise TrainingError(f"--resume: {state_file} is missing or unreadable ({err}); the checkpoint is incomplete") from err
    differences = _differences(saved.get("config", {}), client["config"])
    for key, value in client.items():
        if key not in ("config", "bad_videos") and saved.get(key) != value:
            differences.append(f"{key}: checkpoint {saved.get(key)!r}, now {value!r}")
    if differences:
        raise TrainingError(f"--resume: {checkpoint_dir / tag} was made with other settings: " + "; ".join(differences))
    try:
        path, client_state = engine.load_checkpoint(str(checkpoint_dir), tag=tag)
    except Exception as err:
        raise TrainingError(f"--resume: checkpoint {checkpoint_dir / tag} cannot be loaded ({type(err).__name__}: {err})") from err
    if path is None:
        raise TrainingError(f"--resume: checkpoint {checkpoint_dir / tag} is missing or incomplete")
    engine.module.load_extra_state(client_state.get("objective_state", {}))
    return int(saved["step"])


def _differences(saved: Any, now: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        found = []
        for key in sorted(set(saved) | set(now)):
            found += _differences(saved.get(key), now.get(key), f"{prefix}.{key}" if prefix else key)
        return found
    return [] if saved == now else [f"{prefix}: checkpoint {saved!r}, now {now!r}"]


def _save(engine, checkpoint_dir: Path, step: int, client: dict, rank: int, keep: int) -> None:
    """DeepSpeed checkpoint on all ranks; `latest` moves only once every file is written."""
    tag = f"step{step}"
    # The objective's own state (e.g. an EMA encoder kept outside the engine) rides along.
    state = {**client, "step": step, "objective_state": engine.module.extra_state()}
    engine.save_checkpoint(str(checkpoint_dir), tag=tag, client_state=state)
    if rank == 0:
        (checkpoint_dir / tag / RUN_STATE).write_text(json.dumps({**client, "step": step}, indent=1))
    dist.barrier()
    if rank == 0 and keep > 0:
        tags = sorted((p for p in checkpoint_dir.glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
        for old in tags[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def _export(engine, objective: Objective, checkpoint_dir: Path, tag: str, path: Path, rank: int, meta: dict) -> None:
    """The encoder as fp32, consolidated in process from the ZeRO checkpoint, in our format."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if rank == 0:
        if engine.zero_optimization_stage() > 0:
            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
        else:
            state = {k: v.float() for k, v in engine.module.state_dict().items()}
        encoder_state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        encoder = type(objective.encoder)(objective.encoder.arch)
        load_state_dict_strict(encoder, encoder_state, str(path))
        save_encoder(path, encoder, kind=objective.kind, meta=meta)
    dist.barrier()


def _summarise(window: dict, step: int, lr: float, wd: float, engine, flops: dict, bad_videos: int) -> dict[str, Any]:
    grad_norm = engine.get_global_grad_norm()
    record = {
        "step": step,
        "loss": sum(window["losses"]) / max(1, len(window["losses"])),
        "lr": lr,
        "wd": wd,
        "grad_norm": float(grad_norm) if grad_norm is not None else None,
        "samples_per_s": window["samples"] / max(window["time"], 1e-9),
        "steps_per_s": len(window["losses"]) / max(window["time"], 1e-9) / max(1, engine.gradient_accumulation_steps()),
        "data_wait_share": window["wait"] / max(window["time"], 1e-9),
        "flops": flops["trained"] + flops["frozen"],
        "flops_trained": flops["trained"],  # student/encoder + predictor, forward and backward
        "flops_frozen": flops["frozen"],  # target computation: online teacher or EMA encoder
        "bad_videos": bad_videos,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this process (Linux: KiB)
    }
    for key, values in window["metrics"].items():
        record[key] = sum(values) / len(values)
    return record


def _all_finite(loss: torch.Tensor) -> bool:
    """Every rank agrees: one rank's NaN stops all of them at the same step."""
    flag = torch.tensor([1.0 if math.isfinite(loss.item()) else 0.0], device=loss.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def _progress_bar(run: RunConfig, rank: int, start: int, total: int):
    if rank != 0 or not run.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True)


def _cpu_has_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
