"""Identities of samples and shards, and the records that travel between writer and reader."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from salt.latents.errors import CacheError

# Keys sort in (video, view) order and contain no dot: WebDataset splits member names at
# the first dot, so a dot in the key would tear a sample apart.
_KEY_PATTERN = re.compile(r"^v(\d{8})k(\d{3})$")
_NAME_PATTERN = re.compile(r"^s(\d{8})-(\d{8})-k(\d{3})-(\d{3})(?:\.\w+)?$")
MAX_VIDEOS = 10**8
MAX_VIEWS = 10**3


def sample_key(video: int, view: int) -> str:
    """`v00000012k003` for view 3 of video 12."""
    if not (0 <= video < MAX_VIDEOS and 0 <= view < MAX_VIEWS):
        raise CacheError(f"video {video} / view {view} out of range for keys (< {MAX_VIDEOS} / < {MAX_VIEWS})")
    return f"v{video:08d}k{view:03d}"


def parse_key(key: str) -> tuple[int, int]:
    """(video, view) of a key made by `sample_key`."""
    match = _KEY_PATTERN.match(key)
    if match is None:
        raise CacheError(f"{key!r} is not a sample key (expected v<8 digits>k<3 digits>)")
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True, order=True)
class ShardId:
    """A rectangle of samples, half-open in both directions, written whole by one writer."""

    video_start: int
    video_end: int
    view_start: int
    view_end: int

    def __post_init__(self) -> None:
        if not (
            0 <= self.video_start < self.video_end <= MAX_VIDEOS and 0 <= self.view_start < self.view_end <= MAX_VIEWS
        ):
            raise CacheError(f"empty or out-of-range shard {self!r}")

    @property
    def name(self) -> str:
        return f"s{self.video_start:08d}-{self.video_end:08d}-k{self.view_start:03d}-{self.view_end:03d}"

    @classmethod
    def from_name(cls, name: str) -> ShardId:
        """The rectangle a shard's name (`name`, or a file `name.json`/`name.tar`) spells."""
        match = _NAME_PATTERN.match(name)
        if match is None:
            raise CacheError(f"{name!r} is not a shard name (expected s<8 digits>-<8 digits>-k<3 digits>-<3 digits>)")
        return cls(*(int(group) for group in match.groups()))

    def contains(self, video: int, view: int) -> bool:
        return self.video_start <= video < self.video_end and self.view_start <= view < self.view_end

    def sample_ids(self, skipped_videos: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, int]]:
        """Every (video, view) this shard holds, in key order, leaving out skipped videos."""
        return [
            (video, view)
            for video in range(self.video_start, self.video_end)
            if video not in skipped_videos
            for view in range(self.view_start, self.view_end)
        ]


@dataclass
class EncodedSample:
    """One sample as the WebDataset writer stores it: every field already encoded to bytes."""

    key: str
    frames: list[bytes]
    frame_ext: Literal["jpg", "png"]
    latents: dict[str, bytes]  # from LatentCodec.encode: "latents" and, for int8, "scales"
    meta: dict[str, Any]


@dataclass
class CacheSample:
    """One decoded sample as a student sees it.

    How much is decoded is the reader's choice (`LatentCache.stream(frames=, latents=)`): by
    default uint8 frames and float32 latents; a training loader that decodes on its device asks
    for the JPEG bytes (`encoded_frames`) and the stored latents (`latent_scales` for int8)."""

    key: str
    video: int
    view: int
    frames: np.ndarray | None  # uint8 [T, H, W, 3], exactly the frames the teacher saw (None: not decoded)
    latents: torch.Tensor  # [N, D], not yet normalised (see apply_target_norm): float32, or as stored
    meta: dict[str, Any] = field(default_factory=dict)
    encoded_frames: list[bytes] | None = None  # the stored frame files, with frames="encoded"
    latent_scales: torch.Tensor | None = None  # float32 [D] of int8 latents read with latents="stored"


class Problem(NamedTuple):
    """A defect found by `verify` or skipped by `stream(on_error="skip")`."""

    shard: str
    key: str | None
    reason: str
