"""A training stage with faults injected from outside the package, at named steps (for
tests/faults/test_preemption.py, test_full_disk.py and test_kill.py):

    SIGNAL_AT=SIGTERM@7 python tests/faults/train_with.py --config …
    SIGNAL_AT=SIGTERM@7:group deepspeed --num_gpus 2 tests/faults/train_with.py --config …
    TRAIN_STAGE=teacher SIGNAL_AT=SIGINT@3 python tests/faults/train_with.py --config …   (default: student)

SIGNAL_AT=SIG@K[:group|:parent]  rank 0 sends SIG as step K (0-based) starts: to itself, to its
                         whole process group (the launcher, every rank and their workers, as
                         `scancel` or Ctrl-C would), or to its parent (the launcher alone, as a
                         container's init or a batch script passes the signal on). The step in
                         progress completes; the run must stop after it (step K+1).
PAUSE_AT=K:FILE          rank 0 writes FILE.paused as step K starts and waits until FILE exists
                         (a live run for a second trainer to meet).
NO_SPACE_AT=K@RANK       rank RANK's DeepSpeed files of checkpoint stepK fail with ENOSPC, as a full
                         disk under that rank's writes.
TRACE_KEYS=FOLDER        every rank appends the keys of each micro-batch it trains on to
                         FOLDER/rank{RANK}.jsonl as {"micro_step", "keys"}.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RANK = os.environ.get("RANK", "0")


def _at_step(step_hook) -> None:
    """Call `step_hook(step)` as each micro-step of the loop starts."""
    from salt.training import loop

    real_step = loop.train_step

    def train_step(engine, micro_batches, window, bad_videos, flops, folder, step, samples):
        step_hook(step)
        return real_step(engine, micro_batches, window, bad_videos, flops, folder, step, samples)

    loop.train_step = train_step


def signal_at(spec: str) -> None:
    name, _, rest = spec.partition("@")
    step_text, _, target = rest.partition(":")
    at, signum, sent = int(step_text), signal.Signals[name], []

    def hook(step: int) -> None:
        if step == at and not sent and RANK == "0":
            sent.append(step)
            if target == "group":  # sent by another process, as a scheduler would (kill(1), not this rank)
                kill = ["kill", f"-{signum.name}", "--", f"-{os.getpgid(0)}"]
                sender = subprocess.run(kill, start_new_session=True)  # itself outside the group
                # Still this rank's child, the sender may be in the tree the launcher signals once
                # it has the signal: dying of it means the signal went out.
                if sender.returncode not in (0, -signum):
                    raise RuntimeError(f"{kill} exited with status {sender.returncode}")
            else:
                os.kill(os.getppid() if target == "parent" else os.getpid(), signum)

    _at_step(hook)


def pause_at(spec: str) -> None:
    step_text, _, gate = spec.partition(":")
    at, paused = int(step_text), []

    def hook(step: int) -> None:
        if step == at and not paused and RANK == "0":
            paused.append(step)
            Path(gate + ".paused").touch()
            deadline = time.monotonic() + 300  # a bound, in case the test that opens the gate died
            while not Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.05)

    _at_step(hook)


def no_space_at(spec: str) -> None:
    import torch

    step_text, _, rank = spec.partition("@")
    real_save, tag = torch.save, f"step{step_text}"

    def save(obj, f, *args, **kwargs):
        path = str(f)
        if RANK == rank and Path(path).parent.name == tag and path.endswith("optim_states.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save


def trace_keys(folder: str) -> None:
    """Logged in the training process, as each micro-batch is fetched (`Window.timed(next, …)`)."""
    from salt.training.metrics import Window

    real_timed = Window.timed

    def timed(self, fetch, *args):
        batch = real_timed(self, fetch, *args)
        with open(Path(folder) / f"rank{RANK}.jsonl", "a") as handle:
            handle.write(json.dumps({"micro_step": batch.micro_step, "keys": batch.keys}) + "\n")
        return batch

    Window.timed = timed


if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository, not tests/faults/
    for variable, install in (
        ("SIGNAL_AT", signal_at),
        ("PAUSE_AT", pause_at),
        ("NO_SPACE_AT", no_space_at),
        ("TRACE_KEYS", trace_keys),
    ):
        if os.environ.get(variable):
            install(os.environ[variable])
    if os.environ.get("TRAIN_STAGE") == "teacher":
        from salt.training.teacher import main
    else:
        from salt.training.student import main
    main()
