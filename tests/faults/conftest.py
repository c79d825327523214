"""Helpers of the fault suite (the tiny `teacher` comes from tests/conftest.py): run `salt` in
a subprocess with a bounded time, as users (and schedulers) run it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BOUND_S = 300  # every command in the suite finishes (or is killed) within this


def salt(*args: str, fault: str | None = None, timeout: float = BOUND_S, cwd: Path = REPO,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`salt ARGS` (or with a fault injected by tests/faults/inject.py); never hangs the suite."""
    head = [sys.executable, "-m", "tests.faults.inject", fault] if fault else [sys.executable, "-m", "salt.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*head, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def cache_args(teacher: Path, data: Path, out: Path, *extra: str, views: int = 2, videos: int = 8) -> list[str]:
    return ["cache-latents", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--views", str(views),
            "--max-videos", str(videos), "--shard-videos", "2", "--workers", "0", "--batch-size", "2", "--precision", "fp32",
            "--no-progress", *extra]


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode in (-9, 137)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
