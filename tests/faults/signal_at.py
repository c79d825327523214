"""A training stage that signals itself at a named step, injected from outside the package
(for tests/faults/test_preemption.py), the way a scheduler preempts a job:

    SIGNAL_AT=SIGTERM@7 python tests/faults/signal_at.py --config …
    SIGNAL_AT=SIGINT@7:group deepspeed --num_gpus 2 tests/faults/signal_at.py --config …
    SIGNAL_STAGE=teacher SIGNAL_AT=… python tests/faults/signal_at.py --config …   (default: student)

Rank 0 sends the signal as step 7 (0-based) starts: to itself (default) or to its whole process
group (`:group`: the launcher, every rank and their workers, as `scancel` or a Kubernetes
eviction would). The step in progress completes; the run must stop after it (step 8).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def install(spec: str) -> None:
    from salt.training import loop

    name, _, rest = spec.partition("@")
    step_text, _, target = rest.partition(":")
    at, signum = int(step_text), signal.Signals[name]
    real_step = loop.train_step
    sent = []

    def train_step(engine, micro_batches, window, bad_videos, flops, folder, step, samples):
        if step == at and not sent and os.environ.get("RANK", "0") == "0":
            sent.append(step)
            if target == "group":
                os.killpg(os.getpgid(0), signum)
            else:
                os.kill(os.getpid(), signum)
        return real_step(engine, micro_batches, window, bad_videos, flops, folder, step, samples)

    loop.train_step = train_step


if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository, not tests/faults/
    install(os.environ["SIGNAL_AT"])
    if os.environ.get("SIGNAL_STAGE") == "teacher":
        from salt.training.teacher import main
    else:
        from salt.training.student import main
    main()
