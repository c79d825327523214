"""Fixtures of the fault and first-use tests: `salt` in this process (`cli`), and student runs
shared by the fault tests: one cache, one config, one uninterrupted run.

Every student run here trains on a global batch of 4: two ranks of 2 samples, or one rank
accumulating two micro-batches of 2 (`student_command`). With the sample order the same on any
number of ranks, the uninterrupted two-rank run's losses (`reference_losses`) are what every
killed, preempted or resized run must reproduce."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from salt.cli import run_cli
from tests.helpers import cache_args, losses, run_to_end, salt, student_command, student_config

STEPS = 24


@pytest.fixture(scope="session")
def student_cache(tmp_path_factory, teacher, synthetic_set) -> Path:
    out = tmp_path_factory.mktemp("student_cache") / "cache"
    assert salt(*cache_args(teacher, synthetic_set / "train.csv", out)).returncode == 0
    return out


@pytest.fixture(scope="session")
def reference_losses(tmp_path_factory, student_cache) -> dict[int, float]:
    folder = tmp_path_factory.mktemp("reference")
    config = student_config(folder, student_cache, STEPS)
    assert run_to_end(student_command(config, 2), folder) == 0, (folder / "log.txt").read_text()[-3000:]
    return losses(folder / "run")


@pytest.fixture
def cli(capsys, monkeypatch):
    """`salt ARGS` in this process: (exit status, stderr) as a shell would see them; stdout in `.out`."""

    def run(*args) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["salt", *map(str, args)])
        try:
            run_cli()
            code = 0
        except SystemExit as stop:
            code = stop.code
        captured = capsys.readouterr()
        err, run.out = captured.err, captured.out
        if isinstance(code, str):  # SystemExit("error: …"): Python prints it and exits 1
            err, code = err + code + "\n", 1
        return code, err

    return run
