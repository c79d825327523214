"""Benchmark: how long the `salt` commands that do no heavy work take to answer, and which imports
the time goes to (`python -X importtime`).

Run: python benchmarks/bench_startup.py [--repeats 3] [--compare OTHER_CHECKOUT] [--json FILE]

With --compare, every command also runs against another checkout of the project (e.g. the commit
before a change, from `git archive`), interleaved with this one's runs: a before/after in one run.

Each command runs as a user runs it (a fresh process of the console script's entry point), on
data made here: a one-line CSV naming a missing file, 4 tiny synthetic videos, a CSV line that is
not a video, a misused `--set`. Wall time is the median over the repeats; the import column is
the share of the first run's imports (`-X importtime`, cumulative, top-level packages).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = "import sys; from salt.cli import run_cli; sys.argv[0] = 'salt'; run_cli()"


def commands(work: Path) -> dict[str, list[str]]:
    (work / "missing.csv").write_text(f"{work / 'gone.mp4'} 0\n")
    (work / "bad.csv").write_text("hi\n")
    return {
        "salt --help": ["--help"],
        "salt models": ["models"],
        "salt check-data (1 missing file)": ["check-data", str(work / "missing.csv"), "--no-progress"],
        "salt check-data (4 tiny videos)": ["check-data", str(work / "syn" / "four.csv"), "--no-progress"],
        "salt train-student --set optim.steps": [
            "train-student",
            "--config",
            str(REPO / "configs/student/vit_tiny.yaml"),
            "--set",
            "optim.steps",
        ],
        "salt train-teacher (no such config)": ["train-teacher", "--config", str(work / "nope.yaml")],
        "salt cache-latents (CSV line 'hi')": [
            "cache-latents",
            "--teacher",
            str(work / "teacher.pt"),
            "--data",
            str(work / "bad.csv"),
            "--out",
            str(work / "cache"),
        ],
        "salt export (no such file)": ["export", str(work / "nothing.pt"), "--out", str(work / "export")],
    }


def make_data(work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [
            sys.executable,
            "-c",
            ENTRY,
            "make-synthetic",
            "--out",
            str(work / "syn"),
            "--videos",
            "8",
            "--size",
            "32",
            "--frames",
            "8",
            "--tubelet",
            "1",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    lines = (work / "syn" / "train.csv").read_text().splitlines()
    (work / "syn" / "four.csv").write_text("\n".join(lines[:4]) + "\n")
    (work / "teacher.pt").write_bytes(b"")  # never read: the CSV is refused first


def run_once(args: list[str], importtime: bool, checkout: Path = REPO) -> tuple[float, int, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONUNBUFFERED": "1"}
    head = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", ENTRY]
    start = time.perf_counter()
    result = subprocess.run([*head, *args], env=env, capture_output=True, text=True, cwd=checkout, timeout=600)
    seconds = time.perf_counter() - start
    return seconds, result.returncode, imported(result.stderr) if importtime else {}


def imported(stderr: str) -> dict[str, float]:
    """Seconds per top-level package (cumulative, where it was first imported), and "all": the
    sum over the outermost imports, i.e. the whole import time."""
    imports: dict[str, float] = {"all": 0.0}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, raw = line[len("import time:") :].split("|")
        name = raw[1:]  # one space after the bar, then two per level of nesting
        if not cumulative.strip().isdigit():
            continue
        seconds = int(cumulative) / 1e6
        if not name.startswith(" "):
            imports["all"] += seconds
        name = name.strip()
        if "." not in name and not name.startswith("salt"):
            imports[name] = max(imports.get(name, 0.0), seconds)
    return imports


def measure(args: list[str], checkout: Path, repeats: int) -> dict:
    _, code, imports = run_once(args, importtime=True, checkout=checkout)
    times = [run_once(args, importtime=False, checkout=checkout)[0] for _ in range(repeats)]
    total = imports.pop("all", 0.0)
    heavy = sorted(imports.items(), key=lambda kv: -kv[1])[:4]
    return {
        "exit": code,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "imports_s": round(total, 3),
        "heaviest_imports": {k: round(v, 3) for k, v in heavy},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", type=Path, help="Another checkout of the project, measured beside this one.")
    parser.add_argument("--json", help="Append the record (one JSON line) to this file.")
    options = parser.parse_args()
    checkouts = {"this": REPO, **({"compare": options.compare.resolve()} if options.compare else {})}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_data(work)
        for name, args in commands(work).items():
            row = {"command": name}
            for label, checkout in reversed(checkouts.items()):  # the other checkout first, then this one
                row[label] = measure(args, checkout, options.repeats)
            rows.append(row)
            shown = "  ".join(
                f"{label}: exit {r['exit']} {r['median_s']:5.2f} s (imports {r['imports_s']:.2f} s)"
                for label, r in ((label, row[label]) for label in checkouts)
            )
            print(f"{name:38} {shown}")
    if options.json:
        record = {
            "benchmark": "startup",
            "checkouts": {label: str(path) for label, path in checkouts.items()},
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
            "python": platform.python_version(),
            "repeats": options.repeats,
            "rows": rows,
        }
        with open(options.json, "a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
