"""Micro-batches for the training loop: clips decoded online (stage 1) or read from a cache (process 2).

One global order, whatever the number of ranks and workers: global sample position `p` is
fixed by (seed, epoch) alone, and global micro-batch `g` holds positions `g·B … g·B + B - 1`.
Rank `r` of `W` builds the micro-batches `g = m·W + r` for its micro-steps `m` (optimiser step
× grad_accum + i), and its worker `w` of `K` the micro-steps `m ≡ w (mod K)`, handed out
round-robin by the DataLoader. Masks are drawn from (seed, g). So global batch `s` holds
positions `s·G … (s+1)·G - 1` (G = B × grad_accum × W) on any number of ranks, a resumed run
starts at its step by arithmetic without decoding what it already saw, and a run stopped on N
ranks resumes on M with the same global batch (`optim.grad_accum` or `data.batch_size` making
up the difference): with the micro-batch kept, it trains on exactly the batches and masks the
uninterrupted run would have.

Stage 1: position `p` is video `permutation(seed, epoch)[p mod N]` (`epoch = p // N`),
rendered as view `epoch` of that video. Process 2: position `p` is sample
`EpochOrder(cache, seed)(p)` (shards shuffled per epoch, then each shard's samples).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from salt.masks import MaskConfig, MaskPair, MultiBlockMasker
from salt.runtime.loader_workers import owned_loader
from salt.video.errors import VideoDecodeError
from salt.video.isolated import IsolatedDecoder
from salt.video.sources import VideoRecord
from salt.video.views import ViewConfig


@dataclass(frozen=True)
class ReaderShare:
    """Which share of the data one loader reads: rank `rank` of `world_size`, each rank with
    `num_workers` loader workers (0 and 1 both mean one reader, in the training process)."""

    rank: int = 0
    world_size: int = 1
    num_workers: int = 1


@dataclass
class ClipBatch:
    """One micro-batch: uint8 frames (normalised later, on the device), labels and masks."""

    micro_step: int
    frames: torch.Tensor  # uint8 [B, T, H, W, 3]
    labels: torch.Tensor  # int64 [B], -1 where unlabelled
    video_ids: torch.Tensor  # int64 [B]
    masks: list[MaskPair] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (video, reason) replaced in this batch

    def to(self, device, non_blocking: bool = False) -> "ClipBatch":
        return _map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "ClipBatch":
        return _map_tensors(self, lambda t: t.pin_memory())


@dataclass
class JpegFrames:
    """The stored JPEG files of a batch's frames, packed into one byte tensor for the trip from
    a loader worker (one shared-memory tensor instead of B·T pickled byte strings)."""

    data: torch.Tensor  # uint8 [total bytes]
    offsets: torch.Tensor  # int64 [B·T + 1]
    frames_per_sample: int

    @classmethod
    def pack(cls, samples: list[list[bytes]]) -> "JpegFrames":
        files = [data for frames in samples for data in frames]
        offsets = np.zeros(len(files) + 1, dtype=np.int64)
        np.cumsum([len(data) for data in files], out=offsets[1:])
        return cls(
            torch.from_numpy(np.frombuffer(b"".join(files), dtype=np.uint8).copy()),
            torch.from_numpy(offsets),
            len(samples[0]),
        )

    def unpack(self) -> list[list[bytes]]:
        raw, bounds = self.data.numpy().tobytes(), self.offsets.tolist()
        files = [raw[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        t = self.frames_per_sample
        return [files[i : i + t] for i in range(0, len(files), t)]


@dataclass
class CacheBatch:
    """One micro-batch read from a latent cache: the frames the teacher saw and its latents.

    The latents travel at their stored width (fp16/bf16, or int8 with `target_scales`) and
    become float32 on the device (`float_targets`). With `data.decode_frames: device` the frames
    travel as JPEG bytes (`jpeg`) and `to(device)` decodes them there (nvJPEG on a GPU)."""

    micro_step: int
    frames: torch.Tensor | None  # uint8 [B, T, H, W, 3]; None while `jpeg` holds them undecoded
    targets: torch.Tensor  # [B, N, D] stored latents (fp16, bf16 or int8), not yet normalised
    keys: list[str]
    masks: list[MaskPair] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (shard/key, reason) skipped (on_error: skip)
    target_scales: torch.Tensor | None = None  # float32 [B, D] of int8 targets
    jpeg: JpegFrames | None = None

    def float_targets(self) -> torch.Tensor:
        """float32 [B, N, D]: exactly the reader's dequantised latents."""
        from salt.latents.codecs import dequantise

        return dequantise(self.targets, self.target_scales)

    def to(self, device, non_blocking: bool = False) -> "CacheBatch":
        moved = _map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))
        if moved.jpeg is not None:
            from salt.latents.codecs import decode_jpeg_batch

            moved.frames, moved.jpeg = decode_jpeg_batch(self.jpeg.unpack(), device), None
        return moved

    def pin_memory(self) -> "CacheBatch":
        return _map_tensors(self, lambda t: t.pin_memory())


