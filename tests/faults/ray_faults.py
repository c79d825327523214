"""Faults inside the Ray engine's actors, injected from the driver (`python -m tests.faults.inject
ray:SPEC salt cache-latents --engine ray …`). SPEC is comma-separated:

    decode@VIDEO:MARK    SIGKILL the decode actor that meets VIDEO, once (MARK records that it fired)
    teacher@VIDEO:MARK   SIGKILL the teacher actor whose batch holds VIDEO, once
    decoders@N:DIR       every decoder holds its first video until N decoders have started (each
                         leaves a file in DIR), so that work reaches every node deterministically

The actors are subclasses of the engine's own, sent to the workers by value (this module is not
importable there), so the production actors carry no fault code.
"""

from __future__ import annotations

import os
import signal
import time

GATE_BOUND_S = 240  # a gate that never opens lets the run go on (and the test that set it fail) rather than hang


def parse(spec: str) -> list[tuple[str, int, str]]:
    faults = []
    for item in filter(None, spec.split(",")):
        name, _, rest = item.partition("@")
        number, _, path = rest.partition(":")
        if name not in ("decode", "teacher", "decoders") or not number.isdigit() or not path:
            raise SystemExit(f"ray fault {item!r}: expected decode@VIDEO:MARK, teacher@VIDEO:MARK or decoders@N:DIR")
        faults.append((name, int(number), path))
    return faults


def kill_once(stage: str, faults: list[tuple[str, int, str]], videos) -> None:
    """SIGKILL this worker when it meets a video named for its stage, unless it did already."""
    for name, video, mark in faults:
        if name != stage or video not in {int(v) for v in videos}:
            continue
        try:
            os.close(os.open(mark, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        os.kill(os.getpid(), signal.SIGKILL)


def install(spec: str) -> None:
    """Replace the engine's actors (looked up by `run_ray` at each run) with faulty subclasses."""
    import sys

    import ray.cloudpickle

    from salt.cache_latents import ray_engine

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    faults = parse(spec)

    class FaultyDecodeVideo(ray_engine.DecodeVideo):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.gates = [(count, folder) for name, count, folder in faults if name == "decoders"]
            for _, folder in self.gates:  # this decoder has started
                os.makedirs(folder, exist_ok=True)
                open(os.path.join(folder, f"{self.node}-{os.getpid()}"), "w").close()

        def __call__(self, batch: dict) -> dict:
            deadline = time.monotonic() + GATE_BOUND_S
            for count, folder in self.gates:
                while len(os.listdir(folder)) < count and time.monotonic() < deadline:
                    time.sleep(0.1)
            self.gates = []
            kill_once("decode", faults, batch["video"])
            return super().__call__(batch)

    class FaultyTeacherActor(ray_engine.TeacherActor):
        def __call__(self, batch: dict) -> dict:
            kill_once("teacher", faults, batch["video"])
            return super().__call__(batch)

    ray_engine.DecodeVideo, ray_engine.TeacherActor = FaultyDecodeVideo, FaultyTeacherActor
