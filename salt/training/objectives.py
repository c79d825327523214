"""What each stage trains. The loop is the same for all; an objective owns the rest.

An objective is an `nn.Module` holding its model parts. `forward(batch)` returns the loss and
a few metrics (0-d tensors, read by the loop once per log record, not per step: no device
sync); `diagnose(batch)` names what made a loss non-finite; `frozen_forward(batch)` is the work
that makes targets without gradients (a frozen teacher, an EMA copy), counted separately in
FLOPs; `after_step(step)` runs after each optimiser step (e.g. an EMA update); `encoder` is what
gets exported.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from salt.masks import apply_masks
from salt.models import Predictor, VideoViT
from salt.models.heads import AttentiveClassifier, MeanPoolClassifier
from salt.training.data import ClipBatch
from salt.video.views import to_model_input


class Objective(nn.Module, ABC):
    encoder: VideoViT
    kind: str = "encoder"  # written into the exported checkpoint

    @abstractmethod
    def forward(self, batch: ClipBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Loss (a scalar tensor) and metrics (detached 0-d tensors or floats) of one micro-batch."""

    def diagnose(self, batch) -> str:
        """Called only after a non-finite loss: what in this batch explains it ("" if nothing)."""
        return ""

    def frozen_forward(self, batch: ClipBatch) -> None:
        """The target computation inside `forward` (no gradients), alone: counted separately in
        FLOPs. Nothing for objectives whose targets are data."""

    def after_step(self, step: int) -> None:
        """Hook after each optimiser step."""

    def compile_parts(self) -> None:
        """torch.compile each model part in place (`run.compile`): parameter names, and so
        checkpoints, stay as they are. Mask sizes change from step to step; after the first
        change the graphs are recompiled with dynamic token counts, once."""
        for module in self.children():
            module.compile()

    def extra_state(self) -> dict:
        """State kept outside the engine's parameters that checkpoints must carry."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what `extra_state` returned."""


PIXEL_NORMS = ("patch", "channel", "none")