def _map_tensors(batch, fn):
    """A copy of a batch dataclass with `fn` applied to its tensors and its masks' tensors."""
    values = {}
    for name, value in vars(batch).items():
        if isinstance(value, torch.Tensor):
            value = fn(value)
        elif name == "masks":
            value = [mask.map(fn) for mask in value]
        values[name] = value
    return type(batch)(**values)


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
    """Endless micro-batches of clips for one rank, from `start_micro_step` on (the loader
    workers are the DataLoader's; `share.num_workers` is not read)."""

    def __init__(
        self,
        *,
        records: list[VideoRecord],
        view: ViewConfig,
        batch_size: int,
        seed: int,
        share: ReaderShare = ReaderShare(),
        mask_configs: list[MaskConfig] | None = None,
        token_grid: tuple[int, int, int] | None = None,
        start_micro_step: int = 0,
        decode_timeout: float = 60.0,
        decode_function: str = "salt.video.decode:decode_record_views",
    ):
        super().__init__()
        if not records:
            raise ValueError("no videos to train on")
        self.records, self.view, self.batch_size, self.seed = records, view, batch_size, seed
        self.rank, self.world_size = share.rank, share.world_size
        self.mask_configs, self.token_grid = mask_configs, token_grid
        self.start_micro_step = start_micro_step
        self.decode_timeout, self.decode_function = decode_timeout, decode_function

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        order = SampleOrder(len(self.records), self.seed)
        masker = MultiBlockMasker(self.token_grid, self.mask_configs, seed=self.seed) if self.mask_configs else None
        with IsolatedDecoder(self.decode_function, timeout=self.decode_timeout) as decoder:
            for micro_step in itertools.count(self.start_micro_step + worker, workers):
                yield self._batch(micro_step, order, decoder, masker)

    def _batch(self, micro_step: int, order: SampleOrder, decoder: IsolatedDecoder, masker) -> ClipBatch:
        global_micro_batch = micro_step * self.world_size + self.rank
        first = global_micro_batch * self.batch_size
        clips, labels, video_ids, skipped = [], [], [], []
        for position in range(first, first + self.batch_size):
            index, epoch = order(position)
            record = self.records[index]
            try:
                ((frames, _params),) = decoder(record.name, record, [epoch], self.view)
            except VideoDecodeError as err:
                skipped.append((record.name, err.reason))
                continue
            clips.append(frames)
            labels.append(-1 if record.label is None else record.label)
            video_ids.append(record.video_id)
        if not clips:
            raise VideoDecodeError(
                f"batch {micro_step}",
                f"all {self.batch_size} videos failed to decode (first: {skipped[0][0]}: {skipped[0][1]})",
            )
        # A skipped video is replaced by repeating a good one of the same batch: the batch keeps
        # its size and the sequence stays a function of the position.
        for missing in range(self.batch_size - len(clips)):
            clips.append(clips[missing % len(clips)])
            labels.append(labels[missing % len(labels)])
            video_ids.append(video_ids[missing % len(video_ids)])
        masks = masker(self.batch_size, global_micro_batch) if masker is not None else []
        return ClipBatch(
            micro_step=micro_step,
            frames=torch.from_numpy(np.stack(clips)),
            labels=torch.tensor(labels, dtype=torch.int64),
            video_ids=torch.tensor(video_ids, dtype=torch.int64),
            masks=masks,
            skipped=skipped,
        )


