"""Helpers shared by the test modules (fixtures live in the conftest files): run `salt` in a
subprocess with a bounded time, as users (and schedulers) run it; a free port; a real
S3-protocol server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

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


# ------------------------------------------------------------------ student runs in subprocesses
def student_config(folder: Path, cache: Path, steps: int, **sections) -> Path:
    """A tiny student (2 samples a micro-batch, a checkpoint every 4 steps) writing into folder/run."""
    config = {
        "cache": {"path": str(cache)},
        "geometry": {"frames": 8, "frame_step": 4, "size": 32},
        "data": {"batch_size": 2, "workers": 1},
        "encoder": {"arch": "vit_tiny", "overrides": {"depth": 2}},
        "predictor": {"width": 64, "depth": 1, "num_heads": 4},
        "optim": {"steps": steps, "warmup_steps": 2, "lr_peak": 1e-3},
        "engine": {"precision": "fp32", "zero_stage": 2, "timeout_s": 30},
        "run": {"out_dir": str(folder / "run"), "log_every": 1, "checkpoint_every": 4, "progress": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "student.yaml").write_text(yaml.safe_dump(config))
    return folder / "student.yaml"


def student_command(config: Path, ranks: int, script: Path | None = None) -> list[str]:
    """`salt train-student` (one rank, two micro-batches a step) or the deepspeed launcher (two
    ranks): a global batch of 4 either way. `script` replaces salt/train_student.py."""
    if ranks == 1:
        entry = [str(script)] if script else ["-m", "salt.cli", "train-student"]
        return [sys.executable, *entry, "--config", str(config), "--set", "optim.grad_accum=2"]
    launcher = Path(sys.executable).parent / "deepspeed"
    return [
        str(launcher),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        str(script or REPO / "salt" / "train_student.py"),
        "--config",
        str(config),
    ]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def start(command: list[str], folder: Path, env: dict | None = None) -> subprocess.Popen:
    """`command` in its own session (killed as a whole), its output appended to folder/log.txt."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=open(folder / "log.txt", "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_to_end(command: list[str], folder: Path, env: dict | None = None) -> int:
    """The exit status of `command`, once every process of its session has ended (a launcher
    signalled with its job may exit before its ranks)."""
    process = start(command, folder, env)
    try:
        code = process.wait(timeout=BOUND_S)
        wait_for_session(process.pid)
        return code
    finally:
        for leftover in session_processes(process.pid):
            leftover.kill()


def session_processes(session: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def wait_for_session(session: int, bound: float = BOUND_S) -> None:
    """Until no process of `session` is left (a bound on exiting, not a timing assumption)."""
    deadline = time.monotonic() + bound
    while session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [" ".join(p.cmdline())[:120] for p in session_processes(session)]
    assert not left, f"left behind: {left}"


def kill_session(session: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(session, signal.SIGKILL)


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
