"""Process plumbing: the holder lock of a run or cache folder, and stop signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from salt.runtime.locks import STALE_AFTER_S, HolderLock, LockHeld
from salt.runtime.preemption import StopSignals, parse_signals
from tests.helpers import REPO


def write_lock(path, **fields) -> None:
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), **fields}))


def test_a_live_holder_is_named_and_its_lock_kept(tmp_path):
    first = HolderLock(tmp_path / "run.lock", "salt train-student")
    first.acquire()
    with pytest.raises(LockHeld, match=f"another salt train-student \\(pid {os.getpid()} on {socket.gethostname()}\\)"):
        HolderLock(tmp_path / "run.lock", "salt train-student").acquire()
    first.release()
    assert not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("content", [b"", b"\x00\x00", b"{not json", b"[1, 2]"])
def test_an_empty_or_unreadable_lock_is_stale(tmp_path, content):
    """What a full disk (or an older version) leaves is taken over, not blamed on "an unknown process"."""
    (tmp_path / "run.lock").write_bytes(content)
    lock = HolderLock(tmp_path / "run.lock")
    lock.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()


def test_another_hosts_lock_is_stale_once_its_heartbeat_stops(tmp_path):
    path = tmp_path / "run.lock"
    path.write_text(json.dumps({"host": "node-17", "pid": 4242}))
    with pytest.raises(LockHeld, match="pid 4242 on node-17"):  # a fresh heartbeat: alive
        HolderLock(path).acquire()
    old = time.time() - STALE_AFTER_S - 60
    os.utime(path, (old, old))  # a requeued job on another node finds the killed run's lock
    lock = HolderLock(path)
    lock.acquire()
    assert json.loads(path.read_text())["host"] == socket.gethostname()
    lock.release()


def test_a_dead_or_reused_pid_on_this_host_is_stale(tmp_path):
    path = tmp_path / "run.lock"
    write_lock(path, pid=2**22 + 12345)  # no such process
    HolderLock(path).acquire()
    path.unlink()
    write_lock(path, pid_start=-1)  # this pid, but another process's start time: the pid was reused
    HolderLock(path).acquire()


def test_stop_signals_set_a_flag_instead_of_ending_the_process():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignals(["SIGUSR1", "TERM"]) as stop:
        assert stop.received is None and stop.code == 0
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        assert stop.received == "SIGUSR1" and stop.code == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before


@pytest.mark.parametrize("name", ["SIGKILL", "SIGNOPE", "9"])
def test_uncatchable_or_unknown_signals_are_refused(name):
    with pytest.raises(ValueError, match="not a signal a run can catch"):
        parse_signals([name])


class Numbers(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(10**9))


def signal_masks(pid: int, thread: int | None = None) -> tuple[int, int]:
    """(ignored, blocked) signal bits of a process (its main thread) or one of its threads."""
    path = f"/proc/{pid}/task/{thread}/status" if thread else f"/proc/{pid}/status"
    fields = dict(line.split(":\t", 1) for line in open(path).read().splitlines() if ":\t" in line)
    return int(fields["SigIgn"], 16), int(fields["SigBlk"], 16)


def pending(pid: int) -> int:
    """The signals pending for a whole process (not yet taken by any of its threads)."""
    fields = dict(line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)
    return int(fields["ShdPnd"], 16)


def test_loader_workers_leave_stop_signals_to_their_owner():
    """Launchers SIGTERM whole process trees: the fork server ignores it, a worker takes it only
    from its owner (which ends it that way at exit), so the owner can save before they go."""
    import subprocess

    import psutil

    from salt.runtime.loader_workers import owned_loader

    term = 1 << (signal.SIGTERM - 1)
    batches = iter(owned_loader(Numbers(), 1, batch_size=None))
    assert next(batches) == 0
    server = next(p for p in psutil.Process().children() if "forkserver import main" in " ".join(p.cmdline()))
    (worker,) = server.children()
    assert signal_masks(server.pid)[0] & term  # ignored by the fork server
    assert not signal_masks(worker.pid)[0] & term  # not ignored by the worker: the owner's ends it
    # Blocked in every thread but the one waiting for them (the kernel shows its mask without them).
    tasks = Path(f"/proc/{worker.pid}/task")
    waiting = [t.name for t in tasks.iterdir() if "sigtimedwait" in (t / "wchan").read_text()]
    unblocked = [t.name for t in tasks.iterdir() if not signal_masks(worker.pid, int(t.name))[1] & term]
    assert len(waiting) == 1 and unblocked == waiting, (waiting, unblocked)
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # from another process: left to the owner
    deadline = time.monotonic() + 60  # until the worker has taken it (standard signals do not queue)
    while pending(worker.pid) & term and time.monotonic() < deadline:
        time.sleep(0.01)
    assert next(batches) == 1 and worker.is_running()
    os.kill(worker.pid, signal.SIGTERM)  # from the owner: the worker ends
    worker.wait(timeout=60)
    assert not worker.is_running()


BROKEN_TRANSFER = """
import socket
from multiprocessing import resource_sharer
from multiprocessing.reduction import ForkingPickler

import torch

from salt.runtime.loader_workers import owned_loader


class Transfers(torch.utils.data.IterableDataset):
    def __iter__(self):
        ForkingPickler.dumps(torch.zeros(4))  # a tensor's fd registered: the worker's sharer listens
        yield resource_sharer._resource_sharer._address
        while True:
            yield torch.ones(4)  # handed over by file descriptor, through that listener


if __name__ == "__main__":
    batches = iter(owned_loader(Transfers(), 1, batch_size=None))
    address = next(batches)
    with socket.socket(socket.AF_UNIX) as peer:
        peer.connect(address)  # and gone before the handshake: a transfer broken by its reader
    assert next(batches).sum() == 4  # the same thread serves this after it has handled the break
    print("transferred")
"""


def test_a_broken_batch_transfer_prints_nothing_in_the_worker(tmp_path):
    """A rank killed while reading a batch broke the transfer in its worker's resource-sharer
    thread, which printed half a traceback; the rank's own read reports such a break."""
    script = tmp_path / "broken_transfer.py"
    script.write_text(BROKEN_TRANSFER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and done.stdout == "transferred\n", done.stderr
    assert "Traceback" not in done.stderr, done.stderr
