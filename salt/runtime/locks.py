"""One live holder of a folder (a training run's `run.out_dir`, a cache writer's output).

`HolderLock(path)` creates `path` holding {host, pid, started, token} in one step (written to a
temporary file, then hard-linked into place), so a live holder's lock is never seen empty.
While held, a thread touches the file every `HEARTBEAT_S`. Another process finding the file:
- same host: the lock is stale when its pid is gone (a killed run's lock is taken over at once);
- another host (a requeued job lands on another node of a shared file system): stale when
  the heartbeat is older than `STALE_AFTER_S`;
- empty or unreadable (what a full disk or an older version leaves): stale.
Otherwise the acquire fails with one line naming the holder.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from salt.errors import UserError

HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0  # six missed heartbeats


class LockHeld(UserError):
    """Another live process holds the lock (the message names it and says what to do)."""


class HolderLock:
    def __init__(self, path: str | Path, holder: str = "process", stale_after_s: float = STALE_AFTER_S):
        self.path = Path(path)
        self.holder = holder  # what a holder is, for messages: "salt train-student", ...
        self.stale_after_s = stale_after_s
        self.token = secrets.token_hex(8)  # tells this holder's lock from another's
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _start_ticks(os.getpid()),  # with the pid: a reused pid is not the holder
            "started": time.time(),
            "token": self.token,
        }
        for _ in range(3):
            if self._create(me):
                self._beat = threading.Thread(target=self._heartbeat, name="lock-heartbeat", daemon=True)
                self._beat.start()
                return
            owner = self.owner()
            if owner is not None and not self._stale(owner):
                raise LockHeld(
                    f"{self.path}: another {self.holder} (pid {owner.get('pid')} on {owner.get('host')}) is using "
                    f"{self.path.parent}; wait for it to end, or stop it (a killed run's lock is taken over)"
                )
            self.path.unlink(missing_ok=True)  # stale: its holder is gone
        raise LockHeld(f"{self.path}: could not take the lock (other processes keep taking it); try again")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
            owner = self.owner()
            if owner is not None and owner.get("token") == self.token:
                self.path.unlink(missing_ok=True)

    def owner(self) -> dict | None:
        """The holder's record; None when the file is missing, empty or unreadable."""
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _create(self, me: dict) -> bool:
        """Place a complete lock file at `path`; False when one is there already."""
        temporary = self.path.with_name(f".{self.path.name}.{me['host']}.{me['pid']}.tmp")
        try:
            try:
                temporary.write_text(json.dumps(me), encoding="utf-8")
            except OSError as err:  # named by the lock it was for (a full disk: nothing is left behind)
                raise OSError(err.errno, err.strerror, str(self.path)) from err
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                return False
            except OSError as err:  # file systems without hard links: exclusive create, then write
                if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                try:
                    descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(json.dumps(me))
            return True
        finally:
            temporary.unlink(missing_ok=True)

    def _stale(self, owner: dict) -> bool:
        if owner.get("host") == socket.gethostname():
            if not _alive(owner.get("pid")):
                return True
            recorded = owner.get("pid_start")
            return recorded is not None and recorded != _start_ticks(owner.get("pid"))
        try:
            age = time.time() - self.path.stat().st_mtime
        except OSError:
            return True
        return age > self.stale_after_s

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a full or vanished folder: the work itself reports it

    def __enter__(self) -> "HolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _start_ticks(pid) -> int | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22); None off Linux."""
    try:
        text = Path(f"/proc/{int(pid)}/stat").read_text()
        return int(text.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError, TypeError):
        return None
