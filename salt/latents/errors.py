"""The one exception type of the cache format."""

from __future__ import annotations


class CacheError(ValueError):
    """A cache is missing, incomplete, corrupt, or does not fit the request.

    Messages name the file, shard and sample concerned, so that a failed run says what to
    repair (usually: run `salt cache-latents` again, which rewrites incomplete shards).
    """
