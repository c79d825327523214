"""Locks between writers of one cache output.

`OutputLock`: one live writer per (output, rank), across hosts that share the folder (a lock
file naming host and pid; a dead owner's lock on this host is taken over). `file_lock`: a short
critical section between processes of this machine (ranks creating or growing the Zarr store).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from salt.latents import storage
from salt.latents.errors import CacheWriteError


class OutputLock:
    """One live writer per (output, rank): a lock file with host and pid; a dead owner's is taken over.

    On an object store (no exclusive create) the lock object is read, then written: it stops a
    second writer started after the first, not one started at the same instant; ranks have
    lock objects of their own and never write the same shard objects."""

    def __init__(self, path: Path | str):
        self.path = path
        self.held = False

    def acquire(self) -> None:
        if storage.is_url(self.path):
            self._acquire_object()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None or self._alive(owner):
                    who = f"pid {owner['pid']} on {owner['host']}" if owner else "an unknown process"
                    raise CacheWriteError(
                        f"{self.path}: another salt cache-latents ({who}) is writing this output; wait for it, "
                        f"or delete the lock file if that process is gone"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its owner died on this host
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise CacheWriteError(f"{self.path}: could not take the lock")

    def _acquire_object(self) -> None:
        if storage.exists(self.path):
            owner = self._owner()
            if owner is None or self._alive(owner):
                who = f"pid {owner['pid']} on {owner['host']}" if owner else "an unknown process"
                raise CacheWriteError(
                    f"{self.path}: another salt cache-latents ({who}) is writing this output; wait for "
                    "it, or delete the lock object if that process is gone"
                )
        storage.write_bytes(
            self.path, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}).encode()
        )
        self.held = True

    def release(self) -> None:
        if self.held:
            storage.remove(self.path)
            self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(storage.read_bytes(self.path))
        except (OSError, ValueError):
            return None  # a lock being written right now, or garbage: treated as live for safety

    @staticmethod
    def _alive(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return True  # cannot check another host's processes: assume alive
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


@contextlib.contextmanager
def file_lock(path: Path):
    """An advisory lock between processes on this machine (held while the block runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
