"""Tests of salt.masks: V-JEPA multi-block 3-D masks with random equalisation."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from salt.masks import (
    DEFAULT_MASKS,
    MaskConfig,
    MaskPair,
    MultiBlockMasker,
    _draw_block_corners,
    _union_of_blocks,
    apply_masks,
)

GRID = (8, 14, 14)  # 16 frames at 224², tubelet 2, patch 16
NUM_TOKENS = 8 * 14 * 14


def _is_strictly_increasing(idx: torch.Tensor) -> bool:
    return bool((idx[:, 1:] > idx[:, :-1]).all())


def _assert_same_pairs(first: list[MaskPair], second: list[MaskPair]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a.context_idx, b.context_idx)
        assert torch.equal(a.target_idx, b.target_idx)
        assert torch.equal(a.masked_fraction_before, b.masked_fraction_before)


def test_masked_fraction_before_equalisation_matches_vjepa():
    masker = MultiBlockMasker(GRID, DEFAULT_MASKS, seed=0)
    fractions = [[], []]
    for step in range(5):
        for config_index, pair in enumerate(masker(64, step)):
            fractions[config_index].append(pair.masked_fraction_before)
    short_range = torch.cat(fractions[0]).mean().item()
    long_range = torch.cat(fractions[1]).mean().item()
    assert short_range == pytest.approx(0.63, abs=0.04)
    assert long_range == pytest.approx(0.82, abs=0.04)


def test_equalised_indices_are_valid_and_come_from_the_union():
    masker = MultiBlockMasker(GRID, DEFAULT_MASKS, seed=3)
    batch_size = 64
    for step in range(3):
        pairs = masker(batch_size, step)
        unions = masker.masked_union(batch_size, step)
        assert len(pairs) == len(unions) == len(DEFAULT_MASKS)
        for pair, union in zip(pairs, unions):
            assert pair.num_tokens == NUM_TOKENS
            assert pair.context_idx.dtype == pair.target_idx.dtype == torch.int64
            # Equal lengths within the batch, cut to the shortest sample.
            assert pair.context_idx.shape == (batch_size, int((~union).sum(1).min()))
            assert pair.target_idx.shape == (batch_size, int(union.sum(1).min()))
            assert pair.context_ratio == pair.context_idx.shape[1] / NUM_TOKENS
            assert pair.target_ratio == pair.target_idx.shape[1] / NUM_TOKENS
            assert torch.allclose(pair.masked_fraction_before, union.float().mean(1))
            for idx in (pair.context_idx, pair.target_idx):
                assert int(idx.min()) >= 0 and int(idx.max()) < NUM_TOKENS
                assert _is_strictly_increasing(idx)  # sorted and unique
            # Target inside the sample's union of blocks, context outside it: hence disjoint.
            assert union.gather(1, pair.target_idx).all()
            assert not union.gather(1, pair.context_idx).any()
            both = torch.cat([pair.context_idx, pair.target_idx], dim=1)
            assert _is_strictly_increasing(both.sort(dim=1).values)


def test_union_of_blocks_matches_painting_boxes_one_by_one():
    generator = torch.Generator().manual_seed(0)
    for block_size in [(8, 5, 5), (3, 12, 9), (1, 1, 1), (8, 14, 14)]:
        corners = _draw_block_corners(GRID, block_size, 16, 4, generator)
        union = _union_of_blocks(GRID, block_size, corners)
        reference = torch.zeros(16, *GRID, dtype=torch.bool)
        t, h, w = block_size
        for sample in range(16):
            for start, top, left in corners[sample].tolist():
                reference[sample, start : start + t, top : top + h, left : left + w] = True
        assert torch.equal(union, reference)


def test_single_block_has_the_vjepa_size():
    # spatial_num_keep = int(196 * 0.15) = 29, aspect 1 -> round(sqrt(29)) = 5 -> 5x5 blocks;
    # temporal 0.5 of 8 -> 4 steps.
    config = MaskConfig(1, (0.15, 0.15), temporal_scale=(0.5, 0.5), aspect_ratio=(1.0, 1.0))
    union = MultiBlockMasker(GRID, (config,)).masked_union(32, step=0)[0]
    assert (union.sum(1) == 4 * 5 * 5).all()


def test_reproducible_from_seed_and_step_only():
    masker = MultiBlockMasker(GRID, seed=7)
    later_first = masker(16, 5)
    masker(16, 2)  # calls in between must not change anything
    _assert_same_pairs(masker(16, 5), later_first)
    _assert_same_pairs(MultiBlockMasker(GRID, seed=7)(16, 5), later_first)
    other_step = masker(16, 6)
    other_seed = MultiBlockMasker(GRID, seed=8)(16, 5)
    for other in (other_step, other_seed):
        for a, b in zip(other, later_first):
            assert not torch.equal(a.target_idx, b.target_idx)
            assert not torch.equal(a.masked_fraction_before, b.masked_fraction_before)


class _MaskSteps(Dataset):
    """Map-style dataset: item `step` is the masks of batch `step`."""

    def __init__(self, masker: MultiBlockMasker, batch_size: int, num_steps: int):
        self.masker, self.batch_size, self.num_steps = masker, batch_size, num_steps

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> list[MaskPair]:
        return self.masker(self.batch_size, step)


def test_same_masks_with_any_number_of_dataloader_workers():
    dataset = _MaskSteps(MultiBlockMasker(GRID, seed=1), batch_size=8, num_steps=6)
    in_process = list(DataLoader(dataset, batch_size=None, num_workers=0))
    two_workers = list(DataLoader(dataset, batch_size=None, num_workers=2))
    assert len(in_process) == len(two_workers) == 6
    for first, second in zip(in_process, two_workers):
        _assert_same_pairs(first, second)


def _mean_share_of_last_time_step(indices_per_batch: list[torch.Tensor]) -> float:
    """Mean over samples of the share of a sample's indices that lie in the last time step."""
    last_step_start = NUM_TOKENS - 14 * 14
    shares = [(idx >= last_step_start).float().mean(1) for idx in indices_per_batch]
    return torch.cat(shares).mean().item()


