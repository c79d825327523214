"""The distributed set-up every stage shares: the process group, the DeepSpeed engine over an
objective, and the one collective the ranks use to agree on stopping."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from salt.precision import resolve_precision
from salt.training.config import EngineConfig, OptimConfig
from salt.training.errors import TrainingError

# Joining the group waits this long at least for every rank to start (imports and model
# building on a loaded machine take minutes); collectives afterwards use engine.timeout_s.
RENDEZVOUS_TIMEOUT_S = 300


@dataclass
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(timeout_s: int) -> Distributed:
    """Join (or, for a plain single process, create) the process group.

    The collective timeout makes the surviving ranks fail with an error when one dies, instead
    of hanging. On a CPU-only machine DeepSpeed's shared-memory all-reduce op is switched off:
    it serves only DeepSpeed-Inference's `inference_all_reduce`, never training, and building it
    just in time took minutes on a fresh machine behind a lock that stalled concurrent runs."""
    import deepspeed
    import deepspeed.ops

    cuda = torch.cuda.is_available()
    if not cuda:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if "RANK" not in os.environ:
        # DeepSpeed's engine reads LOCAL_RANK on every build, also for a group formed earlier
        # in this process (a second run in one Python process finds the group already there).
        os.environ.setdefault("LOCAL_RANK", "0")
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else 0
    if not dist.is_initialized():
        # A plain `python …` / `salt …` run: a group of one, its variables set only while it forms
        # (processes this one starts later must not join it, nor reuse its port).
        alone = {} if "RANK" in os.environ else {"RANK": "0", "WORLD_SIZE": "1"}
        if alone:
            alone.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT") or str(free_port()))
        saved = {key: os.environ.get(key) for key in alone}
        os.environ.update(alone)
        try:
            rendezvous = datetime.timedelta(seconds=max(timeout_s, RENDEZVOUS_TIMEOUT_S))
            deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=rendezvous)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        dist.set_timeout(datetime.timedelta(seconds=timeout_s))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device)


def agree(values: list[float], device: torch.device) -> list[float]:
    """The maximum of each value over all ranks (one small all-reduce and one device sync):
    how ranks agree to stop at the same step, whichever of them was signalled or failed."""
    flags = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()


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


def build_engine(config: Any, objective, world_size: int, load_universal: bool = False):
    """The DeepSpeed engine over `objective` (compiled first with run.compile) and its AdamW.

    `load_universal`: the checkpoint to resume is a universal one (a run resumed on another
    number of ranks, `checkpointing.universal_for`)."""
    import deepspeed
    from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO, UNIVERSAL_CHECKPOINT_VERSION_KEY

    optim = config.optim
    precision = resolve_precision(config.engine.precision)
    if config.run.compile:
        if config.engine.zero_stage == 3:
            raise TrainingError(
                "run.compile with engine.zero_stage 3: ZeRO-3 gathers parameters in hooks that torch.compile "
                "does not trace here; use zero_stage 1 or 2, or run.compile: false"
            )
        objective.compile_parts()
    # Pure data parallelism: nothing to merge but ZeRO's partitions, which lets DeepSpeed's
    # ds_to_universal turn any checkpoint of this run into one that loads on other ranks.
    setattr(objective, UNIVERSAL_CHECKPOINT_INFO, {UNIVERSAL_CHECKPOINT_VERSION_KEY: 0.2})
    optimizer = torch.optim.AdamW(param_groups(objective), lr=optim.lr_start, betas=optim.betas, eps=optim.eps)
    ds_config = deepspeed_config(optim, config.engine, config.data.batch_size, world_size, precision)
    if load_universal:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    engine, optimizer, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer, config=ds_config)
    return engine, optimizer


def set_schedules(optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group["apply_wd"] else 0.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