class CacheBatches(IterableDataset):
    """Endless micro-batches for one rank from a latent cache, in the global order (module
    docstring); masks drawn online from (seed, global micro-batch). A sample that cannot be
    read (`on_error: skip`) is replaced by repeating a good one of the same batch (or the last
    good one), so positions, and with them resume, stay exact."""

    def __init__(
        self,
        *,
        cache_path: str,
        cache_format: str,
        batch_size: int,
        seed: int,
        share: ReaderShare,
        mask_configs: list[MaskConfig],
        token_grid: tuple[int, int, int],
        start_micro_step: int = 0,
        on_error: str = "raise",
        views: int = 0,
        decode_frames: str = "workers",
    ):
        super().__init__()
        self.decode_frames = decode_frames
        self.cache_path, self.cache_format, self.views = cache_path, cache_format, views
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, share.rank, share.world_size
        self.mask_configs, self.token_grid = mask_configs, token_grid
        self.start_micro_step, self.on_error = start_micro_step, on_error

    def __iter__(self):
        from salt.latents import EpochOrder, SampleReader, open_cache

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        cache = open_cache(self.cache_path, self.cache_format, self.views)
        order = EpochOrder(cache, self.seed)
        masker = MultiBlockMasker(self.token_grid, self.mask_configs, seed=self.seed)
        skipped: list[tuple[str, str]] = []
        frames = "encoded" if self.decode_frames == "device" else "decoded"
        reader = SampleReader(
            cache,
            frames=frames,
            latents="stored",
            on_error=self.on_error,
            on_skip=lambda problem: skipped.append((f"{problem.shard}/{problem.key}", problem.reason)),
        )
        last_good = None
        with reader:
            for micro_step in itertools.count(self.start_micro_step + worker, workers):
                global_micro_batch = micro_step * self.world_size + self.rank
                first = global_micro_batch * self.batch_size
                read = [reader(order(p)) for p in range(first, first + self.batch_size)]
                taken = [sample for sample in read if sample is not None]
                if not taken:  # a whole batch unreadable (e.g. a deleted shard): repeat the last good sample
                    if last_good is None:
                        raise VideoDecodeError(
                            "cache",
                            f"{self.batch_size} consecutive samples are corrupt before any good one "
                            f"(first: {skipped[0]}); run `salt inspect --verify` on the cache",
                        )
                    taken = [last_good]
                last_good = taken[-1]
                taken += [taken[i % len(taken)] for i in range(self.batch_size - len(taken))]
                yield self._batch(micro_step, taken, masker(self.batch_size, global_micro_batch), list(skipped))
                skipped.clear()

    def _batch(self, micro_step: int, taken: list, masks: list[MaskPair], skipped: list) -> CacheBatch:
        on_device = self.decode_frames == "device"
        scales = torch.stack([s.latent_scales for s in taken]) if taken[0].latent_scales is not None else None
        return CacheBatch(
            micro_step=micro_step,
            frames=None if on_device else torch.from_numpy(np.stack([s.frames for s in taken])),
            targets=torch.stack([s.latents for s in taken]),
            keys=[s.key for s in taken],
            masks=masks,
            skipped=skipped,
            target_scales=scales,
            jpeg=JpegFrames.pack([s.encoded_frames for s in taken]) if on_device else None,
        )


def clip_loader(dataset: IterableDataset, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over whole batches; forkserver workers that exit with this process."""
    return owned_loader(
        dataset,
        workers,
        batch_size=None,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
    )
