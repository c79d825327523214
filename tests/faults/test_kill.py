"""Kill every stage at its worst moments; a rerun (or --resume) loses nothing and repeats nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from salt.latents import open_cache
from tests.helpers import BOUND_S, REPO, cache_args, killed, salt

EXPECTED = sorted(f"v{v:08d}k{k:03d}" for v in range(8) for k in range(2))


def assert_complete(out: Path) -> None:
    assert open_cache(out).keys() == EXPECTED  # every (video, view) exactly once
    verify = salt("inspect", str(out), "--verify", "--samples", "0")
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("fault", ["kill-before-first-shard", "kill-mid-shard", "kill-in-manifest-write"])
def test_cache_latents_killed_then_rerun(tmp_path, teacher, synthetic_set, fault):
    out = tmp_path / "cache"
    args = cache_args(teacher, synthetic_set / "train.csv", out)
    assert killed(salt(*args, fault=fault))
    assert not (out / "manifest.json").exists()
    if fault == "kill-mid-shard":
        assert list((out / "wds").glob("*.tar.tmp")), "the kill should leave a partial shard behind"
    rerun = salt(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert_complete(out)


def session_processes(session: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def test_decode_workers_exit_with_a_killed_cache_latents(tmp_path, teacher, synthetic_set):
    """Forkserver workers outlived a SIGKILLed owner (their parent is the fork server, which they
    keep alive): they now exit with it, so nothing is left holding memory or the owner's pipes."""
    args = cache_args(teacher, synthetic_set / "train.csv", tmp_path / "cache")
    args[args.index("--workers") + 1] = "2"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.faults.inject", "kill-before-first-shard", *args],
        cwd=REPO,
        env=env,
        stdout=open(tmp_path / "log.txt", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert process.wait(timeout=BOUND_S) == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-2000:]
        deadline = time.monotonic() + 60  # a bound on exiting, not a timing assumption
        while session_processes(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [" ".join(p.cmdline())[:120] for p in session_processes(process.pid)]
        assert not left, f"left behind by the killed run: {left}"
    finally:
        for leftover in session_processes(process.pid):
            leftover.kill()


def test_growing_cache_killed_in_manifest_write_keeps_the_old_manifest(tmp_path, teacher, synthetic_set):
    out = tmp_path / "cache"
    assert salt(*cache_args(teacher, synthetic_set / "train.csv", out, views=1)).returncode == 0
    before = (out / "manifest.json").read_bytes()
    assert killed(salt(*cache_args(teacher, synthetic_set / "train.csv", out), fault="kill-in-manifest-write"))
    assert (out / "manifest.json").read_bytes() == before  # readers still see the complete 1-view cache
    assert len(open_cache(out)) == 8
    assert salt(*cache_args(teacher, synthetic_set / "train.csv", out)).returncode == 0
    assert_complete(out)


def test_multi_rank_merge_killed_then_rerun(tmp_path, teacher, synthetic_set):
    out = tmp_path / "cache"
    data = synthetic_set / "train.csv"
    rank0 = salt(*cache_args(teacher, data, out, "--rank", "0", "--world-size", "2"))
    assert rank0.returncode == 0 and not (out / "manifest.json").exists()
    # The last rank to finish writes the manifest: killed exactly then.
    assert killed(
        salt(*cache_args(teacher, data, out, "--rank", "1", "--world-size", "2"), fault="kill-in-manifest-write")
    )
    assert killed(salt(*cache_args(teacher, data, out, "--merge"), fault="kill-in-manifest-write"))
    assert not (out / "manifest.json").exists()
    merge = salt(*cache_args(teacher, data, out, "--merge"))
    assert merge.returncode == 0, merge.stderr
    assert_complete(out)


# ------------------------------------------------------------------------------- the student
@pytest.fixture(scope="module")
def student_cache(tmp_path_factory, teacher, synthetic_set) -> Path:
    out = tmp_path_factory.mktemp("student_cache") / "cache"
    assert salt(*cache_args(teacher, synthetic_set / "train.csv", out)).returncode == 0
    return out


def student_config(folder: Path, cache: Path, steps: int) -> Path:
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
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "student.yaml").write_text(yaml.safe_dump(config))
    return folder / "student.yaml"


