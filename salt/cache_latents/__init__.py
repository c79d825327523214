"""`salt cache-latents`: process 1. The frozen teacher's latents over augmented views, stored once.

    job.py         CacheJob: every setting, each default once (the CLI options are made from it)
    run.py         run_cache: teacher, settings check, lock, plan, engine, merge
    shards.py      the shard plan, ShardAssembler (shared by the engines) and the shard commit
    merge.py       the manifest once every shard is done; the skipped-video limit
    compact.py     `salt compact-cache`: a smaller cache from a cache, without the teacher
    local.py       the local engine: DataLoader decode workers, the teacher in this process
    ray_engine.py  the Ray engine: Ray Data decode workers and teacher actors over a cluster
    teacher.py     the teacher forward both engines run
    locks.py       OutputLock (one writer per output and rank)

Names are imported lazily, so `salt --help` and the CLI's option table cost no torch import.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CacheJob": "job",
    "OutputLock": "locks",
    "CachePlan": "shards",
    "ShardAssembler": "shards",
    "plan_missing": "shards",
    "rank_of": "shards",
    "run_cache": "run",
    "VideoViews": "local",
    "CacheWriteError": None,
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'salt.cache_latents' has no attribute {name!r}")
    if _EXPORTS[name] is None:
        from salt.latents.errors import CacheWriteError

        return CacheWriteError
    return getattr(importlib.import_module(f"salt.cache_latents.{_EXPORTS[name]}"), name)
