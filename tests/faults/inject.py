"""Run a `salt` command with a fault injected at a named point (for tests/faults):

    python -m tests.faults.inject FAULT salt-args...

kill-before-first-shard   SIGKILL when the first shard is about to be written (teacher ran)
kill-mid-shard            SIGKILL after a few members of a shard's tar (a partial .tar.tmp stays)
kill-in-manifest-write    SIGKILL while manifest.json is written (its half-written temp file stays)
signal-after-shard:SIG    SIG (SIGTERM, SIGINT, …) to this process as the first shard is complete and
                          handed to the writer, as a scheduler preempting the job
ray:SPEC                  faults inside the Ray engine's actors (tests/faults/ray_faults.py)
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    import salt.cache_latents.shards as shards

    if fault == "kill-before-first-shard":
        shards.store_shard = lambda *args, **kwargs: _die()
    elif fault == "kill-mid-shard":
        import tarfile

        real_addfile, members = tarfile.TarFile.addfile, [0]

        def addfile(self, *args, **kwargs):
            members[0] += 1
            if members[0] > 3:
                _die()
            return real_addfile(self, *args, **kwargs)

        tarfile.TarFile.addfile = addfile
    elif fault == "kill-in-manifest-write":
        import salt.cache_latents.merge as merge

        real_write = merge.write_json_atomic

        def write(path, obj):
            path = Path(path)
            if path.name == "manifest.json":
                text = json.dumps(obj)
                # What write_json_atomic leaves when killed inside json.dump: a partial temp file.
                (path.parent / ".manifest.json.killed.tmp").write_text(text[: len(text) // 2])
                _die()
            return real_write(path, obj)

        merge.write_json_atomic = write
    elif fault.startswith("signal-after-shard:"):
        real_commit, signum = shards.ShardAssembler._maybe_commit, signal.Signals[fault.partition(":")[2]]

        def commit(self, index):
            writes = len(self._writes)
            real_commit(self, index)
            if writes == 0 and len(self._writes) == 1:  # in the main thread: handled before the next video
                os.kill(os.getpid(), signum)

        shards.ShardAssembler._maybe_commit = commit
    elif fault.startswith("ray:"):
        from tests.faults import ray_faults

        ray_faults.install(fault[len("ray:") :])
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from salt.cli import run_cli

    sys.argv = ["salt", *sys.argv[2:]]
    run_cli()
