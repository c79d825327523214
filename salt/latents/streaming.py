"""Streaming a cache: shards split over readers, a seeded order, the arithmetic resume.

A split's samples come in an order fixed by (seed, epoch): the shards shuffled, then dealt
round-robin over rank × worker, then each shard's samples shuffled (a buffer of one shard).
`start` skips that many samples of the split without reading them; a sample that cannot be
read still counts as a position, so resuming stays exact. On an object store whole shards are
fetched ahead of the one being read (bounded memory).
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterator, Protocol

import numpy as np

from salt.latents import storage
from salt.latents.errors import CacheError
from salt.latents.manifest import Manifest
from salt.latents.samples import CacheSample, Problem, sample_key
from salt.latents.sources import OnSkip, Reads, _Source


class LatentCache(Protocol):
    """What streaming reads of a cache (salt.latents.reader.LatentCache has it)."""

    manifest: Manifest
    stream_source: _Source

    def shard_samples(self, shard_index: int) -> list[tuple[int, int]]: ...


READ_AHEAD_SHARDS = 2  # object stores: whole shards fetched ahead of the one being read, per reader


def split_shards(num_shards: int, seed: int, epoch: int, rank: int, world_size: int, worker: int, num_workers: int):
    """The shard indices of one reader's split, in reading order."""
    splits = world_size * num_workers
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise CacheError(f"rank {rank} / worker {worker} out of range for {world_size} ranks x {num_workers} workers")
    if num_shards < splits:
        # A rank or worker without a shard would end at once and hang a collective later.
        raise CacheError(
            f"{num_shards} shards cannot feed {world_size} ranks × {num_workers} workers; "
            "make shards smaller (--shard-videos) or use fewer workers"
        )
    order = np.random.default_rng([seed, epoch]).permutation(num_shards)
    return [int(i) for i in order[rank * num_workers + worker :: splits]]


def resume_plan(cache: LatentCache, shards: list[int], seed: int, epoch: int, start: int):
    """(shard index, order of its samples) still to read after skipping `start` samples."""
    plan, skip = [], max(0, int(start))
    for shard_index in shards:
        count = int(cache.manifest.shards.held[shard_index])
        if skip >= count:
            skip -= count
            continue
        # Seeded per shard, so a resume computes this order without replaying earlier shards.
        plan.append((shard_index, np.random.default_rng([seed, epoch, shard_index]).permutation(count)[skip:]))
        skip = 0
    return plan


def stream_split(
    cache: LatentCache, shards: list[int], seed: int, epoch: int, start: int, on_skip: OnSkip | None, reads: Reads
) -> Iterator[CacheSample]:
    """The samples of `shards` from the cache's streaming source; `on_skip` None raises."""
    plan = resume_plan(cache, shards, seed, epoch, start)
    source = cache.stream_source
    names = [cache.manifest.shards.name(i) for i, _ in plan]
    fetched = ShardPrefetcher([source.shard_url(n) for n in names], READ_AHEAD_SHARDS) if source.read_ahead else None
    try:
        for (shard_index, order), name in zip(plan, names):
            yield from _stream_shard(source, name, cache.shard_samples(shard_index), order, fetched, on_skip, reads)
    finally:
        if fetched is not None:
            fetched.close()


def _stream_shard(
    source: _Source, name: str, ids: list[tuple[int, int]], order, fetched, on_skip: OnSkip | None, reads: Reads
) -> Iterator[CacheSample]:
    try:
        shard = source.open(name, data=fetched.next() if fetched is not None else None)
    except (CacheError, OSError) as error:
        if on_skip is None:
            if isinstance(error, CacheError):
                raise
            raise CacheError(f"shard {name}: {error}") from error
        for i in order:
            on_skip(Problem(name, sample_key(*ids[i]), str(error)))
        return
    with shard:
        for i in order:
            video, view = ids[i]
            try:
                sample = shard.read(video, view, reads)
            except CacheError as error:
                if on_skip is None:
                    raise
                on_skip(Problem(name, sample_key(video, view), str(error)))
                continue
            yield sample


class ShardPrefetcher:
    """Whole shard files read in order, at most `depth` ahead of the consumer (bounded memory)."""

    def __init__(self, urls: list, depth: int):
        self._urls = iter(urls)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=depth, thread_name_prefix="shard-read-ahead")
        self._pending: list[concurrent.futures.Future] = []
        for _ in range(depth + 1):
            self._submit()

    def _submit(self) -> None:
        url = next(self._urls, None)
        if url is not None:
            self._pending.append(self._pool.submit(storage.read_bytes, url))

    def next(self) -> bytes:
        future = self._pending.pop(0)
        self._submit()
        return future.result()

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
