"""Fixtures of the fault and first-use tests."""

from __future__ import annotations

import sys

import pytest

from salt.cli import run_cli


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
