"""Multi-block 3-D masks over a video token grid (T', H', W').

What V-JEPA does (``src/masks/multiblock3d.py``): for each mask configuration it draws one
block size per batch (temporal extent, spatial area, aspect ratio), then for every sample
places ``num_blocks`` boxes of that size at random positions. The target (masked, predicted)
tokens are the union of the boxes; the context (seen by the encoder) is the rest. To stack a
batch it cuts every sample's sorted index list to the batch's shortest, keeping the first k.

What we change, and why:
- Equalisation by *random* subsampling to the batch minimum instead of the first k sorted
  indices. Cutting the sorted list always drops the last time steps of the longer samples,
  so the end of the clip is under-represented in both context and target. Random subsampling
  keeps every time step in its original proportion. The ratios after equalisation still
  depend on the micro-batch size (the minimum of more samples is smaller), so FLOP counts
  must use ``MaskPair.context_ratio`` / ``target_ratio``, not the nominal block scales.
- Reproducible from ``(seed, step)`` alone: one fresh generator per call, instead of a
  counter shared between DataLoader workers, so masks do not depend on the worker count
  or on the order in which workers run.
- Vectorised over the batch (broadcast comparisons of coordinates against block corners).
- Block height and width are clipped to at least 1, so a tiny grid never gets an empty target.

Token index convention: a token at (t, h, w) has flat index ``t*H'*W' + h*W' + w``, the order
of ``Conv3d(...).flatten(2)`` in the patch embedding.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

# Rounds of redrawing samples whose context is too small before giving up; each round
# redraws only the failing samples, so this bounds work only in pathological configurations.
_MAX_REDRAW_ROUNDS = 10_000


@dataclass(frozen=True)
class MaskConfig:
    """One family of blocks: ranges are (min, max) fractions, sampled once per batch."""

    num_blocks: int
    spatial_scale: tuple[float, float]  # fraction of the H'*W' plane covered by one block
    temporal_scale: tuple[float, float] = (1.0, 1.0)  # fraction of T' spanned by one block
    aspect_ratio: tuple[float, float] = (0.75, 1.5)  # block height / width

    def __post_init__(self) -> None:
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        for name in ("spatial_scale", "temporal_scale", "aspect_ratio"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must satisfy 0 < min <= max, got {(low, high)}")


# V-JEPA's two configurations: short-range (many small blocks) and long-range (two large ones).
DEFAULT_MASKS = (MaskConfig(8, (0.15, 0.15)), MaskConfig(2, (0.7, 0.7)))


def _mask_pair_from_arrays(
    context_idx: np.ndarray, target_idx: np.ndarray, num_tokens: int, masked_fraction_before: np.ndarray
) -> "MaskPair":
    return MaskPair(
        torch.from_numpy(context_idx),
        torch.from_numpy(target_idx),
        num_tokens,
        torch.from_numpy(masked_fraction_before),
    )


@dataclass
class MaskPair:
    """Context and target token indices of one mask configuration for a whole batch.

    Rows are sorted ascending, unique, and disjoint between context and target of a sample.
    """

    context_idx: torch.Tensor  # int64 [B, Nc]: tokens the encoder sees
    target_idx: torch.Tensor  # int64 [B, Nt]: tokens the predictor must predict
    num_tokens: int  # T'*H'*W'
    masked_fraction_before: torch.Tensor  # float32 [B]: union-of-blocks fraction per sample

    @property
    def context_ratio(self) -> float:
        """Share of the tokens the encoder processes, after equalisation (use for FLOPs)."""
        return self.context_idx.shape[1] / self.num_tokens

    @property
    def target_ratio(self) -> float:
        """Share of the tokens predicted, after equalisation (use for FLOPs)."""
        return self.target_idx.shape[1] / self.num_tokens

    def __reduce__(self):
        # A loader worker hands masks over inline, as bytes in the pickle: a few kB per batch.
        # As tensors, each would be a shared-memory file whose descriptor the training process
        # fetches over a socket from the worker (~0.4 ms each, on the training process's path).
        if self.context_idx.device.type != "cpu":
            return MaskPair, (self.context_idx, self.target_idx, self.num_tokens, self.masked_fraction_before)
        return _mask_pair_from_arrays, (
            self.context_idx.numpy(),
            self.target_idx.numpy(),
            self.num_tokens,
            self.masked_fraction_before.numpy(),
        )

    def map(self, fn) -> MaskPair:
        """The same pair with `fn` applied to each of its tensors (the one place that rebuilds it)."""
        return dataclasses.replace(
            self,
            context_idx=fn(self.context_idx),
            target_idx=fn(self.target_idx),
            masked_fraction_before=fn(self.masked_fraction_before),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskPair:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> MaskPair:
        # DataLoader(pin_memory=True) calls this on custom batch elements.
        return self.map(lambda t: t.pin_memory())


class MultiBlockMasker:
    """Draws one ``MaskPair`` per configuration for a batch, reproducibly from (seed, step).

    ``step`` should be unique per micro-batch over the whole run (e.g. the global batch index,
    counting across epochs so masks are re-drawn each epoch); give each data-parallel rank its
    own ``seed`` so ranks do not share masks.
    """

    def __init__(
        self,
        grid: tuple[int, int, int],
        configs: tuple[MaskConfig, ...] = DEFAULT_MASKS,
        seed: int = 0,
        min_context: int = 1,
    ) -> None:
        self.grid = tuple(int(n) for n in grid)
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(f"grid must be three positive sizes (T', H', W'), got {grid}")
        self.configs = tuple(configs)
        self.seed = int(seed)
        self.min_context = int(min_context)
        self.num_tokens = math.prod(self.grid)

    def __call__(self, batch_size: int, step: int) -> list[MaskPair]:
        """One MaskPair per configuration, in order, for a batch of ``batch_size`` clips."""
        generator = self._generator(step)
        masked_per_config = self._draw_masked(batch_size, generator)
        # Equalisation draws from the same generator after all masks, so that
        # masked_union(batch_size, step) reproduces exactly the unions used here.
        pairs = []
        for masked in masked_per_config:
            scores = torch.rand(masked.shape, generator=generator)
            context_idx = _random_subset_to_shortest(~masked, scores)
            target_idx = _random_subset_to_shortest(masked, scores)
            fraction = masked.float().mean(dim=1)
            pairs.append(MaskPair(context_idx, target_idx, self.num_tokens, fraction))
        return pairs

    def masked_union(self, batch_size: int, step: int) -> list[torch.Tensor]:
        """Per configuration, bool [B, N]: the union of blocks before equalisation."""
        return self._draw_masked(batch_size, self._generator(step))

    def _generator(self, step: int) -> torch.Generator:
        # SeedSequence mixes (seed, step) so nearby pairs give unrelated streams.
        state = np.random.SeedSequence((self.seed, int(step))).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def _draw_masked(self, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
        return [self._draw_config(config, batch_size, generator) for config in self.configs]

    def _draw_config(self, config: MaskConfig, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        block_size = self._draw_block_size(config, generator)
        largest_context = self.num_tokens - math.prod(block_size)  # all blocks on one spot
        if largest_context < self.min_context:
            raise ValueError(
                f"block size {block_size} on grid {self.grid} can never leave "
                f"min_context={self.min_context} context tokens; lower the block scales"
            )
        corners = _draw_block_corners(self.grid, block_size, batch_size, config.num_blocks, generator)
        masked = _union_of_blocks(self.grid, block_size, corners).flatten(1)
        # Redraw positions of the (rare) samples whose context is too small.
        for _ in range(_MAX_REDRAW_ROUNDS):
            too_small = (self.num_tokens - masked.sum(dim=1)) < self.min_context
            if not too_small.any():
                return masked
            redo = too_small.nonzero().squeeze(1)
            corners = _draw_block_corners(self.grid, block_size, len(redo), config.num_blocks, generator)
            masked[redo] = _union_of_blocks(self.grid, block_size, corners).flatten(1)
        raise RuntimeError(f"could not leave {self.min_context} context tokens with {config}")

    def _draw_block_size(self, config: MaskConfig, generator: torch.Generator) -> tuple[int, int, int]:
        # As V-JEPA: one independent uniform draw each for temporal scale, spatial scale and
        # aspect ratio, shared by the whole batch.
        frames, height, width = self.grid
        t_rand, s_rand, a_rand = torch.rand(3, generator=generator).tolist()
        t_low, t_high = config.temporal_scale
        s_low, s_high = config.spatial_scale
        a_low, a_high = config.aspect_ratio
        t = max(1, int(frames * (t_low + t_rand * (t_high - t_low))))
        spatial_num_keep = int(height * width * (s_low + s_rand * (s_high - s_low)))
        aspect = a_low + a_rand * (a_high - a_low)
        h = int(round(math.sqrt(spatial_num_keep * aspect)))
        w = int(round(math.sqrt(spatial_num_keep / aspect)))
        return min(t, frames), min(max(h, 1), height), min(max(w, 1), width)


def _draw_block_corners(
    grid: tuple[int, int, int],
    block_size: tuple[int, int, int],
    batch_size: int,
    num_blocks: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """int64 [B, num_blocks, 3]: (start, top, left) of each block, uniform over valid spots."""
    columns = [
        torch.randint(0, extent - size + 1, (batch_size, num_blocks), generator=generator)
        for extent, size in zip(grid, block_size)
    ]
    return torch.stack(columns, dim=-1)


def _union_of_blocks(
    grid: tuple[int, int, int], block_size: tuple[int, int, int], corners: torch.Tensor
) -> torch.Tensor:
    """bool [B, T', H', W']: tokens covered by any of the blocks whose corners are given."""
    # Per axis, [B, num_blocks, extent]: is coordinate c inside [corner, corner + size)?
    inside = []
    for axis, (extent, size) in enumerate(zip(grid, block_size)):
        coords = torch.arange(extent)
        low = corners[:, :, axis : axis + 1]
        inside.append((coords >= low) & (coords < low + size))
    in_t, in_h, in_w = inside
    # A block is the outer product of its three 1-D intervals, and the union is `any` over
    # blocks. Summing the products over blocks is a batched matrix product of the temporal
    # intervals with the spatial rectangles, much cheaper than a [B, blocks, T, H, W] tensor.
    in_rect = (in_h[:, :, :, None] & in_w[:, :, None, :]).flatten(2)  # [B, blocks, H*W]
    blocks_covering = torch.bmm(in_t.transpose(1, 2).float(), in_rect.float())  # [B, T, H*W]
    return (blocks_covering > 0).view(corners.shape[0], *grid)


def _random_subset_to_shortest(members: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """int64 [B, k]: per row, k random member indices sorted ascending, k = fewest members.

    ``scores`` [B, N] are i.i.d. uniform; the k highest-scoring members form a uniform random
    subset. Context and target may share one ``scores`` tensor: their members are disjoint,
    so the two selections still use independent numbers.
    """
    batch_size = members.shape[0]
    keep = int(members.sum(dim=1).min())
    member_scores = scores.masked_fill(~members, -math.inf)  # non-members never chosen
    chosen = member_scores.topk(keep, dim=1, sorted=False).indices
    # Marking the chosen tokens and listing the marks in row-major order yields each row's
    # indices ascending; this is about twice as fast as sorting `chosen`.
    selected = torch.zeros_like(members).scatter_(1, chosen, True)
    return selected.nonzero()[:, 1].view(batch_size, keep)


def apply_masks(x: torch.Tensor, idx: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Select tokens: x [B, N, D], idx [B, K] -> [B, K, D] with out[b, k] = x[b, idx[b, k]].

    A list of index tensors, each [B, K], gives each selection in turn concatenated along the
    batch: [len(idx) * B, K, D], as V-JEPA's ``apply_masks``. The concatenation needs one K
    for all of them, so different mask configurations (different K) go in separate calls.
    """
    if isinstance(idx, (list, tuple)):
        return torch.cat([apply_masks(x, one) for one in idx], dim=0)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
