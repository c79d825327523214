"""A training order over a cache that does not depend on how many processes read it.

`EpochOrder(cache, seed)` numbers the samples of every epoch globally: position `p` is sample
`order(p)` of epoch `p // len(cache)`. Within an epoch the shards are shuffled by (seed, epoch)
and each shard's samples by (seed, epoch, shard), exactly the order `cache.stream(seed, epoch)`
gives one reader; consecutive positions stay within a shard, so readers that take consecutive
runs of positions read few shards at a time. A trainer hands global micro-batch `g` positions
`g·B … g·B + B - 1`: whatever the number of ranks and workers, the same positions make the
same global batch, which is what lets a run resume on another number of GPUs.

`SampleReader` reads samples by index with a few shards kept open (a seek, or one range
request on an object store, per sample) and reports a sample it cannot read to `on_skip`
instead of raising, when asked to.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from salt.latents.errors import CacheError
from salt.latents.samples import CacheSample, Problem, sample_key
from salt.latents.sources import OnSkip, WdsShard, ZarrShard, checked_reads, error_policy


class EpochOrder:
    """Global position → sample index (for `cache.get` / `SampleReader`).

    Held per epoch: the shard order and where each shard starts in it (12 bytes a shard, ~1 MB
    at 83 000 shards), and the order within the shard being read; nothing per sample, so any
    position (the start of an epoch or 99 % into it) costs the same to find."""

    def __init__(self, cache, seed: int):
        self.cache, self.seed = cache, seed
        self.length = len(cache)
        if self.length == 0:
            raise CacheError(f"{cache.path} holds no samples; nothing to train on")
        self._held = cache.manifest.shards.held
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None  # epoch, shard order, their ends
        self._shard: tuple[int, int, np.ndarray] | None = None  # epoch, shard, its samples in order

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            shards = np.random.default_rng([self.seed, epoch]).permutation(len(self._held))
            self._epoch = (epoch, shards.astype(np.int32), np.cumsum(self._held[shards]))
        return self._epoch[1], self._epoch[2]

    def shard_order(self, epoch: int, shard: int) -> np.ndarray:
        """Shard `shard`'s sample indices in the order `epoch` reads them."""
        if self._shard is None or self._shard[:2] != (epoch, shard):
            indices = self.cache.shard_sample_indices(shard)
            permutation = np.random.default_rng([self.seed, epoch, shard]).permutation(len(indices))
            self._shard = (epoch, shard, indices[permutation])
        return self._shard[2]

    def epoch(self, epoch: int) -> np.ndarray:
        """The sample indices of `epoch` in order, each sample once (built whole: for checks)."""
        shards, _ = self._layout(epoch)
        parts = [self.shard_order(epoch, int(s)) for s in shards]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.length)
        shards, ends = self._layout(epoch)
        slot = int(np.searchsorted(ends, offset, side="right"))
        start = int(ends[slot - 1]) if slot else 0
        return int(self.shard_order(epoch, int(shards[slot]))[offset - start])


class SampleReader:
    """Samples by index from the cache's streaming source, at most `keep_open` shards open.

    `on_error="skip"`: a sample that cannot be read returns None after `on_skip(Problem)`."""

    def __init__(
        self,
        cache,
        *,
        frames: str = "decoded",
        latents: str = "float32",
        on_error: str = "raise",
        on_skip: OnSkip | None = None,
        keep_open: int = 4,
    ):
        self.cache, self.reads = cache, checked_reads(frames, latents)
        self.on_skip = error_policy(on_error, on_skip)  # None: raise
        self.keep_open = keep_open
        self._open: OrderedDict[int, WdsShard | ZarrShard] = OrderedDict()

    def __call__(self, index: int) -> CacheSample | None:
        shard_index, video, view = self.cache.locate(index)
        name = self.cache.manifest.shards.name(shard_index)
        try:
            return self._shard(shard_index).read(video, view, self.reads)
        except (CacheError, OSError) as error:
            if self.on_skip is None:
                if isinstance(error, CacheError):
                    raise
                raise CacheError(f"shard {name}: sample {sample_key(video, view)}: {error}") from error
            self.on_skip(Problem(name, sample_key(video, view), str(error)))
            return None

    def _shard(self, shard_index: int) -> WdsShard | ZarrShard:
        if shard_index in self._open:
            self._open.move_to_end(shard_index)
            return self._open[shard_index]
        shard = self.cache.stream_source.open(self.cache.manifest.shards.name(shard_index))
        self._open[shard_index] = shard
        while len(self._open) > self.keep_open:
            self._open.popitem(last=False)[1].close()
        return shard

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __enter__(self) -> "SampleReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
