"""Helpers shared by the test modules (fixtures live in the conftest files): run `salt` in a
subprocess with a bounded time, as users (and schedulers) run it; a free port; a real
S3-protocol server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from salt.training.loop import free_port  # the one free-port finder; tests import it from here

REPO = Path(__file__).resolve().parents[1]
BOUND_S = 300  # every command in the suite finishes (or is killed) within this


def salt(
    *args: str, fault: str | None = None, timeout: float = BOUND_S, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`salt ARGS` (or with a fault injected by tests/faults/inject.py); never hangs the suite."""
    head = [sys.executable, "-m", "tests.faults.inject", fault] if fault else [sys.executable, "-m", "salt.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([*head, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def cache_args(teacher: Path, data: Path, out: Path, *extra: str, views: int = 2, videos: int = 8) -> list[str]:
    return [
        "cache-latents",
        "--teacher",
        str(teacher),
        "--data",
        str(data),
        "--out",
        str(out),
        "--views",
        str(views),
        "--max-videos",
        str(videos),
        "--shard-videos",
        "2",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--precision",
        "fp32",
        "--no-progress",
        *extra,
    ]


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode in (-9, 137)


@contextlib.contextmanager
def local_s3_server(bucket: str):
    """A real S3-protocol server (moto's standalone server, `pip install 'moto[server]'`) on
    127.0.0.1 with `bucket` made, and fsspec/s3fs pointed at it, here and in child processes
    (FSSPEC_S3_ENDPOINT_URL and dummy credentials); stopped by pid on exit. Yields the s3fs
    file system."""
    import fsspec

    server_bin = Path(sys.executable).with_name("moto_server")
    if not server_bin.exists():
        raise RuntimeError(f"{server_bin} not found: pip install 'moto[server]' s3fs (the dev extras have them)")
    port = free_port()
    server = subprocess.Popen(
        [str(server_bin), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # Child processes read FSSPEC_S3_ENDPOINT_URL when they import fsspec; this one has imported it already.
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = env["FSSPEC_S3_ENDPOINT_URL"]
    try:
        deadline = time.monotonic() + 60  # a bound on start-up
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on 127.0.0.1:{port}") from None
                time.sleep(0.1)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(bucket)
        yield fs
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        fsspec.config.conf.get("s3", {}).pop("endpoint_url", None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
