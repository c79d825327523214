"""Locks between writers of one cache output.

`OutputLock`: one live writer per (output, rank), across hosts that share the folder
(`salt.runtime.locks.HolderLock`; on an object store, a lock object naming host and pid). A short
critical section between processes of this machine is `salt.latents.storage.file_lock`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from salt.latents import storage
from salt.latents.errors import CacheWriteError
from salt.runtime.locks import HolderLock, LockHeld


class OutputLock:
    """One live writer per (output, rank). On a file system a `HolderLock` (host, pid,
    heartbeat; a dead owner's lock, or an empty one, is taken over). On an object store (no
    exclusive create) the lock object is read, then written: it stops a second writer started
    after the first, not one started at the same instant; ranks have lock objects of their own
    and never write the same shard objects."""

    def __init__(self, path: Path | str):
        self.path = path
        self.held = False
        self._local = None if storage.is_url(path) else HolderLock(path, "salt cache-latents")

    def acquire(self) -> None:
        if self._local is not None:
            try:
                self._local.acquire()
            except LockHeld as err:
                raise CacheWriteError(str(err)) from None
        else:
            self._acquire_object()
        self.held = True

    def _acquire_object(self) -> None:
        if storage.exists(self.path):
            owner = self._owner()
            # An empty or unreadable lock object is what a failed write leaves: stale.
            if owner is not None and _alive(owner):
                raise CacheWriteError(
                    f"{self.path}: another salt cache-latents (pid {owner.get('pid')} on {owner.get('host')}) is "
                    "writing this output; wait for it, or delete the lock object if that process is gone"
                )
        storage.write_bytes(
            self.path, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}).encode()
        )

    def release(self) -> None:
        if self.held:
            if self._local is not None:
                self._local.release()
            else:
                storage.remove(self.path)
            self.held = False

    def _owner(self) -> dict | None:
        try:
            owner = json.loads(storage.read_bytes(self.path))
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None


def _alive(owner: dict) -> bool:
    """An object-store lock's owner: checked on this host; assumed alive on another."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True
