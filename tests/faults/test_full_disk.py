"""A full disk in each stage: one line naming what could not be written, nothing half-written
left, the previous checkpoint intact, and the rerun completing once space is freed. Real full
disks are small tmpfs mounts (root only: skipped otherwise, with the reason); a full disk under
one rank of two is an injected ENOSPC (tests/faults/train_with.py)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from salt.latents import open_cache
from tests.faults.conftest import STEPS
from tests.helpers import REPO, cache_args, losses, run_to_end, salt, student_command, student_config

TRAIN_WITH = REPO / "tests" / "faults" / "train_with.py"
NO_SPACE = "no space left on device writing"


@contextlib.contextmanager
def small_disk(folder: Path, megabytes: int):
    """A tmpfs of `megabytes` at `folder` (unmounted afterwards); `resize(mb)` grows it."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(
            f"cannot mount a small tmpfs here ({mount.stderr.strip() or 'not root'}); ENOSPC is injected elsewhere"
        )

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}m", str(folder)], check=True)

    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(bytes(1 << 16))
                handle.flush()
    with contextlib.suppress(OSError):
        with open(filler, "ab") as handle:
            while True:
                handle.write(b"\0")
                handle.flush()
    return filler


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_student_checkpoint_that_does_not_fit(tmp_path, student_cache):
    """step4 fits on the disk, step8 does not: one line, step8's partial folder gone, step4
    intact; a resume on the still-full disk is one line too and leaves nothing; with space freed
    it completes."""
    disk = tmp_path / "disk"
    with small_disk(disk, 20) as resize:
        config = student_config(disk, student_cache, 12, run={"keep_checkpoints": 2})
        run = disk / "run"
        code = run_to_end(student_command(config, 1), tmp_path)
        log = (tmp_path / "log.txt").read_text()
        assert code == 1 and "Traceback" not in log, log[-3000:]
        assert error_lines(log) == [
            f"error: {NO_SPACE} {run / 'checkpoints' / 'step8'} — free space or choose another folder"
        ], log[-3000:]
        assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == ["step4"]
        assert (run / "checkpoints" / "step4" / "salt_run_state.json").is_file()
        assert json.loads((run / "status.json").read_text())["state"] == "failed"
        assert not list(run.rglob("*.tmp")) and not (run / "run.lock").exists()

        filler = fill(disk)
        (tmp_path / "log.txt").unlink()
        code = run_to_end(student_command(config, 1) + ["--resume"], tmp_path)
        log = (tmp_path / "log.txt").read_text()
        assert code == 1 and len(error_lines(log)) == 1 and NO_SPACE in log and "Traceback" not in log, log[-3000:]
        assert not (run / "run.lock").exists() and not list(run.rglob("*.tmp")) and not list(run.rglob("*.partial"))

        filler.unlink()
        resize(64)
        assert run_to_end(student_command(config, 1) + ["--resume"], tmp_path) == 0
        assert sorted(losses(run)) == list(range(1, 13))


@pytest.mark.slow
def test_a_full_disk_under_one_rank_stops_both(tmp_path, student_cache, reference_losses):
    """Rank 1's optimiser file of step8 fails with ENOSPC: both ranks stop at that checkpoint,
    one line is printed, step8 is removed and step4 kept; the resume reproduces the
    uninterrupted run."""
    config = student_config(tmp_path, student_cache, STEPS)
    code = run_to_end(student_command(config, 2, TRAIN_WITH), tmp_path, {"NO_SPACE_AT": "8@1"})
    log, run = (tmp_path / "log.txt").read_text(), tmp_path / "run"
    assert code == 1 and "Traceback" not in log, log[-3000:]
    assert error_lines(log) == [
        f"error: {NO_SPACE} {run / 'checkpoints' / 'step8'} — free space or choose another folder"
    ]
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == ["step4"]
    assert run_to_end(student_command(config, 2) + ["--resume"], tmp_path) == 0, log[-3000:]
    a, b = reference_losses, losses(run)
    assert sorted(b) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)


def test_cache_latents_on_a_full_disk_then_rerun(tmp_path, teacher, synthetic_set):
    """Started on a full disk: one line naming the lock it could not write, and no lock left
    behind to refuse the rerun once space is freed."""
    disk = tmp_path / "disk"
    with small_disk(disk, 4):
        filler = fill(disk)
        out = disk / "cache"
        args = cache_args(teacher, synthetic_set / "train.csv", out)
        full = salt(*args)
        assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
        assert error_lines(full.stderr) == [
            f"error: {NO_SPACE} {out / 'locks' / 'rank0-of-1.lock'} — free space or choose another folder"
        ]
        assert not list((out / "locks").iterdir()) if (out / "locks").exists() else True
        filler.unlink()
        assert salt(*args).returncode == 0
        assert len(open_cache(out).keys()) == 16


def test_export_on_a_full_disk(tmp_path):
    from salt.models import build_encoder, save_encoder

    encoder = tmp_path / "rope.pt"
    save_encoder(encoder, build_encoder("vit_tiny_rope", img_size=32, num_frames=8, depth=2), kind="student")
    disk = tmp_path / "disk"
    with small_disk(disk, 1):
        fill(disk)
        result = salt("export", str(encoder), "--out", str(disk / "hf"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and NO_SPACE in lines[0] and str(disk / "hf") in lines[0], result.stderr[-2000:]


def test_stale_empty_lock_does_not_block(tmp_path, teacher, synthetic_set):
    """What a full disk left before: an empty lock file. It is stale, not "an unknown process"."""
    out = tmp_path / "cache"
    (out / "locks").mkdir(parents=True)
    (out / "locks" / "rank0-of-1.lock").write_bytes(b"")
    result = salt(*cache_args(teacher, synthetic_set / "train.csv", out))
    assert result.returncode == 0, result.stderr[-2000:]
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.lock").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    config = student_config(tmp_path, out, 2)
    done = subprocess.run(
        [sys.executable, "-m", "salt.cli", "train-student", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
