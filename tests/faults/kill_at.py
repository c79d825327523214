"""The student with rank 0 SIGKILLed at a named point of `checkpointing.save`, injected from
outside the package (for tests/faults/test_kill.py):

    KILL_AT=POINT@STEP python tests/faults/kill_at.py --config …          (one process)
    KILL_AT=POINT@STEP deepspeed --num_gpus 2 tests/faults/kill_at.py --config …

after-deepspeed-files   every rank's DeepSpeed files of stepSTEP are flushed; no run state yet
after-run-state         stepSTEP/salt_run_state.json is committed; `latest` still names the one before
after-pointer           `latest` names stepSTEP; older checkpoints are not deleted yet
mid-deletion            an older checkpoint's run state and half of its files are deleted
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

POINTS = ("after-deepspeed-files", "after-run-state", "after-pointer", "mid-deletion")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, step: int) -> None:
    """Wrap the save sequence's own steps (module globals `save` looks up at each call)."""
    from salt.training import checkpointing

    if point not in POINTS:
        raise SystemExit(f"KILL_AT: unknown point {point!r}; choose from {POINTS}")
    tag = f"step{step}"
    fsync_tree, write_atomic, retract = checkpointing._fsync_tree, checkpointing.write_atomic, checkpointing._retract
    committed = []  # `latest` named the target: what follows is the deletion of older ones

    def rank0() -> bool:
        return os.environ.get("RANK", "0") == "0"

    def flushed(folder: Path) -> None:
        fsync_tree(folder)
        if point == "after-deepspeed-files" and folder.name == tag and rank0():
            _die()

    def written(path: Path, text: str) -> None:
        write_atomic(path, text)
        if path.name == checkpointing.RUN_STATE and path.parent.name == tag and point == "after-run-state":
            _die()
        if path.name == checkpointing.POINTER and text == tag:
            committed.append(tag)
            if point == "after-pointer":
                _die()

    def retracted(folder: Path) -> None:
        retract(folder)
        if point == "mid-deletion" and committed and folder.name != tag and rank0():
            files = sorted(p for p in folder.rglob("*") if p.is_file())
            for path in files[: max(1, len(files) // 2)]:  # half-way through: some weights gone too
                path.unlink()
            _die()

    checkpointing._fsync_tree, checkpointing.write_atomic, checkpointing._retract = flushed, written, retracted


if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[2])  # the repository, not tests/faults/
    point, _, step = os.environ["KILL_AT"].partition("@")
    install(point, int(step))
    from salt.training.student import main

    main()
