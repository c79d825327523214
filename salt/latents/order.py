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
from typing import Callable

import numpy as np

from salt.latents import storage
from salt.latents.errors import CacheError
from salt.latents.manifest import WDS_DIR
from salt.latents.samples import CacheSample, Problem, sample_key
from salt.latents.wds import WdsShardReader


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
    """Samples by index from the cache's streaming format, at most `keep_open` shards open.

    `on_error="skip"`: a sample that cannot be read returns None after `on_skip(Problem)`."""

    def __init__(
        self,
        cache,
        *,
        frames: str = "decoded",
        latents: str = "float32",
        on_error: str = "raise",
        on_skip: Callable[[Problem], None] | None = None,
        keep_open: int = 4,
    ):
        if on_error not in ("raise", "skip"):
            raise CacheError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.cache, self.reads, self.on_error = cache, (frames, latents), on_error
        self.on_skip = on_skip or (lambda problem: None)
        self.keep_open = keep_open
        self._open: OrderedDict[int, WdsShardReader] = OrderedDict()

    def __call__(self, index: int) -> CacheSample | None:
        shard_index, video, view = self.cache.locate(index)
        record = self.cache.manifest.shards[shard_index]
        try:
            if self.cache.stream_format == "wds":
                return self.cache.read_wds_sample(self._shard(shard_index), video, view, self.reads)
            return self.cache.read_zarr_sample(record, video, view, self.reads)
        except (CacheError, OSError) as error:
            if self.on_error == "raise":
                if isinstance(error, CacheError):
                    raise
                raise CacheError(f"shard {record.name}: sample {sample_key(video, view)}: {error}") from error
            self.on_skip(Problem(record.name, sample_key(video, view), str(error)))
            return None

    def _shard(self, shard_index: int) -> WdsShardReader:
        if shard_index in self._open:
            self._open.move_to_end(shard_index)
            return self._open[shard_index]
        reader = WdsShardReader(storage.join(self.cache.path, WDS_DIR), self.cache.manifest.shards[shard_index].name)
        self._open[shard_index] = reader
        while len(self._open) > self.keep_open:
            self._open.popitem(last=False)[1].close()
        return reader

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __enter__(self) -> "SampleReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
