"""Config dataclasses of the training loop, shared by every stage.

A stage's top-level config (e.g. `TeacherConfig`) composes these sections; YAML files fill
them through `salt.config.load_config`, which rejects unknown keys and wrong types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from salt.masks import DEFAULT_MASKS, MaskConfig
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
    overrides: dict[str, Any] = field(default_factory=dict)  # e.g. {pos_embed: sincos1d}
    checkpoint_activations: bool = False  # recompute each block in backward (large sizes)


@dataclass
class PredictorConfig:
    width: int = 384
    depth: int = 12
    num_heads: int = 12


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


def default_masks() -> list[MaskConfig]:
    return list(DEFAULT_MASKS)


@dataclass
class PixelConfig:
    norm_pix: bool = True  # VideoMAE's per-patch, per-channel normalised targets


@dataclass
class SupervisedConfig:
    num_classes: int = 8
    head_depth: int = 1  # self-attention blocks before the cross-attention pooler


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


@dataclass
class CacheSourceConfig:
    path: str = "cache/demo"
    format: Literal["auto", "wds", "zarr"] = "auto"
    on_error: Literal["raise", "skip"] = "raise"  # a corrupt sample: stop naming it, or skip and count
    views: int = 0  # train on the first N cached views of every video only (0: all of them)


@dataclass
class GeometryConfig:
    """The clip geometry the student expects; checked against the cache's manifest before step 1."""

    frames: int = 16
    frame_step: int = 4
    size: int = 64


@dataclass
class StudentDataConfig:
    batch_size: int = 16  # micro-batch per rank
    workers: int = 2  # DataLoader workers per rank reading the cache
    reuse_first_batch: bool = False  # benchmarks only: train on the first batch forever (no loader cost)

    def validate(self) -> None:
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError("data: batch_size >= 1 and workers >= 0 are required")


@dataclass
class EmaConfig:
    momentum_start: float = 0.998  # V-JEPA's schedule, linear to momentum_final
    momentum_final: float = 1.0


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
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/student"))
