"""Replayable augmented views of a video.

A view is one clip of `frames` frames, `frame_step` apart, cut from a random window, then a
random resized crop (crop first, resize the uint8 pixels after) and a horizontal flip. Every
random choice lands in a `ViewParams` record and is drawn from a generator seeded by
(seed, video id, view index) alone: the same view can be rebuilt from the video and its
record, and new views can be added later without changing the old ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from salt.video.decoders import DECODERS

if TYPE_CHECKING:
    import torch

# torch and torchvision are imported where frames are rendered, not here: configs and data
# lists that only name views (`salt check-data`, a config refused in one line) stay quick.
# RENDER_IMPORTS are what a decoder process imports before its first video (salt/video/isolated.py).
RENDER_IMPORTS = ("torch", "torchvision.transforms.v2.functional")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViewConfig:
    """How clips are cut and augmented (V-JEPA's defaults)."""

    frames: int = 16
    frame_step: int = 4
    size: int = 224
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.35)
    flip_prob: float = 0.5
    seed: int = 0
    # Evaluation views (deterministic, no flip): view k is temporal clip k // eval_spatial of
    # eval_clips evenly spaced windows, and spatial crop k % eval_spatial of eval_spatial square
    # crops spread along the long side. 0 = random training views.
    eval_clips: int = 0
    eval_spatial: int = 0
    # Which decoder reads the videos (salt/video/decoders.py): pyav, or decord where installed.
    decoder: str = "pyav"

    def validate(self) -> None:
        if self.frames < 1 or self.frame_step < 1 or self.size < 1:
            raise ValueError(
                f"view: frames, frame_step and size must be >= 1 (got {self.frames}, {self.frame_step}, {self.size})"
            )
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"view.crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"view.crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"view.flip_prob must be in [0, 1], got {self.flip_prob}")
        if (self.eval_clips > 0) != (self.eval_spatial > 0):
            raise ValueError("view.eval_clips and view.eval_spatial must both be set (> 0) or both be 0")
        if self.decoder not in DECODERS:
            raise ValueError(f"view.decoder {self.decoder!r} is not one of {', '.join(DECODERS)}")

    @property
    def evaluation(self) -> bool:
        return self.eval_clips > 0

    @property
    def window(self) -> int:
        """Source frames one clip spans."""
        return (self.frames - 1) * self.frame_step + 1


@dataclass(frozen=True)
class ViewParams:
    """Everything random about one view, in source-video terms."""

    video_id: int
    view_index: int
    frame_indices: tuple[int, ...]
    crop: tuple[int, int, int, int]  # top, left, height, width in source pixels
    flip: bool
    source_size: tuple[int, int]  # height, width
    source_frames: int
    out_size: tuple[int, int]  # height, width

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ViewParams":
        return cls(
            video_id=int(data["video_id"]),
            view_index=int(data["view_index"]),
            frame_indices=tuple(int(i) for i in data["frame_indices"]),
            crop=tuple(int(v) for v in data["crop"]),
            flip=bool(data["flip"]),
            source_size=tuple(int(v) for v in data["source_size"]),
            source_frames=int(data["source_frames"]),
            out_size=tuple(int(v) for v in data["out_size"]),
        )


def view_rng(seed: int, video_id: int, view_index: int) -> np.random.Generator:
    """A generator that depends on (seed, video id, view index) and nothing else."""
    return np.random.default_rng([seed, video_id, view_index])


def sample_frame_indices(num_frames: int, cfg: ViewConfig, rng: np.random.Generator) -> tuple[int, ...]:
    """`cfg.frames` indices `frame_step` apart from a random window.

    Rule for a video shorter than the window: the clip starts at frame 0 and every index past
    the end repeats the last frame.
    """
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    if num_frames >= cfg.window:
        start = int(rng.integers(0, num_frames - cfg.window + 1))
        return tuple(start + k * cfg.frame_step for k in range(cfg.frames))
    return tuple(min(k * cfg.frame_step, num_frames - 1) for k in range(cfg.frames))


def sample_crop(height: int, width: int, cfg: ViewConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Random resized crop box (top, left, h, w), as torchvision's RandomResizedCrop draws it."""
    area = height * width
    log_ratio = (math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(cfg.crop_scale[0], cfg.crop_scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    # Fallback: the largest centred crop whose ratio is inside the range.
    ratio = width / height
    if ratio < cfg.crop_ratio[0]:
        w, h = width, int(round(width / cfg.crop_ratio[0]))
    elif ratio > cfg.crop_ratio[1]:
        h, w = height, int(round(height * cfg.crop_ratio[1]))
    else:
        h, w = height, width
    h, w = max(1, min(h, height)), max(1, min(w, width))
    return (height - h) // 2, (width - w) // 2, h, w


def view_frame_indices(video_id: int, view_index: int, num_frames: int, cfg: ViewConfig) -> tuple[int, ...]:
    """The frames a view uses; known from the frame count alone (before any frame is decoded)."""
    if not cfg.evaluation:
        return sample_frame_indices(num_frames, cfg, view_rng(cfg.seed, video_id, view_index))
    clip = view_index // cfg.eval_spatial
    if num_frames < cfg.window:
        return tuple(min(k * cfg.frame_step, num_frames - 1) for k in range(cfg.frames))
    starts = np.linspace(0, num_frames - cfg.window, cfg.eval_clips)
    start = int(round(starts[min(clip, cfg.eval_clips - 1)]))
    return tuple(start + k * cfg.frame_step for k in range(cfg.frames))


def sample_view(
    video_id: int, view_index: int, num_frames: int, height: int, width: int, cfg: ViewConfig
) -> ViewParams:
    if cfg.evaluation:
        side = min(height, width)
        position = (view_index % cfg.eval_spatial) / (cfg.eval_spatial - 1) if cfg.eval_spatial > 1 else 0.5
        top, left = int(round((height - side) * position)), int(round((width - side) * position))
        crop, flip = (top, left, side, side), False
        frame_indices = view_frame_indices(video_id, view_index, num_frames, cfg)
    else:
        rng = view_rng(cfg.seed, video_id, view_index)
        frame_indices = sample_frame_indices(num_frames, cfg, rng)
        crop = sample_crop(height, width, cfg, rng)
        flip = bool(rng.random() < cfg.flip_prob)
    return ViewParams(
        video_id=video_id,
        view_index=view_index,
        frame_indices=frame_indices,
        crop=crop,
        flip=flip,
        source_size=(height, width),
        source_frames=num_frames,
        out_size=(cfg.size, cfg.size),
    )


def render_view(frames, params: ViewParams) -> np.ndarray:
    """Crop, resize (uint8, antialiased) and flip frames (`[T,H,W,3]`, or T arrays `[H,W,3]`)
    as `params` says. Each frame is cropped before anything is copied."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    top, left, h, w = params.crop
    clip = torch.from_numpy(np.stack([frame[top : top + h, left : left + w] for frame in frames]))
    clip = clip.permute(0, 3, 1, 2)  # T,3,h,w: resize works on the last two dims
    if (h, w) != tuple(params.out_size):
        clip = TF.resize(clip, list(params.out_size), antialias=True)
    if params.flip:
        clip = clip.flip(-1)
    return clip.permute(0, 2, 3, 1).contiguous().numpy()


def to_model_input(
    frames: torch.Tensor, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 `[B,T,H,W,3]` → normalised float `[B,3,T,H,W]` on the frames' device.

    Loaders hand over uint8 (4× fewer bytes to move); normalising happens where the model runs.
    """
    import torch

    x = frames.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1, 1)
    return x.sub_(mean_t).div_(std_t)
