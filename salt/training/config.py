"""Config dataclasses of the training loop, shared by every stage.

A stage's top-level config (e.g. `TeacherConfig`) composes these sections; YAML files fill
them through `salt.config.load_config`, which rejects unknown keys and wrong types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from salt.masks import DEFAULT_MASKS, MaskConfig
from salt.runtime.preemption import DEFAULT_STOP_SIGNALS, parse_signals
from salt.video.views import ViewConfig


@dataclass
class DataConfig:
    train: str = "data/synthetic/train.csv"  # CSV of `path label` lines, or a folder
    view: ViewConfig = field(default_factory=ViewConfig)
    batch_size: int = 8  # micro-batch per rank
    workers: int = 2  # DataLoader worker processes per rank (0: decode in the main process)
    decode_timeout: float = 60.0  # seconds per video before the decoder is killed
    max_bad_videos: int = 50  # the run stops with an error after skipping this many

    def validate(self) -> None:
        if self.batch_size < 1 or self.workers < 0 or self.max_bad_videos < 0:
            raise ValueError("data: batch_size >= 1, workers >= 0 and max_bad_videos >= 0 are required")


@dataclass
class EncoderConfig:
    arch: str = "vit_tiny"  # a name from salt.models.ARCHS
    overrides: dict[str, Any] = field(default_factory=dict)  # arch keys, e.g. {depth: 6, patch_size: 8}
    checkpoint_activations: bool = False  # recompute each block in backward (large sizes)

    def validate(self) -> None:
        if not self.arch:
            raise ValueError("encoder.arch must name a size (e.g. vit_tiny)")


@dataclass
class PredictorConfig:
    width: int = 384
    depth: int = 12
    num_heads: int = 12
    pos_embed: Literal["sincos3d", "rope"] = "sincos3d"  # rope: V-JEPA 2's rotary positions

    def validate(self) -> None:
        if self.width < 1 or self.depth < 0 or self.num_heads < 1:
            raise ValueError("predictor/decoder: width >= 1, depth >= 0 and num_heads >= 1 are required")
        if self.width % self.num_heads:
            raise ValueError(f"predictor/decoder: width {self.width} is not divisible by num_heads {self.num_heads}")


@dataclass
class OptimConfig:
    steps: int = 1000  # optimiser steps (each = grad_accum micro-batches per rank)
    warmup_steps: int = 100
    lr_start: float = 2e-4
    lr_peak: float = 6.25e-4
    lr_final: float = 1e-6
    wd_start: float = 0.04
    wd_final: float = 0.4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    grad_accum: int = 1

    def validate(self) -> None:
        if self.steps < 1 or self.warmup_steps < 0 or self.grad_accum < 1:
            raise ValueError("optim: steps >= 1, warmup_steps >= 0 and grad_accum >= 1 are required")
        if min(self.lr_start, self.lr_peak, self.lr_final, self.wd_start, self.wd_final, self.eps, self.grad_clip) < 0:
            raise ValueError("optim: learning rates, weight decays, eps and grad_clip must be >= 0")
        if not all(0 <= beta < 1 for beta in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {self.betas}")


@dataclass
class EngineConfig:
    """DeepSpeed settings; `extra` is merged last into the generated DeepSpeed config."""

    zero_stage: int = 1
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 where the hardware has it
    timeout_s: int = 600  # process-group timeout: a dead rank makes the others fail, not hang
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"engine.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.timeout_s < 1:
            raise ValueError(f"engine.timeout_s must be >= 1 second, got {self.timeout_s}")


@dataclass
class RunConfig:
    out_dir: str = "runs/teacher"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 200  # steps; a checkpoint is also written at the end
    keep_checkpoints: int = 2  # older DeepSpeed checkpoints are deleted
    tensorboard: bool = False
    progress: bool = True  # tqdm bar on rank 0
    stop_at: int = 0  # if > 0: checkpoint and exit after this step (time-limited jobs); --resume continues
    # torch.compile the trained parts (and a frozen teacher) in place: checkpoints keep their keys.
    # Pays off on GPUs for long runs; the first steps pay the compilation.
    compile: bool = False
    # Signals that stop the run after the optimiser step in progress, with a checkpoint, exit
    # status 75 (docs/cluster.md). Others keep their default action.
    stop_signals: list[str] = field(default_factory=lambda: list(DEFAULT_STOP_SIGNALS))

    def validate(self) -> None:
        if not self.out_dir:
            raise ValueError("run.out_dir must name a folder")
        parse_signals(self.stop_signals)
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError(
                f"run: log_every and checkpoint_every must be >= 1 step (got {self.log_every}, {self.checkpoint_every})"
            )
        if self.keep_checkpoints < 0 or self.stop_at < 0:
            raise ValueError(
                "run: keep_checkpoints >= 0 (0 keeps all) and stop_at >= 0 (0: run to the end) are required"
            )


def default_masks() -> list[MaskConfig]:
    return list(DEFAULT_MASKS)


@dataclass
class PixelConfig:
    # How each tubelet patch's pixel targets are standardised: channel (VideoMAE's, each channel
    # apart), patch (MAE's norm_pix_loss, all values together), none (raw pixels in [0, 1]).
    # On smooth synthetic textures only `patch` learns (docs/results.md, "Target normalisation").
    norm: Literal["patch", "channel", "none"] = "channel"


@dataclass
class SupervisedConfig:
    num_classes: int = 8
    # mean_pool: mean of the tokens, LayerNorm, linear (learns fast from scratch; what a linear
    # probe reads). attentive: the probe's attentive head, `head_depth` self-attention blocks first.
    head: Literal["mean_pool", "attentive"] = "mean_pool"
    head_depth: int = 1

    def validate(self) -> None:
        if self.num_classes < 2 or self.head_depth < 0:
            raise ValueError("supervised: num_classes >= 2 and head_depth >= 0 are required")


@dataclass
class TeacherConfig:
    """Stage 1: pixel reconstruction (or the supervised objective used to calibrate probes)."""

    objective: Literal["pixels", "supervised"] = "pixels"
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: PredictorConfig = field(default_factory=PredictorConfig)
    masks: list[MaskConfig] = field(default_factory=default_masks)
    pixels: PixelConfig = field(default_factory=PixelConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        if self.objective == "pixels" and not self.masks:
            raise ValueError("masks: the pixel objective needs at least one mask configuration")


@dataclass
class CacheSourceConfig:
    path: str = "cache/demo"
    format: Literal["auto", "wds", "zarr"] = "auto"
    on_error: Literal["raise", "skip"] = "raise"  # a corrupt sample: stop naming it, or skip and count
    views: int = 0  # train on the first N cached views of every video only (0: all of them)
    rank: int = 0  # the target rank this run expects of a low-rank cache (0: whatever the cache holds)
    # A low-rank cache gives the student its targets reconstructed to D channels, or the R
    # coefficients themselves (the predictor then outputs R channels; needs `loss: l2`).
    low_rank: Literal["reconstructed", "coefficients"] = "reconstructed"

    def validate(self) -> None:
        if not self.path:
            raise ValueError("cache.path must name a cache")
        if self.views < 0:
            raise ValueError(f"cache.views must be >= 0 (0: all), got {self.views}")
        if self.rank < 0:
            raise ValueError(f"cache.rank must be >= 0 (0: the cache's), got {self.rank}")


@dataclass
class GeometryConfig:
    """The clip geometry the student expects. 0 (the default): the cache's, read from its manifest;
    a value given is checked against the manifest before step 1."""

    frames: int = 0
    frame_step: int = 0
    size: int = 0

    def validate(self) -> None:
        if min(self.frames, self.frame_step, self.size) < 0:
            raise ValueError("geometry: frames, frame_step and size must be >= 1 (or 0: the cache's)")


@dataclass
class StudentDataConfig:
    batch_size: int = 16  # micro-batch per rank
    workers: int = 2  # DataLoader workers per rank reading the cache
    # workers: the loader workers decode the JPEG frames (CPU, libjpeg-turbo). device: they only
    # read bytes and the training process decodes each batch on its device (nvJPEG on a GPU;
    # on a CPU-only run, in the training process with the workers' decoder).
    decode_frames: Literal["workers", "device"] = "workers"

    def validate(self) -> None:
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError("data: batch_size >= 1 and workers >= 0 are required")


@dataclass
class EmaConfig:
    momentum_start: float = 0.998  # V-JEPA's schedule, linear to momentum_final
    momentum_final: float = 1.0

    def validate(self) -> None:
        if not (0 <= self.momentum_start <= 1 and 0 <= self.momentum_final <= 1):
            raise ValueError("ema: momentum_start and momentum_final must lie in [0, 1]")


@dataclass
class StudentConfig:
    """Stage 2: a student predicts the frozen teacher's latents at masked positions."""

    targets: Literal["cache", "teacher", "ema"] = "cache"
    cache: CacheSourceConfig = field(default_factory=CacheSourceConfig)
    teacher: str = ""  # checkpoint for `targets: teacher` (never read with `targets: cache`)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    data: StudentDataConfig = field(default_factory=StudentDataConfig)
    encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig(arch="vit_small"))
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    masks: list[MaskConfig] = field(default_factory=default_masks)
    ema: EmaConfig = field(default_factory=EmaConfig)
    health_every: int = 50  # micro-steps between feature-health numbers (0: never)
    # l1: V-JEPA's and the paper's. l2: rotation-invariant, so that on coefficients it equals the
    # full-space loss less the constant dropped variance (required with cache.low_rank: coefficients).
    loss: Literal["l1", "l2"] = "l1"
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/student"))

    def validate(self) -> None:
        if self.health_every < 0:
            raise ValueError(f"health_every must be >= 0 (0: never), got {self.health_every}")
        if self.cache.low_rank == "coefficients":
            if self.loss != "l2":
                raise ValueError(
                    "cache.low_rank: coefficients needs loss: l2 (an L2 loss on "
                    "orthonormal coefficients is the full-space L2 less a constant; L1 has "
                    "no such equivalence). Set loss: l2, or cache.low_rank: reconstructed"
                )
            if self.targets != "cache":
                raise ValueError(
                    f"cache.low_rank: coefficients needs targets: cache (targets: {self.targets} are D-dim)"
                )
        if not self.masks:
            raise ValueError("masks: at least one mask configuration is needed")


