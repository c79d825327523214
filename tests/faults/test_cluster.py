"""What a cluster does to a run: a preemption signal, a restart on another number of GPUs, a
requeued twin on the same run folder, two nodes. Signals and pauses are placed at named steps
from outside the package (tests/faults/train_with.py), never by racing a poll loop."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from salt.latents import open_cache
from tests.faults.conftest import STEPS
from tests.helpers import (
    BOUND_S,
    REPO,
    cache_args,
    free_port,
    kill_session,
    losses,
    run_to_end,
    salt,
    start,
    student_command,
    student_config,
    wait_for_session,
)

TRAIN_WITH = REPO / "tests" / "faults" / "train_with.py"
RESUMABLE = 75


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def preempted_line(step: int, signal: str, run_dir: Path) -> str:
    return (
        f"preempted at step {step} by {signal}: checkpoint saved in {run_dir / 'checkpoints' / f'step{step}'} — "
        "rerun the same command with --resume"
    )


@pytest.mark.slow
def test_sigterm_to_the_job_then_resume_on_one_rank(tmp_path, student_cache, reference_losses):
    """SIGTERM to the whole process group of a 2-rank DeepSpeed job as step 8 starts (the
    launcher signals its ranks' trees too): both ranks finish step 8, commit it, say so in one
    line and exit 75; the global batch kept, one rank continues exactly where two left off."""
    config = student_config(tmp_path, student_cache, STEPS)
    extensions = tmp_path / "torch_extensions"  # where DeepSpeed would build ops just in time: nothing may be
    env = {"SIGNAL_AT": "SIGTERM@7:group", "TORCH_EXTENSIONS_DIR": str(extensions)}
    run_to_end(student_command(config, 2, TRAIN_WITH), tmp_path, env)
    log, run = (tmp_path / "log.txt").read_text(), tmp_path / "run"
    assert not extensions.exists() or not any(extensions.iterdir()), list(extensions.rglob("*"))
    assert preempted_line(8, "SIGTERM", run) in log and "Traceback" not in log, log[-3000:]
    assert status(run)["state"] == "preempted" and status(run)["step"] == 8 and status(run)["exit_status"] == 75
    assert max(losses(run)) == 8 and (run / "checkpoints" / "step8" / "salt_run_state.json").is_file()
    assert not (run / "run.lock").exists()

    # The same command on one rank with the micro-batch split unchanged is refused, naming the fix.
    same = [sys.executable, "-m", "salt.cli", "train-student", "--config", str(config), "--resume"]
    refused = salt(*same[3:], cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "global batch of 4" in refused.stderr and "--set optim.grad_accum=2 or --set data.batch_size=4" in (
        refused.stderr
    )
    assert max(losses(run)) == 8  # nothing written

    assert run_to_end(student_command(config, 1) + ["--resume"], tmp_path) == 0, log[-3000:]
    log = (tmp_path / "log.txt").read_text()
    assert "step8 was made on 2 ranks, this run has 1 rank" in log
    a, b = reference_losses, losses(run)
    assert sorted(b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)
    assert status(run)["state"] == "finished"


@pytest.mark.slow
def test_sigint_on_one_rank_then_resume_on_two(tmp_path, student_cache, reference_losses):
    """Ctrl-C (SIGINT) to a one-rank run accumulating two micro-batches: it stops after the step
    with exit status 75 and no traceback; two ranks continue it with the same losses."""
    config = student_config(tmp_path, student_cache, STEPS)
    code = run_to_end(student_command(config, 1, TRAIN_WITH), tmp_path, {"SIGNAL_AT": "SIGINT@5"})
    log, run = (tmp_path / "log.txt").read_text(), tmp_path / "run"
    assert code == RESUMABLE and preempted_line(6, "SIGINT", run) in log and "Traceback" not in log, log[-3000:]
    assert status(run)["state"] == "preempted" and status(run)["signal"] == "SIGINT"

    assert run_to_end(student_command(config, 2) + ["--resume"], tmp_path) == 0, log[-3000:]
    a, b = reference_losses, losses(run)
    assert sorted(b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)


def teacher_config(folder: Path, data: Path, steps: int) -> Path:
    config = {
        "data": {
            "train": str(data),
            "view": {"frames": 8, "frame_step": 4, "size": 32},
            "batch_size": 2,
            "workers": 1,
        },
        "encoder": {"arch": "vit_tiny", "overrides": {"depth": 2}},
        "decoder": {"width": 64, "depth": 1, "num_heads": 4},
        "optim": {"steps": steps, "warmup_steps": 2, "lr_peak": 1e-3},
        "engine": {"precision": "fp32", "zero_stage": 1, "timeout_s": 30},
        "run": {"out_dir": str(folder / "run"), "log_every": 1, "checkpoint_every": 100, "progress": False},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "teacher.yaml").write_text(json.dumps(config))
    return folder / "teacher.yaml"


@pytest.mark.slow
def test_teacher_preempted_then_resumed_matches_uninterrupted(tmp_path, synthetic_set):
    """Stage 1 under SIGTERM, with no periodic checkpoint due (checkpoint_every 100): the one the
    signal asks for is all the resume needs; nothing is lost."""
    steps = 6
    full = teacher_config(tmp_path / "full", synthetic_set / "train.csv", steps)
    assert salt("train-teacher", "--config", str(full)).returncode == 0
    split = teacher_config(tmp_path / "split", synthetic_set / "train.csv", steps)
    command = [sys.executable, str(TRAIN_WITH), "--config", str(split)]
    code = run_to_end(command, tmp_path / "split", {"SIGNAL_AT": "SIGTERM@2", "TRAIN_STAGE": "teacher"})
    log = (tmp_path / "split" / "log.txt").read_text()
    assert code == RESUMABLE and preempted_line(3, "SIGTERM", tmp_path / "split" / "run") in log, log[-3000:]
    resumed = salt("train-teacher", "--config", str(split), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = losses(tmp_path / "full" / "run"), losses(tmp_path / "split" / "run")
    assert sorted(b) == list(range(1, steps + 1))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_cache_latents_preempted_then_rerun(tmp_path, teacher, synthetic_set, signal_name):
    """A signal once the first shard is written: the shards done are kept, the lock released,
    exit status 75; the same command then completes the cache with every view once."""
    out = tmp_path / "cache"
    args = cache_args(teacher, synthetic_set / "train.csv", out)
    stopped = salt(*args, fault=f"signal-after-shard:{signal_name}")
    assert stopped.returncode == RESUMABLE, stopped.stderr[-2000:]
    assert f"preempted by {signal_name}: 1 of 4 shards saved in {out}" in stopped.stderr
    assert "Traceback" not in stopped.stderr and not list((out / "locks").glob("rank*.lock"))
    assert not (out / "manifest.json").exists()
    assert salt(*args).returncode == 0
    keys = open_cache(out).keys()
    assert keys == sorted(f"v{v:08d}k{k:03d}" for v in range(8) for k in range(2))


@pytest.mark.slow
def test_second_trainer_on_a_live_run_folder_is_refused(tmp_path, student_cache):
    """A requeued twin started beside a live run: refused in one line naming the holder; the
    first run, released afterwards, ends with whole records."""
    config = student_config(tmp_path, student_cache, 8)
    gate = tmp_path / "go"
    first = start(student_command(config, 1, TRAIN_WITH), tmp_path, {"PAUSE_AT": f"3:{gate}"})
    try:
        deadline = time.monotonic() + BOUND_S  # a bound on start-up, not a timing assumption
        while not Path(f"{gate}.paused").exists():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "log.txt").read_text()[-3000:]
            time.sleep(0.05)
        twin = salt("train-student", "--config", str(config), "--resume")
        assert twin.returncode == 1 and "Traceback" not in twin.stderr, twin.stderr[-2000:]
        lines = twin.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {first.pid} on" in lines[0] and "run.lock" in lines[0], lines
        gate.touch()
        assert first.wait(timeout=BOUND_S) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    finally:
        kill_session(first.pid)
    assert sorted(losses(tmp_path / "run")) == list(range(1, 9)) and status(tmp_path / "run")["state"] == "finished"


# ------------------------------------------------------------------------------------ two nodes
def node_command(config: Path, node: int, nodes: int, port: int, *extra: str) -> list[str]:
    torchrun = Path(sys.executable).parent / "torchrun"
    return [
        str(torchrun),
        f"--nnodes={nodes}",
        "--nproc_per_node=1",
        f"--node_rank={node}",
        "--master_addr=127.0.0.1",
        f"--master_port={port}",
        str(TRAIN_WITH),
        "--config",
        str(config),
        *extra,
    ]


def traced(folder: Path) -> dict[int, list[str]]:
    """Keys each rank trained on, by global micro-batch (two ranks, one micro-batch a step)."""
    batches = {}
    for rank in (0, 1):
        path = folder / f"rank{rank}.jsonl"
        for record in map(json.loads, path.read_text().splitlines()) if path.exists() else []:
            batches[record["micro_step"] * 2 + rank] = record["keys"]
    return batches


@pytest.mark.slow
def test_two_nodes_read_each_sample_once_per_epoch_and_resume_on_one(tmp_path, student_cache):
    """torchrun with two nodes of one rank on this machine: each epoch's 16 samples are read once,
    split by global rank; the two-node checkpoint resumes on one node with the same losses; a node
    that does not share run.out_dir is refused by name."""
    steps = 8  # two epochs of 16 samples at a global batch of 4
    trace = tmp_path / "trace"
    trace.mkdir()
    both = student_config(tmp_path / "both", student_cache, steps)
    port = free_port()
    env = {"TRACE_KEYS": str(trace), "OMP_NUM_THREADS": "1"}
    nodes = [start(node_command(both, node, 2, port), tmp_path / "both", env) for node in (0, 1)]
    try:
        for node in nodes:
            assert node.wait(timeout=BOUND_S) == 0, (tmp_path / "both" / "log.txt").read_text()[-3000:]
    finally:
        for node in nodes:
            kill_session(node.pid)
    batches = traced(trace)
    assert sorted(batches) == list(range(16))
    for epoch in range(2):
        keys = [key for g in range(epoch * 8, epoch * 8 + 8) for key in batches[g]]
        assert sorted(keys) == sorted(f"v{v:08d}k{k:03d}" for v in range(8) for k in range(2))

    # The two-node run stopped at step 4 (run.stop_at), resumed by one node accumulating two micro-batches.
    split = student_config(tmp_path / "split", student_cache, steps)
    port = free_port()
    nodes = [start(node_command(split, node, 2, port, "--set", "run.stop_at=4"), tmp_path / "split") for node in (0, 1)]
    try:
        assert [node.wait(timeout=BOUND_S) for node in nodes] == [0, 0], (tmp_path / "split" / "log.txt").read_text()
    finally:
        for node in nodes:
            kill_session(node.pid)
    one = node_command(split, 0, 1, free_port(), "--resume", "--set", "optim.grad_accum=2")
    assert run_to_end(one, tmp_path / "split") == 0, (tmp_path / "split" / "log.txt").read_text()[-3000:]
    a, b = losses(tmp_path / "both" / "run"), losses(tmp_path / "split" / "run")
    assert sorted(b) == list(range(1, steps + 1))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)

    # Node 1 writes to a run.out_dir of its own ("its local disk"): refused, naming the rank and the path.
    apart = student_config(tmp_path / "apart", student_cache, steps)
    port = free_port()
    own = tmp_path / "apart" / "node1-disk"
    nodes = [
        start(node_command(apart, 0, 2, port), tmp_path / "apart"),
        start(node_command(apart, 1, 2, port, "--set", f"run.out_dir={own}"), tmp_path / "apart"),
    ]
    try:
        codes = [node.wait(timeout=BOUND_S) for node in nodes]
        for node in nodes:
            wait_for_session(node.pid)
    finally:
        for node in nodes:
            kill_session(node.pid)
    log = (tmp_path / "apart" / "log.txt").read_text()
    assert codes != [0, 0] and f"rank 1 on {os.uname().nodename} cannot see {own / 'run.lock'}" in log, log[-3000:]
    assert (
        "must be one folder that every node shares" in log
        and not (tmp_path / "apart" / "run" / "metrics.jsonl").exists()
    )
