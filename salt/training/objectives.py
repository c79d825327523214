"""What each stage trains. The loop is the same for all; an objective owns the rest.

An objective is an `nn.Module` holding its model parts. `forward(batch)` returns the loss and
a few metrics; `frozen_forward(batch)` is the work that makes targets without gradients (a
frozen teacher, an EMA copy), counted separately in FLOPs; `after_step(step)` runs after each
optimiser step (e.g. an EMA update); `encoder` is what gets exported.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from salt.masks import apply_masks
from salt.models import Predictor, VideoViT
from salt.models.heads import AttentiveClassifier
from salt.training.data import ClipBatch
from salt.video.views import to_model_input


class Objective(nn.Module, ABC):
    encoder: VideoViT
    kind: str = "encoder"  # written into the exported checkpoint

    @abstractmethod
    def forward(self, batch: ClipBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss (a scalar tensor) and metrics (plain floats) of one micro-batch."""

    def frozen_forward(self, batch: ClipBatch) -> None:
        """Target computation without gradients; nothing for objectives whose targets are data."""

    def after_step(self, step: int) -> None:
        """Hook after each optimiser step."""


def pixel_targets(frames: torch.Tensor, tubelet: int, patch: int, normalise: bool = True) -> torch.Tensor:
    """uint8 frames [B,T,H,W,3] → per-token pixel targets [B, N, tubelet·patch²·3].

    As VideoMAE: pixels in [0, 1]; with `normalise`, each tubelet patch and channel is
    standardised over its tubelet·patch² values, (x − mean) / (unbiased std + 1e-6).
    Token order (t, h, w) and value order (t, y, x, channel), as VideoMAE's rearrange.
    """
    b, t, h, w, c = frames.shape
    x = frames.float().div(255.0)
    x = x.view(b, t // tubelet, tubelet, h // patch, patch, w // patch, patch, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, tubelet * patch * patch, c)
    if normalise:
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    return x.flatten(2)


class PixelObjective(Objective):
    """Stage 1: reconstruct the pixels of masked tubelets from the context (MSE on masked tokens)."""

    kind = "teacher"

    def __init__(self, encoder: VideoViT, width: int, depth: int, num_heads: int, num_masks: int, norm_pix: bool = True):
        super().__init__()
        self.encoder = encoder
        self.norm_pix = norm_pix
        pixels_per_token = encoder.tubelet_size * encoder.patch_size**2 * encoder.in_chans
        self.decoder = Predictor(
            encoder.embed_dim, pixels_per_token, width=width, depth=depth, num_heads=num_heads, num_mask_tokens=num_masks,
            checkpoint_activations=encoder.checkpoint_activations,
        )

    def forward(self, batch: ClipBatch) -> tuple[torch.Tensor, dict[str, float]]:
        clip = to_model_input(batch.frames).to(self.encoder.patch_embed.proj.weight.dtype)
        grid = self.encoder.grid(*clip.shape[2:])
        targets = pixel_targets(batch.frames, self.encoder.tubelet_size, self.encoder.patch_size, self.norm_pix)
        losses = []
        for mask_index, mask in enumerate(batch.masks):
            context = self.encoder(clip, keep=mask.context_idx)
            predicted = self.decoder(context, mask.context_idx, mask.target_idx, grid, mask_index=mask_index)
            losses.append(F.mse_loss(predicted.float(), apply_masks(targets, mask.target_idx)))
        loss = torch.stack(losses).mean()
        return loss, {f"loss_mask{i}": l.item() for i, l in enumerate(losses)}


class SupervisedObjective(Objective):
    """Encoder + attentive head trained on labels: the ceiling used to calibrate probes."""

    kind = "supervised"

    def __init__(self, encoder: VideoViT, num_classes: int, head_depth: int = 1):
        super().__init__()
        self.encoder = encoder
        self.head = AttentiveClassifier(encoder.embed_dim, num_classes, num_heads=encoder.num_heads, depth=head_depth)

    def forward(self, batch: ClipBatch) -> tuple[torch.Tensor, dict[str, float]]:
        if bool((batch.labels < 0).any()):
            raise ValueError("the supervised objective needs a label for every video (the CSV has unlabelled lines)")
        clip = to_model_input(batch.frames).to(self.encoder.patch_embed.proj.weight.dtype)
        logits = self.head(self.encoder(clip)).float()
        loss = F.cross_entropy(logits, batch.labels)
        return loss, {"accuracy": (logits.argmax(1) == batch.labels).float().mean().item()}
