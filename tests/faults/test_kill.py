"""Kill every stage at its worst moments; a rerun (or --resume) loses nothing and repeats nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from salt.latents import open_cache
from tests.faults.conftest import STEPS
from tests.helpers import (
    BOUND_S,
    REPO,
    cache_args,
    kill_session,
    killed,
    losses,
    run_to_end,
    salt,
    session_processes,
    start,
    student_command,
    student_config,
    wait_for_session,
)

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
# The student runs share tests/faults/conftest.py: its cache, the config (global batch 4: two
# ranks of 2 samples, or one rank accumulating two micro-batches) and the uninterrupted losses.


TRAIN_WITH = REPO / "tests" / "faults" / "train_with.py"


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_student_killed_then_resumed_matches_uninterrupted(tmp_path, student_cache, reference_losses, ranks):
    """SIGKILL to the whole job (no chance to save) as step 10 starts: the run resumes from step8."""
    config = student_config(tmp_path, student_cache, STEPS)
    code = run_to_end(student_command(config, ranks, TRAIN_WITH), tmp_path, {"SIGNAL_AT": "SIGKILL@9:group"})
    assert code in (-9, 137) or ranks == 2, (tmp_path / "log.txt").read_text()[-3000:]  # 2 ranks: the launcher's own
    logged = losses(tmp_path / "run")
    assert max(logged) == 9, "killed in step 10"

    assert run_to_end(student_command(config, ranks) + ["--resume"], tmp_path) == 0, (tmp_path / "log.txt").read_text()[
        -3000:
    ]
    a, b = reference_losses, losses(tmp_path / "run")
    assert sorted(b) == sorted(a) == list(range(1, STEPS + 1))  # every step once
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4)


@pytest.mark.slow
def test_one_rank_killed_the_other_fails_within_the_group_timeout(tmp_path, student_cache):
    config = student_config(tmp_path, student_cache, 400)
    process = start(student_command(config, 2, TRAIN_WITH), tmp_path, {"PAUSE_AT": f"6:{tmp_path / 'go'}"})
    try:
        deadline = time.monotonic() + BOUND_S  # a bound on start-up, not a timing assumption
        while not (tmp_path / "go.paused").exists():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "log.txt").read_text()[-3000:]
            time.sleep(0.05)
        ranks = [
            p
            for p in psutil.Process(process.pid).children(recursive=True)
            if any("--local_rank=1" in a for a in p.cmdline())
        ]
        assert len(ranks) == 1, [p.cmdline() for p in psutil.Process(process.pid).children(recursive=True)]
        killed_at = time.monotonic()
        ranks[0].kill()
        (tmp_path / "go").touch()
        code = process.wait(timeout=30 + 60)  # engine.timeout_s is 30; the launcher then stops
        assert code != 0
        assert time.monotonic() - killed_at < 90
        wait_for_session(process.pid)
    finally:
        kill_session(process.pid)
    log = (tmp_path / "log.txt").read_text()
    assert "Traceback" not in log, log[-3000:]  # the surviving rank says in one line why it stopped


# ------------------------------------------------------- kills placed inside the checkpoint commit
# Each kill lands at a named point of `salt/training/checkpointing.save` (tests/faults/kill_at.py
# wraps its steps; KILL_AT=point@step, rank 0), so nothing here races a poll loop. One run is
# killed at every point in turn: at the first checkpoint after DeepSpeed's files (nothing
# committed yet: resume starts at step 0), at the second after its run state (complete, but
# `latest` still names step4), at the third after the pointer (before old checkpoints are
# deleted), and at the fourth half-way through deleting the oldest (step4). Each resume continues
# from the newest complete checkpoint.
COMMIT_KILLS = [("after-deepspeed-files", 4), ("after-run-state", 8), ("after-pointer", 12), ("mid-deletion", 16)]
KILL_AT_SCRIPT = REPO / "tests" / "faults" / "kill_at.py"


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_student_killed_at_every_point_of_the_checkpoint_commit(tmp_path, student_cache, reference_losses, ranks):
    from salt.training.checkpointing import RUN_STATE, complete_checkpoints

    config = student_config(tmp_path / "split", student_cache, STEPS)
    checkpoints = tmp_path / "split" / "run" / "checkpoints"
    for attempt, (point, step) in enumerate(COMMIT_KILLS, start=1):
        command = student_command(config, ranks, KILL_AT_SCRIPT) + (["--resume"] if attempt > 1 else [])
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
    resumed = run_to_end(student_command(config, ranks) + ["--resume"], tmp_path / "split")
    log = (tmp_path / "split" / "log.txt").read_text()
    assert resumed == 0, log[-3000:]
    assert "no complete checkpoint" in log and "starting at step 0" in log  # the second attempt
    assert "names step4, but the newest complete checkpoint is step8" in log  # the third
    a, b = reference_losses, losses(tmp_path / "split" / "run")
    assert sorted(b) == sorted(a) == list(range(1, STEPS + 1))  # every step logged exactly once
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4)
    assert [int(p.name[4:]) for p in complete_checkpoints(checkpoints)] == [20, 24]
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step20", "step24"]  # leftovers deleted
