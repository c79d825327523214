"""Process plumbing: the holder lock of a run or cache folder, and stop signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from salt.runtime.locks import STALE_AFTER_S, HolderLock, LockHeld
from salt.runtime.preemption import StopSignals, parse_signals


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