def with_cache_geometry(cfg: StudentConfig, geometry: Mapping[str, int]) -> StudentConfig:
    """`cfg` with what it leaves to the cache taken from the cache's geometry (a manifest's
    `geometry`: frames, frame_step, size, patch, tubelet): each geometry value at 0, and the
    encoder's patch and tubelet unless `encoder.overrides` names them (an override is added only
    where the size's own value differs). What was given stays, to be checked against the cache."""
    from salt.models.archs import resolve_arch

    clip = {key: getattr(cfg.geometry, key) or geometry[key] for key in ("frames", "frame_step", "size")}
    own = resolve_arch(cfg.encoder.arch)
    overrides = dict(cfg.encoder.overrides)
    for key, cached in (("patch_size", geometry["patch"]), ("tubelet_size", geometry["tubelet"])):
        if key not in overrides and own[key] != cached:
            overrides[key] = cached
    encoder = dataclasses.replace(cfg.encoder, overrides=overrides)
    return dataclasses.replace(cfg, geometry=GeometryConfig(**clip), encoder=encoder)


def schedule_warnings(optim: OptimConfig, run: RunConfig) -> list[str]:
    """Settings that run but cannot be what was meant. Warned, not refused: a short smoke run
    (`--set optim.steps=2` on a real config) is the usual way to meet them, and it is fine."""
    steps, found = optim.steps, []
    if optim.warmup_steps > steps:
        found.append(
            f"optim.warmup_steps {optim.warmup_steps} > optim.steps {steps}: the lr never reaches its peak — "
            f"set optim.warmup_steps to at most {steps} (a few % of the steps is usual)"
        )
    if run.log_every > steps:
        found.append(
            f"run.log_every {run.log_every} > optim.steps {steps}: one "
            f"metrics line, at the end — set run.log_every to at most {steps}"
        )
    if run.checkpoint_every > steps:
        found.append(
            f"run.checkpoint_every {run.checkpoint_every} > optim.steps {steps}: only the final checkpoint, so a "
            "stopped run restarts from step 0 — set run.checkpoint_every below optim.steps"
        )
    return found
