"""The exception types of the cache format: reading (CacheError) and writing (CacheWriteError)."""

from __future__ import annotations


class CacheError(ValueError):
    """A cache is missing, incomplete, corrupt, or does not fit the request.

    Messages name the file, shard and sample concerned, so that a failed run says what to
    repair (usually: run `salt cache-latents` again, which rewrites incomplete shards).
    """

    user_error = True  # salt.errors' mark of bad input (the contract imports nothing else from salt)


class CacheWriteError(RuntimeError):
    """The output cannot be written as asked (locked, made with other settings, a full disk, …)."""

    user_error = True
