"""The chain `salt reproduce` runs: its config, and the runner that runs `salt` steps in order,
keeps finished ones (a marker in `<out>/done/`) and resumes an interrupted training step."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from salt.errors import UserError

CLAIMS = (
    "calibration",
    "student_vs_teacher",
    "matched_flops",
    "weak_teacher",
    "random_teacher",
    "supervised_teacher",
    "views",
    "dtype",
    "rank",
)
RANK_TEACHERS = ("teacher", "weak_teacher", "random_teacher", "supervised")
PROTOCOLS = ("linear", "attentive")


@dataclass
class SyntheticSetConfig:
    videos: int = 2000
    size: int = 40  # stored videos; clips are cropped from them to `size` below
    seed: int = 3
    motion: float = 1.0  # salt make-synthetic --motion
    tubelet: int = 1  # clip frames the scene holds still (1: motion visible inside a tubelet of 2)
    waves: int = 2  # sinusoids per scene texture
    blobs: int = 0
    val_fraction: float = 0.25  # share of the videos in val.csv (a larger val set: smaller probe errors)


@dataclass
class ReproduceConfig:
    out_dir: str = "runs/reproduce"
    data: SyntheticSetConfig = field(default_factory=SyntheticSetConfig)
    frames: int = 8
    frame_step: int = 4
    size: int = 32
    arch: str = "vit_tiny"  # teacher, student, EMA baseline and supervised ceiling alike
    patch_size: int = 8  # 32² clips at patch 8: 4×4×4 = 64 tokens
    batch_size: int = 64
    workers: int = 2
    lr_peak: float = 1.5e-3
    supervised_steps: int = 1500
    teacher_steps: int = 2000
    student_steps: int = 2000
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # student / EMA training seeds
    floor_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # random-init encoders
    views: int = 4  # cached views per video for the main students
    weak_fraction: float = 0.25  # weak teacher: this share of teacher_steps
    views_sweep: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    dtypes: list[str] = field(default_factory=lambda: ["int8"])  # besides the main cache's fp16
    # claim "rank": whose cache is compacted (the random-init teacher's students are the ones
    # that rose above the floor in the CPU chain), to which dtype, and R = D / divisor.
    rank_teacher: str = "random_teacher"
    rank_dtype: str = "int8"
    rank_divisors: list[int] = field(default_factory=lambda: [2, 4, 8])
    claims: list[str] = field(default_factory=lambda: list(CLAIMS))
    probe_config: str = "configs/probe/demo.yaml"
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    probe_head_depth: int = 0  # attentive protocol: no self-attention in the probe
    probe_overrides: list[str] = field(default_factory=list)  # KEY=VALUE for the probe config
    shard_videos: int = 32  # videos per cache shard (a student needs >= workers shards)
    teacher_config: str = "configs/teacher/vit_tiny.yaml"
    student_config: str = "configs/student/vit_tiny.yaml"

    def validate(self) -> None:
        unknown = [c for c in self.claims if c not in CLAIMS]
        if unknown:
            raise ValueError(f"claims: unknown {unknown}; choose from {list(CLAIMS)}")
        if not self.seeds or not self.floor_seeds:
            raise ValueError("seeds and floor_seeds need at least one seed each")
        if min([self.teacher_steps, self.student_steps, self.supervised_steps, self.views, *self.views_sweep]) < 1:
            raise ValueError("steps and views must be >= 1")
        if not 0 < self.weak_fraction < 1:
            raise ValueError("weak_fraction must lie in (0, 1)")
        if self.rank_teacher not in RANK_TEACHERS or any(d < 2 for d in self.rank_divisors):
            raise ValueError(f"rank_teacher: one of {list(RANK_TEACHERS)}; rank_divisors: integers >= 2")
        if not self.protocols or set(self.protocols) - set(PROTOCOLS):
            raise ValueError(f"protocols: choose one or more of {list(PROTOCOLS)}, got {self.protocols}")


@dataclass
class Step:
    name: str
    argv: list[str]
    run_dir: str = ""  # a training run: resumed from its checkpoint after an interruption


class ReproduceError(UserError, RuntimeError):
    pass


class Chain:
    """Runs steps in order; a step whose marker exists is skipped."""

    def __init__(self, out: Path, echo: Callable[[str], None] = print):
        self.out, self.echo = out, echo
        (out / "done").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(exist_ok=True)

    def done(self, name: str) -> bool:
        return (self.out / "done" / name).exists()

    def run(self, step: Step) -> None:
        if self.done(step.name):
            self.echo(f"  kept     {step.name}")
            return
        argv = list(step.argv)
        if (
            step.run_dir and (Path(step.run_dir) / "config.yaml").exists()
        ):  # started: resume (from step 0 if nothing was committed)
            argv.append("--resume")
        log = self.out / "logs" / f"{step.name}.log"
        started = time.perf_counter()
        self.echo(f"  running  {step.name}: {shlex.join(argv)}")
        with open(log, "a") as handle:
            handle.write(f"$ {shlex.join(argv)}\n")
            handle.flush()
            code = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, env=step_environment()).returncode
        if code != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise ReproduceError(
                f"step {step.name} failed (exit {code}); the log is {log}. Its end:\n{tail}\n"
                "Fix the cause and run the same command again: finished steps are kept."
            )
        seconds = time.perf_counter() - started
        (self.out / "done" / step.name).write_text(json.dumps({"argv": argv, "seconds": seconds}) + "\n")
        self.echo(f"  finished {step.name} in {seconds:.0f} s")


# Each step is a single-process run of its own: a rank or rendezvous inherited from the caller
# (a SLURM job, or a process that already formed a group of one) would make it join that group.
_DISTRIBUTED_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def step_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_VARIABLES}
