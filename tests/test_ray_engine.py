"""`salt cache-latents --engine ray`: the same bytes as the local engine, on a local Ray instance
and on a two-node cluster started here; killed workers and a killed driver lose nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from salt.latents import open_cache
from tests.helpers import free_port, killed, salt

RAY = str(Path(sys.executable).with_name("ray"))
# The test cluster's token (Ray's token authentication), in the environment of both ends.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "salt-test-" + "0" * 22, "RAY_USAGE_STATS_ENABLED": "0"}
# The nodes' workers at normal priority (Ray's default is nice 15: starved beside busy processes).
NODE_ENV = {**AUTH, "RAY_worker_niceness": "0"}


def cache_args(teacher: Path, data: Path, out: Path, *extra: str, views: int = 2) -> list[str]:
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
        "8",
        "--shard-videos",
        "2",
        "--batch-size",
        "3",
        "--precision",
        "bf16",
        "--format",
        "both",
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


def stored_files(cache: Path) -> dict[str, str]:
    """Digest of every stored sample file (tars, Zarr chunks and metadata); manifest minus when/how made."""
    files = {
        str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ("wds", "cache.zarr")
        for p in sorted((cache / folder).rglob("*"))
        if p.is_file()
    }
    manifest = json.loads((cache / "manifest.json").read_text())
    files["manifest"] = {k: v for k, v in manifest.items() if k not in ("command", "created")}
    return files


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, teacher, synthetic_set) -> dict:
    out = tmp_path_factory.mktemp("ray_reference") / "cache"
    result = salt(*cache_args(teacher, synthetic_set / "train.csv", out))
    assert result.returncode == 0, result.stderr
    return stored_files(out)


@pytest.fixture(scope="module")
def two_node_cluster():
    """A Ray head and a second Ray node on this machine (2 logical CPUs each); stopped by pid."""
    port = free_port()
    env = {**os.environ, **NODE_ENV}
    common = ["--block", "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats"]
    started = [
        subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    ]
    try:
        _wait_for(lambda: _listening(port), "the Ray head")
        started.append(
            subprocess.Popen(
                [RAY, "start", f"--address=127.0.0.1:{port}", *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        _wait_for(lambda: _alive_nodes(port) == 2, "the second Ray node")
        yield f"127.0.0.1:{port}"
    finally:
        processes = [psutil.Process(p.pid) for p in started if p.poll() is None]
        family = processes + [c for p in processes for c in p.children(recursive=True)]
        for process in reversed(started):
            process.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        for process in started:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        for process in family:  # whatever outlived its node, by pid
            with_pid_gone = not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
            if not with_pid_gone:
                process.kill()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _alive_nodes(port: int) -> int:
    script = (
        f"import ray; ray.init(address='127.0.0.1:{port}', log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **AUTH}, capture_output=True, text=True, timeout=120
    )
    return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else 0


def _wait_for(ready, what: str, bound_s: float = 120) -> None:
    deadline = time.monotonic() + bound_s  # a bound on start-up, not a timing assumption of the test
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {bound_s} s")
        time.sleep(0.5)


def test_ray_engine_writes_the_local_engines_bytes_including_skips(tmp_path, teacher, synthetic_set):
    lines = (synthetic_set / "train.csv").read_text().splitlines()[:5]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    csv = tmp_path / "data.csv"
    csv.write_text(
        "".join(f"{synthetic_set / line}\n" for line in lines[:2])
        + f"{broken} 1\n"
        + "".join(f"{synthetic_set / line}\n" for line in lines[2:])
    )
    local = salt(*cache_args(teacher, csv, tmp_path / "local", "--max-skipped", "0.2"))  # 1 of 6 skipped
    assert local.returncode == 0, local.stderr
    ray = salt(
        *cache_args(teacher, csv, tmp_path / "ray", "--engine", "ray", "--max-skipped", "0.2")
    )  # starts and stops a local Ray instance
    assert ray.returncode == 0, ray.stderr
    assert stored_files(tmp_path / "ray") == stored_files(tmp_path / "local")
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert [(s["video"], s["path"]) for s in manifest["skipped"]] == [(2, str(broken))]
    assert manifest["sample_count"] == 10


def test_two_nodes_decode_and_killed_workers_are_retried(
    tmp_path, teacher, synthetic_set, two_node_cluster, local_reference
):
    out = tmp_path / "cache"
    marks = tmp_path / "decode.killed", tmp_path / "teacher.killed"
    # Both decoders (placed SPREAD, one per node) hold their first video until both have started:
    # otherwise the first one up, on the node holding the inputs, may take every video. With at
    # most 2 videos in flight per decoder, the one that meets video 6 has finished a video already.
    fault = f"decoders@2:{tmp_path / 'decoders'},decode@6:{marks[0]},teacher@5:{marks[1]}"  # each worker SIGKILLed once
    result = salt(
        *cache_args(
            teacher,
            synthetic_set / "train.csv",
            out,
            "--engine",
            "ray",
            "--ray-address",
            two_node_cluster,
            "--decode-cpus",
            "2",
        ),
        env=AUTH,
        fault=f"ray:{fault}",
    )
    assert result.returncode == 0, result.stderr
    assert all(mark.exists() for mark in marks), "both faults should have fired"
    assert stored_files(out) == local_reference  # nothing lost, nothing twice, the same bytes
    nodes = set()
    for done in (out / "done").glob("*.json"):
        nodes |= set(json.loads(done.read_text())["decoded_on"])
    assert len(nodes) == 2, f"videos were decoded on {len(nodes)} node(s)"


def test_driver_killed_mid_shard_then_rerun_completes(
    tmp_path, teacher, synthetic_set, two_node_cluster, local_reference
):
    out = tmp_path / "cache"
    args = cache_args(teacher, synthetic_set / "train.csv", out, "--engine", "ray", "--ray-address", two_node_cluster)
    result = salt(*args, env=AUTH, fault="kill-mid-shard")
    assert killed(result), result.stderr
    assert list((out / "wds").glob("*.tar.tmp")) and not (out / "manifest.json").exists()
    rerun = salt(*args, env=AUTH)
    assert rerun.returncode == 0, rerun.stderr
    assert stored_files(out) == local_reference
    assert open_cache(out).keys() == sorted(f"v{v:08d}k{k:03d}" for v in range(8) for k in range(2))


def test_more_views_by_the_ray_engine_keep_the_local_engines_shards(
    tmp_path, teacher, synthetic_set, two_node_cluster, local_reference
):
    out = tmp_path / "cache"
    assert (
        salt(*cache_args(teacher, synthetic_set / "train.csv", out, views=1)).returncode == 0
    )  # local engine: view 0 ...
    before = {k: v for k, v in stored_files(out).items() if k.startswith("wds/")}
    grown = salt(
        *cache_args(teacher, synthetic_set / "train.csv", out, "--engine", "ray", "--ray-address", two_node_cluster),
        env=AUTH,
    )  # ... the Ray engine adds view 1
    assert grown.returncode == 0, grown.stderr
    after = stored_files(out)
    assert all(after[name] == digest for name, digest in before.items())
    assert len(open_cache(out)) == 16 and after["manifest"]["views"] == 2


def test_cluster_problems_are_refused_naming_what_to_do(tmp_path, teacher, synthetic_set, two_node_cluster):
    data = synthetic_set / "train.csv"
    nobody = salt(
        *cache_args(teacher, data, tmp_path / "a", "--engine", "ray", "--ray-address", f"127.0.0.1:{free_port()}")
    )
    assert (
        nobody.returncode != 0
        and "no Ray cluster could be joined" in nobody.stderr
        and "ray start --head" in nobody.stderr
    )
    greedy = salt(
        *cache_args(
            teacher, data, tmp_path / "b", "--engine", "ray", "--ray-address", two_node_cluster, "--decode-cpus", "64"
        ),
        env=AUTH,
    )
    assert greedy.returncode != 0 and "4 CPUs and 0 GPUs" in greedy.stderr and "--decode-cpus" in greedy.stderr
    ranked = salt(*cache_args(teacher, data, tmp_path / "c", "--engine", "ray", "--world-size", "2"))
    assert ranked.returncode != 0 and "one driver" in ranked.stderr
    for out in ("a", "b", "c"):
        assert not (tmp_path / out / "manifest.json").exists()