def pixel_targets(frames: torch.Tensor, tubelet: int, patch: int, norm: str = "channel") -> torch.Tensor:
    """uint8 frames [B,T,H,W,3] → per-token pixel targets [B, N, tubelet·patch²·3].

    Pixels in [0, 1], standardised per tubelet patch as `norm` says, (x − mean) / (unbiased
    std + 1e-6): `patch` over all of the patch's values (MAE's norm_pix_loss), `channel` over
    each channel's tubelet·patch² values apart (VideoMAE's), `none` not at all. Per channel,
    a smooth texture leaves each channel a sliver of a sinusoid whose phase differs by channel,
    which no model predicts better than zeros (docs/results.md, "Target normalisation").
    Token order (t, h, w) and value order (t, y, x, channel), as VideoMAE's rearrange.
    """
    if norm not in PIXEL_NORMS:
        raise ValueError(f"pixels.norm must be one of {PIXEL_NORMS}, got {norm!r}")
    b, t, h, w, c = frames.shape
    x = frames.float().div(255.0)
    x = x.view(b, t // tubelet, tubelet, h // patch, patch, w // patch, patch, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, -1, tubelet * patch * patch, c)
    groups = x.flatten(2).unsqueeze(-1) if norm == "patch" else x  # [B, N, values, groups]
    if norm != "none":
        groups = (groups - groups.mean(dim=-2, keepdim=True)) / (
            groups.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6
        )
    return groups.flatten(2)


class PixelObjective(Objective):
    """Stage 1: reconstruct the pixels of masked tubelets from the context (MSE on masked tokens)."""

    kind = "teacher"

    def __init__(
        self,
        encoder: VideoViT,
        width: int,
        depth: int,
        num_heads: int,
        num_masks: int,
        norm: str = "channel",
        pos_embed: str = "sincos3d",
    ):
        super().__init__()
        self.encoder = encoder
        self.norm = norm
        pixels_per_token = encoder.tubelet_size * encoder.patch_size**2 * encoder.in_chans
        self.decoder = Predictor(
            encoder.embed_dim,
            pixels_per_token,
            width=width,
            depth=depth,
            num_heads=num_heads,
            num_mask_tokens=num_masks,
            checkpoint_activations=encoder.checkpoint_activations,
            pos_embed=pos_embed,
        )

    def forward(self, batch: ClipBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        clip = to_model_input(batch.frames).to(self.encoder.patch_embed.proj.weight.dtype)
        grid = self.encoder.grid(*clip.shape[2:])
        targets = pixel_targets(batch.frames, self.encoder.tubelet_size, self.encoder.patch_size, self.norm)
        losses, baselines = [], []
        for mask_index, mask in enumerate(batch.masks):
            context = self.encoder(clip, keep=mask.context_idx)
            predicted = self.decoder(context, mask.context_idx, mask.target_idx, grid, mask_index=mask_index)
            masked = apply_masks(targets, mask.target_idx)
            losses.append(F.mse_loss(predicted.float(), masked))
            baselines.append(masked.detach().square().mean())  # predicting zeros: the patch mean, if standardised
        loss = torch.stack(losses).mean()
        metrics = {f"loss_mask{i}": part.detach() for i, part in enumerate(losses)}
        return loss, {**metrics, "baseline_loss": torch.stack(baselines).mean()}


class SupervisedObjective(Objective):
    """Encoder + attentive head trained on labels: the ceiling used to calibrate probes."""

    kind = "supervised"

    def __init__(self, encoder: VideoViT, num_classes: int, head: str = "mean_pool", head_depth: int = 1):
        super().__init__()
        self.encoder = encoder
        if head == "attentive":
            self.head = AttentiveClassifier(
                encoder.embed_dim, num_classes, num_heads=encoder.num_heads, depth=head_depth
            )
        else:
            self.head = MeanPoolClassifier(encoder.embed_dim, num_classes)

    def forward(self, batch: ClipBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if bool((batch.labels < 0).any()):
            raise ValueError("the supervised objective needs a label for every video (the CSV has unlabelled lines)")
        clip = to_model_input(batch.frames).to(self.encoder.patch_embed.proj.weight.dtype)
        logits = self.head(self.encoder(clip)).float()
        loss = F.cross_entropy(logits, batch.labels)
        return loss, {"accuracy": (logits.argmax(1) == batch.labels).float().mean().detach()}


class StudentObjective(Objective):
    """Stage 2 (and the V-JEPA baseline): predict normalised target latents at masked tokens.

    The student sees the context tokens of each mask configuration; the predictor predicts the
    targets at the masked positions; L1 (or L2), averaged over configurations. Where the targets come
    from is the only difference between the three sources:
    - "cache": read from the cache (batch.float_targets()); no network involved.
    - "teacher": a frozen teacher runs on the same frames, online.
    - "ema": an EMA copy of the student encoder (V-JEPA), updated after each optimiser step.
    The teacher and the EMA encoder are kept outside the module's parameters, in fp32, so the
    engine neither trains nor casts them (an EMA step of 1e-3 would vanish in bf16). With a
    low-rank cache's `basis`, the cached coefficients are reconstructed to D channels on the
    device (the loader moves R channels, not D); without it they are the targets themselves.
    """

    kind = "student"

    def __init__(
        self,
        encoder: VideoViT,
        predictor: Predictor,
        source: str,
        target_norm: str = "layer_norm",
        frozen: VideoViT | None = None,
        momentum=None,
        precision: str = "fp32",
        health_every: int = 0,
        loss: str = "l1",
        basis=None,
    ):
        super().__init__()
        self.loss = {"l1": F.l1_loss, "l2": F.mse_loss}[loss]
        object.__setattr__(self, "basis", basis)  # fixed arrays, not parameters: see the class docstring
        self.encoder = encoder
        self.predictor = predictor
        self.source = source
        self.target_norm = target_norm
        self.momentum = momentum  # a schedule: step -> momentum (ema only)
        self.precision = precision
        self.health_every = health_every
        self.target_mean: torch.Tensor | None = None  # see set_target_mean
        if source == "ema":
            frozen = copy.deepcopy(encoder)
        if frozen is not None:
            frozen.float().eval().requires_grad_(False)
        object.__setattr__(self, "frozen", frozen)  # not a submodule: see the class docstring

    def forward(self, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        clip = to_model_input(batch.frames)
        targets = self._targets(batch, clip)
        student_clip = clip.to(self.encoder.patch_embed.proj.weight.dtype)
        grid = self.encoder.grid(*clip.shape[2:])
        losses, baselines, explained, metrics = [], [], [], {}
        for mask_index, mask in enumerate(batch.masks):
            context = self.encoder(student_clip, keep=mask.context_idx)
            predicted = self.predictor(context, mask.context_idx, mask.target_idx, grid, mask_index=mask_index).float()
            masked = apply_masks(targets, mask.target_idx)
            losses.append(self.loss(predicted, masked))
            baseline, share = self._against_the_mean(predicted.detach(), masked)
            baselines.append(baseline)
            explained.append(share)
            if mask_index == 0 and self.health_every and batch.micro_step % self.health_every == 0:
                metrics.update(feature_health(context.detach()))
        loss = torch.stack(losses).mean()
        metrics.update({f"loss_mask{i}": part.detach() for i, part in enumerate(losses)})
        metrics.update(baseline_loss=torch.stack(baselines).mean(), explained_variance=torch.stack(explained).mean())
        return loss, metrics

    def set_target_mean(self, stored_latents: torch.Tensor) -> None:
        """The trivial predictor of cached targets: their mean vector over a sample of the cache
        (stored latents [S, N, D'] as the reader dequantises them), a constant for the run."""
        with torch.no_grad():
            self.target_mean = self._cache_targets(stored_latents.float()).mean(dim=(0, 1))

    @torch.no_grad()
    def _against_the_mean(self, predicted: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This loss for predicting the mean target vector (the cache's; online targets: this
        micro-batch's), and the share of the targets' variance about it that `predicted` explains."""
        mean = self.target_mean if self.target_mean is not None else masked.mean(dim=(0, 1))
        mean = mean.to(masked.device).expand_as(masked)
        spread = (masked - mean).square().sum()
        return self.loss(mean, masked), 1 - (predicted - masked).square().sum() / spread.clamp_min(1e-12)

    def diagnose(self, batch) -> str:
        # Non-finite targets at masked positions make the loss non-finite; checked only then, so
        # a healthy step pays no device sync for it.
        with torch.no_grad():
            targets = self._targets(batch, to_model_input(batch.frames))
            bad = [key for key, row in zip(batch.keys, targets) if not bool(torch.isfinite(row).all())]
        return f"non-finite targets from {self.source} in samples {bad[:5]}" if bad else ""

    def compile_parts(self) -> None:
        super().compile_parts()
        if self.frozen is not None:
            self.frozen.compile()

    def frozen_forward(self, batch) -> None:
        if self.frozen is not None:
            self._targets(batch, to_model_input(batch.frames))

    def _targets(self, batch, clip: torch.Tensor) -> torch.Tensor:
        from salt.latents import normalise_targets

        if self.frozen is None:
            return self._cache_targets(batch.float_targets())
        if next(self.frozen.parameters()).device != clip.device:
            self.frozen.to(clip.device)
        with torch.no_grad(), torch.autocast(clip.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return normalise_targets(self.frozen(clip).float(), "layer_norm")

    def _cache_targets(self, stored: torch.Tensor) -> torch.Tensor:
        from salt.latents import student_targets

        return student_targets(stored, self.target_norm, self.basis)

    def after_step(self, step: int) -> None:
        if self.source != "ema":
            return
        m = self.momentum(step)
        with torch.no_grad():
            for target, online in zip(self.frozen.parameters(), self.encoder.parameters()):
                target.mul_(m).add_(online.detach().float(), alpha=1 - m)

    def extra_state(self) -> dict:
        return {"ema_encoder": self.frozen.state_dict()} if self.source == "ema" else {}

    def load_extra_state(self, state: dict) -> None:
        if self.source == "ema":
            if "ema_encoder" not in state:
                raise ValueError("the checkpoint has no EMA encoder state: it was not made with targets: ema")
            self.frozen.load_state_dict(state["ema_encoder"], strict=True)


def feature_health(tokens: torch.Tensor) -> dict[str, float]:
    """Collapse signals on features [B, N, D]: mean per-channel std and effective rank (RankMe)."""
    features = tokens.float().flatten(0, 1)
    std = features.std(dim=0).mean().item()
    singular = torch.linalg.svdvals(features - features.mean(0))
    p = singular / singular.sum().clamp_min(1e-12) + 1e-12
    return {"feature_std": std, "feature_rank": float(torch.exp(-(p * p.log()).sum()))}
