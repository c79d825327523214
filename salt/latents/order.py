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
    """Global position → sample index (for `cache.get` / `SampleReader`); one epoch held at a time."""

    def __init__(self, cache, seed: int):
        self.cache, self.seed = cache, seed
        self.length = len(cache)
        if self.length == 0:
            raise CacheError(f"{cache.path} holds no samples; nothing to train on")
        self._shard_indices = [cache.shard_sample_indices(i) for i in range(len(cache.manifest.shards))]
        self._epoch: tuple[int, np.ndarray] | None = None

    def epoch(self, epoch: int) -> np.ndarray:
        """The sample indices of `epoch` in order (each sample once)."""
        if self._epoch is None or self._epoch[0] != epoch:
            shards = np.random.default_rng([self.seed, epoch]).permutation(len(self._shard_indices))
            parts = [
                self._shard_indices[s][
                    np.random.default_rng([self.seed, epoch, int(s)]).permutation(len(self._shard_indices[s]))
                ]
                for s in shards
            ]
            self._epoch = (epoch, np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
        return self._epoch[1]

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.length)
        return int(self.epoch(epoch)[offset])


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
        name = self.cache.manifest.shards[shard_index].name
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
        shard = self.cache.stream_source.open(self.cache.manifest.shards[shard_index].name)
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
