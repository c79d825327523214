"""What a preemption costs: SIGTERM to a training job's whole process group (as `scancel` or
Ctrl-C would) once it has logged step K; then how long it took to stop, which step its
checkpoint holds and how many steps the resumed run must redo.

    python benchmarks/preemption.py --config configs/student/vit_tiny.yaml --ranks 2 --at-step 30 \
        --set cache.path=cache/demo --out benchmarks/results/preemption.jsonl

Runs from the repository root; the run's folder is a fresh temporary one. A JSON record per
run (appended to --out): the step logged when the signal went, the checkpoint's step, the
steps lost (logged before the signal but not in the checkpoint: 0 means none), seconds from the
signal to the checkpoint's status line and to the last process's exit, and the launcher's
exit status. The signal is sent by polling metrics.jsonl: a benchmark's timing, not a test's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def logged_steps(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return steps


def session_alive(session: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == session:
                    return True
            except OSError:
                pass
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--stage", choices=("student", "teacher"), default="student")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--at-step", type=int, default=30)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    run = Path(tempfile.mkdtemp(prefix="preemption-")) / "run"
    script = REPO / "salt" / f"train_{args.stage}.py"
    sets = [*args.overrides, f"run.out_dir={run}", "run.log_every=1", "run.progress=false"]
    tail = ["--config", args.config, *[part for s in sets for part in ("--set", s)]]
    launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(args.ranks)]
    command = [*launcher, str(script), *tail] if args.ranks > 1 else [sys.executable, str(script), *tail]
    log = open(run.parent / "log.txt", "w")
    job = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    while not logged_steps(run) or max(logged_steps(run)) < args.at_step:
        if job.poll() is not None:
            raise SystemExit(f"the run ended before step {args.at_step}: {run.parent / 'log.txt'}")
        time.sleep(0.01)
    at_signal = max(logged_steps(run))
    sent = time.time()
    os.killpg(job.pid, signal.SIGTERM)
    code = job.wait()
    while session_alive(job.pid):
        time.sleep(0.01)
    gone = time.time()
    status = json.loads((run / "status.json").read_text())
    record = {
        "config": args.config,
        "stage": args.stage,
        "ranks": args.ranks,
        "overrides": args.overrides,
        "step_logged_at_signal": at_signal,
        "checkpoint_step": status.get("step"),
        "state": status["state"],
        "steps_lost": max(0, max(logged_steps(run)) - (status.get("step") or 0)),
        "signal_to_status_s": round(status["updated"] - sent, 2),
        "signal_to_exit_s": round(gone - sent, 2),
        "launcher_exit_status": code,
        "checkpoint_mb": round(
            sum(p.stat().st_size for p in (run / "checkpoints").rglob("*") if p.is_file()) / 2**20, 1
        ),
        "machine": os.uname().nodename,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(json.dumps(record))
    if args.out:
        with open(args.out, "a") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
