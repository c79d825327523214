"""`python -m salt.tools.replayed_student WINDOW --config … [--set …]`: `salt bench student`'s
in-memory reference, a mode the benchmark owns (no training setting carries it).

The student runs as `salt train-student` does, except that its batches come in windows of
WINDOW micro-batches: first WINDOW from the loader (each as it arrives), then the very same
WINDOW again from memory, and so on. Logged every WINDOW steps, consecutive records pair a
streamed window with its replay, so the machine's drifting load falls on both sides of every
pair (measured: it moved whole runs by ±25 % on a shared 2-core machine). Never resumed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator


def replay_windows(batches: Iterable, window: int) -> Iterator:
    """`window` batches as they arrive, then the same `window` again, then the next ones; ends
    with its input (a loader that stops or fails ends or fails this too)."""
    held = []
    for batch in batches:
        held.append(batch)
        yield batch
        if len(held) == window:
            yield from held
            held = []


def main(argv: list[str]) -> None:
    import salt.training.student as student

    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        raise SystemExit("usage: python -m salt.tools.replayed_student WINDOW --config … (WINDOW: steps, >= 1)")
    window, argv = int(argv[0]), argv[1:]
    make_loader = student.clip_loader

    def replaying_loader(*args, **kwargs):
        return replay_windows(make_loader(*args, **kwargs), window)

    student.clip_loader = replaying_loader
    student.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