@pytest.mark.parametrize("temporal_scale", [(1.0, 1.0), (0.25, 0.75)])
def test_equalisation_keeps_the_last_time_step(temporal_scale):
    configs = tuple(MaskConfig(c.num_blocks, c.spatial_scale, temporal_scale, c.aspect_ratio) for c in DEFAULT_MASKS)
    masker = MultiBlockMasker(GRID, configs, seed=2)
    target_before, target_after, context_before, context_after, vjepa_cut = [], [], [], [], []
    for step in range(30):
        union = masker.masked_union(64, step)[0]
        pair = masker(64, step)[0]
        target_before += [row.nonzero().squeeze(1)[None] for row in union]
        context_before += [(~row).nonzero().squeeze(1)[None] for row in union]
        target_after.append(pair.target_idx)
        context_after.append(pair.context_idx)
        # V-JEPA's equalisation: the first k sorted indices of each sample.
        shortest = int(union.sum(1).min())
        vjepa_cut += [row.nonzero().squeeze(1)[None, :shortest] for row in union]
    share_before = _mean_share_of_last_time_step(target_before)
    assert share_before > 0.05
    assert _mean_share_of_last_time_step(target_after) == pytest.approx(share_before, abs=0.005)
    assert _mean_share_of_last_time_step(context_after) == pytest.approx(
        _mean_share_of_last_time_step(context_before), abs=0.005
    )
    # The measure can tell: V-JEPA's cut loses most of the last time step.
    assert _mean_share_of_last_time_step(vjepa_cut) < share_before / 2


@pytest.mark.parametrize("min_context", [1, 4])
def test_tiny_grid_keeps_min_context(min_context):
    masker = MultiBlockMasker((2, 4, 4), DEFAULT_MASKS, seed=0, min_context=min_context)
    for step in range(50):
        for pair in masker(16, step):
            assert pair.context_idx.shape[1] >= min_context
            assert pair.target_idx.shape[1] >= 1
            both = torch.cat([pair.context_idx, pair.target_idx], dim=1)
            assert _is_strictly_increasing(both.sort(dim=1).values)
            assert int(both.max()) < 32


def test_block_covering_the_grid_is_rejected():
    masker = MultiBlockMasker((2, 4, 4), (MaskConfig(1, (1.0, 1.0), aspect_ratio=(1.0, 1.0)),))
    with pytest.raises(ValueError, match="min_context"):
        masker(4, step=0)
    with pytest.raises(ValueError):
        MaskConfig(0, (0.15, 0.15))


def test_apply_masks_matches_python_loop():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, NUM_TOKENS, 6, generator=generator)
    pair = MultiBlockMasker(GRID)(4, step=0)[0]
    for idx in (pair.context_idx, pair.target_idx):
        reference = torch.stack([torch.stack([x[b, i] for i in idx[b].tolist()]) for b in range(4)])
        assert torch.equal(apply_masks(x, idx), reference)
    # A list gives each selection in turn, concatenated along the batch.
    other = pair.context_idx.flip(0)  # the same K, other rows
    together = apply_masks(x, [pair.context_idx, other])
    assert together.shape == (8, pair.context_idx.shape[1], 6)
    assert torch.equal(together[4:], apply_masks(x, other))


def test_mask_pair_moves_between_devices():
    pair = MultiBlockMasker(GRID)(2, step=0)[1]
    moved = pair.to("cpu")
    assert isinstance(moved, MaskPair) and moved.num_tokens == pair.num_tokens
    assert torch.equal(moved.context_idx, pair.context_idx)
    if torch.cuda.is_available():
        pinned = pair.pin_memory()
        assert pinned.context_idx.is_pinned() and pinned.target_idx.is_pinned()


def test_mask_pairs_travel_inline_from_loader_workers():
    """A worker's masks are pickled as bytes (no shared-memory file per index tensor, whose
    descriptor the training process would fetch from the worker over a socket)."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers the shared-memory reducers for tensors)

    pair = MultiBlockMasker((4, 4, 4), list(DEFAULT_MASKS), seed=0)(3, 0)[0]
    restored = pickle.loads(ForkingPickler.dumps(pair))
    for name in ("context_idx", "target_idx", "masked_fraction_before"):
        assert torch.equal(getattr(restored, name), getattr(pair, name)) and not getattr(restored, name).is_shared()
    assert restored.num_tokens == pair.num_tokens
