"""The online video pipeline: decode + augment + masks in DataLoader workers, whole batches out.

The order is a pure function of (seed, position): global sample `p` is video
`permutation(seed, epoch)[p mod N]` with `epoch = p // N`, rendered as view `epoch` of that
video (a new replayable view each epoch). Rank `r` of `W` takes samples
`(step·W + r)·B … +B` for its batch of `step`. Worker `w` of `K` builds the batches of the
steps `≡ w (mod K)`, and the DataLoader hands them out round-robin, so the batch sequence is
the same for any worker count, and a resumed run starts at its saved step by arithmetic,
without decoding what it already saw.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from salt.masks import MaskConfig, MaskPair, MultiBlockMasker
from salt.video.decode import VideoDecodeError
from salt.video.isolated import IsolatedDecoder
from salt.video.sources import VideoRecord
from salt.video.views import ViewConfig


@dataclass
class ClipBatch:
    """One micro-batch: uint8 frames (normalised later, on the device), labels and masks."""

    step: int
    frames: torch.Tensor  # uint8 [B, T, H, W, 3]
    labels: torch.Tensor  # int64 [B], -1 where unlabelled
    video_ids: torch.Tensor  # int64 [B]
    masks: list[MaskPair] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (video, reason) replaced in this batch

    def to(self, device, non_blocking: bool = False) -> "ClipBatch":
        return ClipBatch(
            self.step,
            self.frames.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.video_ids.to(device, non_blocking=non_blocking),
            [m.to(device, non_blocking=non_blocking) for m in self.masks],
            self.skipped,
        )

    def pin_memory(self) -> "ClipBatch":
        return ClipBatch(
            self.step, self.frames.pin_memory(), self.labels.pin_memory(), self.video_ids.pin_memory(),
            [m.pin_memory() for m in self.masks], self.skipped,
        )


class SampleOrder:
    """Global sample position → (video index, epoch); reshuffled every epoch from the seed."""

    def __init__(self, num_videos: int, seed: int):
        self.num_videos = num_videos
        self.seed = seed
        self._cached: tuple[int, np.ndarray] | None = None

    def __call__(self, position: int) -> tuple[int, int]:
        epoch, offset = divmod(position, self.num_videos)
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_videos))
        return int(self._cached[1][offset]), epoch


class ClipBatches(IterableDataset):
    """Endless batches of clips for one rank, from `start_step` on."""

    def __init__(
        self,
        records: list[VideoRecord],
        view: ViewConfig,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        mask_configs: list[MaskConfig] | None = None,
        token_grid: tuple[int, int, int] | None = None,
        start_step: int = 0,
        decode_timeout: float = 60.0,
        decode_function: str = "salt.video.decode:decode_record_views",
    ):
        super().__init__()
        if not records:
            raise ValueError("no videos to train on")
        self.records = records
        self.view = view
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.mask_configs = mask_configs
        self.token_grid = token_grid
        self.start_step = start_step
        self.decode_timeout = decode_timeout
        self.decode_function = decode_function

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = SampleOrder(len(self.records), self.seed)
        # Each rank draws its own masks; within a rank they depend on the step only.
        masker = (
            MultiBlockMasker(self.token_grid, self.mask_configs, seed=self.seed * 1_000_003 + self.rank)
            if self.mask_configs
            else None
        )
        with IsolatedDecoder(self.decode_function, timeout=self.decode_timeout) as decoder:
            for step in itertools.count(self.start_step + worker, workers):
                yield self._batch(step, order, decoder, masker)

    def _batch(self, step: int, order: SampleOrder, decoder: IsolatedDecoder, masker) -> ClipBatch:
        first = (step * self.world_size + self.rank) * self.batch_size
        clips, labels, video_ids, skipped = [], [], [], []
        for position in range(first, first + self.batch_size):
            index, epoch = order(position)
            record = self.records[index]
            try:
                (frames, _params), = decoder(record.name, record, [epoch], self.view)
            except VideoDecodeError as err:
                skipped.append((record.name, err.reason))
                continue
            clips.append(frames)
            labels.append(-1 if record.label is None else record.label)
            video_ids.append(record.video_id)
        if not clips:
            raise VideoDecodeError(
                f"batch {step}", f"all {self.batch_size} videos failed to decode (first: {skipped[0][0]}: {skipped[0][1]})"
            )
        # A skipped video is replaced by repeating a good one of the same batch: the batch keeps
        # its size and the sequence stays a function of the position.
        for missing in range(self.batch_size - len(clips)):
            clips.append(clips[missing % len(clips)])
            labels.append(labels[missing % len(labels)])
            video_ids.append(video_ids[missing % len(video_ids)])
        masks = masker(self.batch_size, step) if masker is not None else []
        return ClipBatch(
            step=step,
            frames=torch.from_numpy(np.stack(clips)),
            labels=torch.tensor(labels, dtype=torch.int64),
            video_ids=torch.tensor(video_ids, dtype=torch.int64),
            masks=masks,
            skipped=skipped,
        )


def clip_loader(dataset: ClipBatches, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over whole batches; workers start with spawn-safe 'forkserver'."""
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        multiprocessing_context="forkserver" if workers else None,
    )
