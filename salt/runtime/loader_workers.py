"""DataLoader workers that die with the process that owns them.

Workers start from a 'forkserver' (spawn-safe with threads, cheap). PyTorch's worker watchdog
checks the worker's parent, which is then the fork server, not the loader's process; and the
fork server outlives a SIGKILLed owner, because every worker holds its keep-alive pipe. Killed
runs (preemption, a full node's OOM killer) therefore left workers and fork servers behind
forever, holding memory and the owner's stdout. Each worker here waits on a pidfd of the
owner and exits the moment the owner does.

A scheduler's stop signals reach workers too (launchers signal whole process trees, a terminal
its whole process group): a worker that died of one would make its owner's DataLoader fail
in the middle of saving. Workers therefore block those signals and take them from a thread
(`sigwaitinfo`, which names the sender): from the owner (its DataLoader, or multiprocessing at
exit, ending the worker) they end the worker; from anyone else they are left to the owner.

A worker hands each batch's tensors to its owner by file descriptor, from multiprocessing's
resource-sharer thread, whose only peer is the owner. A transfer that breaks (the owner killed
while it reads a batch) made that thread print half a traceback as the worker went down with
its owner. Its errors are not the worker's to report: a broken transfer fails the owner's own
read, which reports it, or the owner is dead, which its launcher reports.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from multiprocessing import resource_sharer

from torch.utils.data import DataLoader

from salt.runtime.preemption import STOP_SIGNAL_CANDIDATES

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


def _obey_owner_only(owner: int) -> None:
    """A stop signal ends this worker when its owner sent it; the rest are the owner's business."""
    signals = {signal.Signals[name] for name in STOP_SIGNAL_CANDIDATES}
    while signal.sigwaitinfo(signals).si_pid != owner:  # until the owner itself asks; the thread dies with the process
        pass
    os._exit(0)


def _leave_transfer_errors_to_the_owner(report, kind, error, trace) -> None:
    """`sys.excepthook` of a worker: drops what the resource-sharer thread reports (see above)."""
    if trace is not None and trace.tb_frame.f_code is resource_sharer._ResourceSharer._serve.__code__:
        return
    report(kind, error, trace)


def _watch_owner(owner: int, user_init, worker_id: int) -> None:
    # Blocked in this (the worker's main) thread before any other starts, so every thread
    # inherits it; then back from the fork server's "ignore" to the default, which a blocked
    # signal needs to stay pending for `sigwaitinfo`.
    stop_signals = [signal.Signals[name] for name in STOP_SIGNAL_CANDIDATES]
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    for sig in stop_signals:
        signal.signal(sig, signal.SIG_DFL)
    threading.Thread(target=_obey_owner_only, args=(owner,), name="owner-signals", daemon=True).start()
    threading.Thread(target=_exit_with, args=(owner,), name="owner-watch", daemon=True).start()
    sys.excepthook = functools.partial(_leave_transfer_errors_to_the_owner, sys.excepthook)
    if user_init is not None:
        user_init(worker_id)


def close_workers(batches) -> None:
    """End a DataLoader iterator's workers now, the normal way (each gets its end-of-work
    message). Without it, an error that keeps the iterator alive leaves them to multiprocessing's
    exit handler, which ends them with SIGTERM: a signal a scheduler's own SIGTERM could swallow
    (standard signals do not queue), leaving the exit waiting on a worker."""
    shutdown = getattr(batches, "_shutdown_workers", None)  # PyTorch's multi-process iterator
    if shutdown is not None:
        shutdown()


def owned_loader(dataset, workers: int, **kwargs) -> DataLoader:
    """`DataLoader(dataset, num_workers=workers, ...)`, forkserver workers that exit with this process."""
    if workers:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", "salt.runtime.fork_server"])  # before it starts: salt/runtime
        kwargs["multiprocessing_context"] = context
        kwargs["worker_init_fn"] = functools.partial(_watch_owner, os.getpid(), kwargs.get("worker_init_fn"))
    return DataLoader(dataset, num_workers=workers, **kwargs)
