"""DataLoader workers that die with the process that owns them.

Workers start from a 'forkserver' (spawn-safe with threads, cheap). PyTorch's worker watchdog
checks the worker's parent, which is then the fork server, not the loader's process; and the
fork server outlives a SIGKILLed owner, because every worker holds its keep-alive pipe. Killed
runs (preemption, a full node's OOM killer) therefore left workers and fork servers behind
forever, holding memory and the owner's stdout. Each worker here waits on a pidfd of the
owner and exits the moment the owner does; a scheduler's stop signals (which launchers send to
whole process trees) are left to the owner, which saves and then ends them.
"""

from __future__ import annotations

import functools
import os
import select
import threading
import time

from torch.utils.data import DataLoader

from salt.runtime.preemption import ignore_stop_signals

FALLBACK_POLL_S = 1.0  # only without pidfd (Linux < 5.3, other systems)


def _exit_with(owner: int) -> None:
    try:
        handle = os.pidfd_open(owner)
    except (AttributeError, OSError):
        handle = None
    if handle is not None:
        select.select([handle], [], [])  # readable once the owner has exited
    else:
        while os.getppid() != 1 and _alive(owner):
            time.sleep(FALLBACK_POLL_S)
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_owner(owner: int, user_init, worker_id: int) -> None:
    ignore_stop_signals()
    threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()
    if user_init is not None:
        user_init(worker_id)


def owned_loader(dataset, workers: int, **kwargs) -> DataLoader:
    """`DataLoader(dataset, num_workers=workers, ...)`, forkserver workers that exit with this process."""
    if workers:
        kwargs["multiprocessing_context"] = "forkserver"
        kwargs["worker_init_fn"] = functools.partial(_watch_owner, os.getpid(), kwargs.get("worker_init_fn"))
    return DataLoader(dataset, num_workers=workers, **kwargs)
