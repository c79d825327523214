"""Small pieces every tool uses: a `salt` command as a subprocess argv, a run's metric records."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def salt_command(*args: str, module: str = "salt.cli") -> list[str]:
    """argv of `salt ARGS` in this interpreter (or of another `python -m` entry point)."""
    return [sys.executable, "-m", module, *map(str, args)]


def metric_records(metrics: Path) -> list[dict]:
    """The JSON records of a run's metrics.jsonl (a line cut off by a kill is passed over)."""
    records = []
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def last_record(metrics: Path) -> dict | None:
    records = metric_records(metrics)
    return records[-1] if records else None
