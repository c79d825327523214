"""The frozen teacher's forward over batches of stored (JPEG round-tripped) frames, shared by
the local engine and the Ray engine's teacher actors."""

from __future__ import annotations

import os

import numpy as np
import torch

from salt.precision import resolve_precision
from salt.video.views import to_model_input


def local_device() -> torch.device:
    """One GPU per rank on a node: torchrun sets LOCAL_RANK, srun SLURM_LOCALID; Ray sets
    CUDA_VISIBLE_DEVICES to the actor's GPU, so index 0 is its own."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    return torch.device("cuda", local % torch.cuda.device_count())


class TeacherForward:
    """`forward(frames uint8 [B,T,H,W,3]) -> float32 latents [B,N,D]` on the CPU, at most
    `batch_size` views per forward. On the CPU each view's latents do not depend on what else is
    in its batch (measured bit-identical for batches of 1, 5 and 16), which is what lets two
    engines that batch differently write the same bytes.

    With `compile`, the encoder runs through torch.compile with static shapes: a short batch is
    padded to `batch_size` by repeating its last view (the padding's outputs are dropped), so
    one graph serves the whole run."""

    def __init__(
        self,
        encoder: torch.nn.Module,
        precision: str,
        batch_size: int,
        device: torch.device | None = None,
        compile: bool = False,
    ):
        self.device = device or local_device()
        self.encoder = encoder.float().eval().requires_grad_(False).to(self.device)
        self.precision = resolve_precision(precision)
        self.batch_size = batch_size
        self.compiled = compile
        if compile:
            self.encoder.compile(dynamic=False)  # in place: the state dict keeps its keys

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        outputs = []
        for start in range(0, len(frames), self.batch_size):
            clips = torch.from_numpy(np.ascontiguousarray(frames[start : start + self.batch_size]))
            count = len(clips)
            if self.compiled and count < self.batch_size:
                clips = torch.cat([clips, clips[-1:].expand(self.batch_size - count, *clips.shape[1:])])
            clips = clips.to(self.device, non_blocking=True)
            with (
                torch.no_grad(),
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"),
            ):
                outputs.append(self.encoder(to_model_input(clips))[:count].float().cpu())
        return torch.cat(outputs)