def student_command(config: Path, ranks: int, port: int, script: Path | None = None) -> list[str]:
    """`salt train-student` (one rank) or the deepspeed launcher; `script` replaces salt/train_student.py."""
    if ranks == 1:
        entry = [str(script)] if script else ["-m", "salt.cli", "train-student"]
        return [sys.executable, *entry, "--config", str(config)]
    launcher = Path(sys.executable).parent / "deepspeed"
    return [
        str(launcher),
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(port),
        str(script or REPO / "salt" / "train_student.py"),
        "--config",
        str(config),
    ]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def start(command: list[str], folder: Path, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=open(folder / "log.txt", "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # its own process group, killed as a whole


def wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, bound: float = BOUND_S) -> None:
    deadline = time.monotonic() + bound
    while not (run_dir / "checkpoints" / "latest").exists():
        assert process.poll() is None, (run_dir.parent / "log.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_student_killed_then_resumed_matches_uninterrupted(tmp_path, student_cache, ranks):
    steps, port = 24, 29700 + ranks
    full = start(
        student_command(student_config(tmp_path / "full", student_cache, steps), ranks, port), tmp_path / "full"
    )
    assert full.wait(timeout=BOUND_S) == 0, (tmp_path / "full" / "log.txt").read_text()[-3000:]

    split = student_config(tmp_path / "split", student_cache, steps)
    process = start(student_command(split, ranks, port + 10), tmp_path / "split")
    wait_for_checkpoint(process, tmp_path / "split" / "run")
    os.killpg(process.pid, signal.SIGKILL)  # the whole job at once, as a preempted allocation
    process.wait(timeout=30)
    logged = losses(tmp_path / "split" / "run")
    assert max(logged) < steps, "killed before the end"

    resumed = start(student_command(split, ranks, port + 20) + ["--resume"], tmp_path / "split")
    assert resumed.wait(timeout=BOUND_S) == 0, (tmp_path / "split" / "log.txt").read_text()[-3000:]
    a, b = losses(tmp_path / "full" / "run"), losses(tmp_path / "split" / "run")
    assert sorted(b) == sorted(a) == list(range(1, steps + 1))  # every step once
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4)


@pytest.mark.slow
def test_one_rank_killed_the_other_fails_within_the_group_timeout(tmp_path, student_cache):
    config = student_config(tmp_path, student_cache, 400)
    process = start(student_command(config, 2, 29760), tmp_path)
    wait_for_checkpoint(process, tmp_path / "run")
    ranks = [
        p
        for p in psutil.Process(process.pid).children(recursive=True)
        if any("--local_rank=1" in a for a in p.cmdline())
    ]
    assert len(ranks) == 1, [p.cmdline() for p in psutil.Process(process.pid).children(recursive=True)]
    killed_at = time.monotonic()
    ranks[0].kill()
    try:
        code = process.wait(timeout=30 + 60)  # engine.timeout_s is 30; the launcher then stops
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code != 0
    assert time.monotonic() - killed_at < 90
    survivors = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not survivors, "no rank may be left hanging"


# ------------------------------------------------------- kills placed inside the checkpoint commit
# Each kill lands at a named point of `salt/training/checkpointing.save` (tests/faults/kill_at.py
# wraps its steps; KILL_AT=point@step, rank 0), so nothing here races a poll loop. One run is
# killed at every point in turn: at the first checkpoint after DeepSpeed's files (nothing
# committed yet: resume starts at step 0), at the second after its run state (complete, but
# `latest` still names step4), at the third after the pointer (before old checkpoints are
# deleted), and at the fourth half-way through deleting the oldest (step4). Each resume continues
# from the newest complete checkpoint.
COMMIT_KILLS = [("after-deepspeed-files", 4), ("after-run-state", 8), ("after-pointer", 12), ("mid-deletion", 16)]
COMMIT_STEPS = 20
KILL_AT_SCRIPT = REPO / "tests" / "faults" / "kill_at.py"


def run_to_end(command: list[str], folder: Path, env: dict | None = None) -> int:
    process = start(command, folder, env)
    try:
        return process.wait(timeout=BOUND_S)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_student_killed_at_every_point_of_the_checkpoint_commit(tmp_path, student_cache, ranks):
    from salt.training.checkpointing import RUN_STATE, complete_checkpoints

    port = 29800 + 40 * ranks
    full = student_config(tmp_path / "full", student_cache, COMMIT_STEPS)
    assert run_to_end(student_command(full, ranks, port), tmp_path / "full") == 0, (
        tmp_path / "full" / "log.txt"
    ).read_text()[-3000:]

    config = student_config(tmp_path / "split", student_cache, COMMIT_STEPS)
    checkpoints = tmp_path / "split" / "run" / "checkpoints"
    for attempt, (point, step) in enumerate(COMMIT_KILLS, start=1):
        command = student_command(config, ranks, port + attempt, KILL_AT_SCRIPT) + (["--resume"] if attempt > 1 else [])
        code = run_to_end(command, tmp_path / "split", {"KILL_AT": f"{point}@{step}"})
        log = (tmp_path / "split" / "log.txt").read_text()
        assert code != 0, f"{point}@{step}: the run should have been killed\n{log[-3000:]}"
        complete = [int(p.name[4:]) for p in complete_checkpoints(checkpoints)]
        if point == "after-deepspeed-files":
            assert (
                complete == []
                and (checkpoints / f"step{step}").is_dir()
                and not (checkpoints / f"step{step}" / RUN_STATE).exists()
            )
        else:
            assert complete[-1] == step, (point, complete)
            pointer = (checkpoints / "latest").read_text().strip()
            assert pointer == ("step4" if point == "after-run-state" else f"step{step}")
        if point == "mid-deletion":
            assert (checkpoints / "step4").is_dir() and 4 not in complete  # half deleted, and no longer complete
    resumed = run_to_end(student_command(config, ranks, port + 9) + ["--resume"], tmp_path / "split")
    log = (tmp_path / "split" / "log.txt").read_text()
    assert resumed == 0, log[-3000:]
    assert "no complete checkpoint" in log and "starting at step 0" in log  # the second attempt
    assert "names step4, but the newest complete checkpoint is step8" in log  # the third
    a, b = losses(tmp_path / "full" / "run"), losses(tmp_path / "split" / "run")
    assert sorted(b) == sorted(a) == list(range(1, COMMIT_STEPS + 1))  # every step logged exactly once
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4)
    assert [int(p.name[4:]) for p in complete_checkpoints(checkpoints)] == [16, 20]
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step16", "step20"]  # leftovers deleted
