"""`salt reproduce`: the paper's claims at small scale, as a resumable chain of runs.

Every step of the chain is an ordinary `salt` command (make-synthetic, train-teacher,
cache-latents, train-student, probe) run as a subprocess with its log under `<out>/logs/`.
A step is finished when its marker `<out>/done/<step>` exists; a restart skips finished steps
and resumes an interrupted training run from its last checkpoint, so a long chain can be
stopped at any moment. Every encoder is probed by each protocol in `protocols` (linear and
attentive), from token maps computed once per encoder. At the end the claims table goes to
`<out>/claims.md` and `.json` (salt/claims.py: standard errors and verdicts).

Claims (docs/results.md, "Calibration" and "The claims at CPU scale"):
  calibration         random-init floor (several init seeds) vs. a supervised ceiling
  student_vs_teacher  the student's probe accuracy exceeds its teacher's
  matched_flops       SALT vs. the V-JEPA EMA baseline trained for the same FLOPs
  weak_teacher        a teacher with a fraction of the stage-1 steps, and its students
  random_teacher      control: students of a random-init frozen teacher (the floor's encoder)
  supervised_teacher  control: students of the frozen supervised ceiling (the most any
                      distillation of a teacher could transfer on this benchmark)
  views               students trained on the first K cached views per video
  dtype               students trained on int8 (or other) cached targets
  rank                smaller caches: a teacher's cache compacted to int8 at full rank and at
                      ranks D/2, D/4, D/8 (salt compact-cache), students of each (all seeds)
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Callable

from salt.config import ConfigError, load_config

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
RANK_TEACHERS = ("teacher", "weak_teacher", "random_teacher")
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


class ReproduceError(RuntimeError):
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


def _salt(*args: str) -> list[str]:
    return [sys.executable, "-m", "salt.cli", *args]


class Reproduction:
    """Builds the chain's steps from the config and the claims table from their outputs."""

    def __init__(self, cfg: ReproduceConfig, echo: Callable[[str], None] = print):
        self.cfg, self.echo = cfg, echo
        self.out = Path(cfg.out_dir)
        self.chain = Chain(self.out, echo)
        self.data = self.out / "data"

    # -- steps ---------------------------------------------------------------------------
    def _teacher_step(self, name: str, steps: int, objective: str = "pixels") -> Step:
        cfg, run_dir = self.cfg, self.out / name
        sets = [
            f"objective={objective}",
            f"data.train={self.data / 'train.csv'}",
            f"data.view.frames={cfg.frames}",
            f"data.view.frame_step={cfg.frame_step}",
            f"data.view.size={cfg.size}",
            f"data.batch_size={cfg.batch_size}",
            f"data.workers={cfg.workers}",
            f"encoder.arch={cfg.arch}",
            f"encoder.overrides.patch_size={cfg.patch_size}",
            f"optim.steps={steps}",
            f"optim.warmup_steps={max(1, steps // 15)}",
            f"optim.lr_peak={cfg.lr_peak}",
            f"run.out_dir={run_dir}",
            f"run.checkpoint_every={max(1, steps // 4)}",
        ]
        if objective == "supervised":  # what learned fastest from scratch (docs/results.md, "Calibration")
            sets += [
                "supervised.head=mean_pool",
                "optim.wd_start=0.05",
                "optim.wd_final=0.05",
                "optim.lr_peak=1e-3",
                "optim.betas=[0.9, 0.999]",
                "optim.grad_clip=0",
            ]
        return Step(name, _salt("train-teacher", "--config", cfg.teacher_config, *_sets(sets)), str(run_dir))

    def _student_sets(
        self, name: str, cache: Path, seed: int, steps: int, targets: str = "cache", views: int = 0
    ) -> list[str]:
        cfg = self.cfg
        return [
            f"targets={targets}",
            f"cache.path={cache}",
            f"cache.views={views}",
            f"geometry.frames={cfg.frames}",
            f"geometry.frame_step={cfg.frame_step}",
            f"geometry.size={cfg.size}",
            f"data.batch_size={cfg.batch_size}",
            f"data.workers={cfg.workers}",
            f"encoder.arch={cfg.arch}",
            f"encoder.overrides.patch_size={cfg.patch_size}",
            f"optim.steps={steps}",
            f"optim.warmup_steps={max(1, steps // 15)}",
            f"optim.lr_peak={cfg.lr_peak}",
            f"run.seed={seed}",
            f"run.out_dir={self.out / name}",
            f"run.checkpoint_every={max(1, steps // 4)}",
        ]

    def _student_step(
        self, name: str, cache: Path, seed: int, steps: int, targets: str = "cache", views: int = 0
    ) -> Step:
        sets = self._student_sets(name, cache, seed, steps, targets, views)
        return Step(
            name, _salt("train-student", "--config", self.cfg.student_config, *_sets(sets)), str(self.out / name)
        )

    def _cache_step(self, name: str, teacher: Path, views: int, dtype: str = "fp16") -> Step:
        cfg = self.cfg
        return Step(
            f"{name}_views{views}",
            _salt(
                "cache-latents",
                "--teacher",
                str(teacher),
                "--data",
                str(self.data / "train.csv"),
                "--out",
                str(self.out / name),
                "--views",
                str(views),
                "--dtype",
                dtype,
                "--frames",
                str(cfg.frames),
                "--frame-step",
                str(cfg.frame_step),
                "--size",
                str(cfg.size),
                "--batch-size",
                str(cfg.batch_size),
                "--workers",
                str(cfg.workers),
                "--shard-videos",
                str(cfg.shard_videos),
                "--no-progress",
            ),
        )

    def _probe_steps(self, name: str, encoder: Path | None, seed: int = 0) -> list[Step]:
        """One probe per protocol; they share the encoder's stored token maps (`--work-dir`)."""
        cfg = self.cfg
        steps = []
        for protocol in cfg.protocols:
            argv = _salt(
                "probe",
                "--train",
                str(self.data / "train.csv"),
                "--val",
                str(self.data / "val.csv"),
                "--config",
                cfg.probe_config,
                "--protocol",
                protocol,
                "--work-dir",
                str(self.out / "features" / name),
                *_sets([f"head_depth={cfg.probe_head_depth}", *cfg.probe_overrides]),
                "--out",
                str(self.out / "probes" / f"{name}.{protocol}.json"),
            )
            if encoder is None:  # a random-init encoder, the floor (kept in its work dir)
                argv += ["--random-init", cfg.arch, *self._arch_args(), "--set", f"seed={seed}"]
            else:
                argv += ["--encoder", str(encoder)]
            steps.append(Step(f"probe_{name}_{protocol}", argv))
        return steps

    def _arch_args(self) -> list[str]:
        cfg = self.cfg
        return [
            "--arch",
            f"img_size={cfg.size}",
            "--arch",
            f"num_frames={cfg.frames}",
            "--arch",
            f"patch_size={cfg.patch_size}",
        ]

    def floor_encoder(self, seed: int) -> Path:
        """The random-init encoder `salt probe --random-init` probed (and kept in its work dir)."""
        return self.out / "features" / f"floor_seed{seed}" / f"random_{self.cfg.arch}_seed{seed}.pt"

    def _probe(self, name: str, encoder: Path | None, seed: int = 0) -> None:
        for step in self._probe_steps(name, encoder, seed):
            self.chain.run(step)

    def _train_and_probe(self, step: Step, export: str) -> None:
        self.chain.run(step)
        self._probe(step.name, self.out / step.name / export)

    def run(self) -> dict:
        cfg, chain = self.cfg, self.chain
        (self.out / "probes").mkdir(parents=True, exist_ok=True)
        chain.run(
            Step(
                "data",
                _salt(
                    "make-synthetic",
                    "--out",
                    str(self.data),
                    "--videos",
                    str(cfg.data.videos),
                    "--size",
                    str(cfg.data.size),
                    "--seed",
                    str(cfg.data.seed),
                    "--motion",
                    str(cfg.data.motion),
                    "--tubelet",
                    str(cfg.data.tubelet),
                    "--waves",
                    str(cfg.data.waves),
                    "--blobs",
                    str(cfg.data.blobs),
                    "--frames",
                    str(cfg.frames),
                    "--frame-step",
                    str(cfg.frame_step),
                ),
            )
        )
        claims = set(cfg.claims)
        if claims & {"calibration", "random_teacher"}:
            for seed in cfg.floor_seeds:
                self._probe(f"floor_seed{seed}", None, seed)
        if "calibration" in claims:
            self._train_and_probe(self._teacher_step("supervised", cfg.supervised_steps, "supervised"), "supervised.pt")
        if claims & {"student_vs_teacher", "matched_flops", "views", "dtype"}:
            self._teacher_and_students("teacher", cfg.teacher_steps)
        if "matched_flops" in claims:
            ema_steps = self.matched_ema_steps()
            for seed in cfg.seeds:
                ema = self._student_step(f"ema_seed{seed}", self.out / "cache", seed, ema_steps, "ema", views=cfg.views)
                self._train_and_probe(ema, "student.pt")  # the same cached frames as SALT's students
        if "weak_teacher" in claims:
            self._teacher_and_students("weak_teacher", max(1, round(cfg.teacher_steps * cfg.weak_fraction)))
        if "random_teacher" in claims:  # the floor's first encoder, frozen, as the teacher
            self._students("random_teacher", self.floor_encoder(cfg.floor_seeds[0]))
        if "supervised_teacher" in claims:
            self._train_and_probe(self._teacher_step("supervised", cfg.supervised_steps, "supervised"), "supervised.pt")
            self._students("supervised", self.out / "supervised" / "supervised.pt")
        if "views" in claims:
            for views in sorted(set(cfg.views_sweep)):
                if views == cfg.views:
                    continue  # the main students are this row
                self._grow_cache(self.out / "teacher" / "teacher.pt", "cache", views)
                self._train_and_probe(
                    self._student_step(
                        f"student_views{views}", self.out / "cache", cfg.seeds[0], cfg.student_steps, views=views
                    ),
                    "student.pt",
                )
        if "dtype" in claims:
            for dtype in cfg.dtypes:
                chain.run(self._cache_step(f"cache_{dtype}", self.out / "teacher" / "teacher.pt", cfg.views, dtype))
                self._train_and_probe(
                    self._student_step(
                        f"student_{dtype}", self.out / f"cache_{dtype}", cfg.seeds[0], cfg.student_steps
                    ),
                    "student.pt",
                )
        if "rank" in claims:
            teacher = (
                self.floor_encoder(cfg.floor_seeds[0])
                if cfg.rank_teacher == "random_teacher"
                else self.out / cfg.rank_teacher / "teacher.pt"
            )
            if cfg.rank_teacher != "random_teacher":
                self._train_and_probe(
                    self._teacher_step(cfg.rank_teacher, self._teacher_steps(cfg.rank_teacher)), "teacher.pt"
                )
            elif not teacher.exists():
                self._probe(f"floor_seed{cfg.floor_seeds[0]}", None, cfg.floor_seeds[0])
            self._students(cfg.rank_teacher, teacher)  # the fp16 full-rank row (kept steps are skipped)
            source = self._cache_dir(cfg.rank_teacher)
            for label, rank in self.rank_variants():
                chain.run(
                    Step(
                        f"compact_{source.name}_{label}",
                        _salt(
                            "compact-cache",
                            str(source),
                            "--out",
                            f"{source}_{label}",
                            "--rank",
                            str(rank),
                            "--dtype",
                            cfg.rank_dtype,
                            "--no-progress",
                        ),
                    )
                )
            for seed in cfg.seeds:  # seed by seed: a chain stopped early still has one run of every row
                for label, _ in self.rank_variants():
                    self._train_and_probe(
                        self._student_step(
                            f"{self._student_prefix(cfg.rank_teacher)}_{label}_seed{seed}",
                            Path(f"{source}_{label}"),
                            seed,
                            cfg.student_steps,
                            views=cfg.views,
                        ),
                        "student.pt",
                    )
        return self.write_table()

    def _teacher_steps(self, name: str) -> int:
        return (
            self.cfg.teacher_steps
            if name == "teacher"
            else max(1, round(self.cfg.teacher_steps * self.cfg.weak_fraction))
        )

    def _cache_dir(self, teacher: str) -> Path:
        return self.out / ("cache" if teacher == "teacher" else f"cache_{teacher}")

    @staticmethod
    def _student_prefix(teacher: str) -> str:
        return "student" if teacher == "teacher" else f"{teacher}_student"

    def rank_variants(self) -> list[tuple[str, int]]:
        """(label, rank) of the compacted caches: full rank (0) and R = D / divisor."""
        dim = self._teacher_dim()
        return [(f"{self.cfg.rank_dtype}_full", 0)] + [
            (f"{self.cfg.rank_dtype}_rank{dim // d}", dim // d)
            for d in sorted(set(self.cfg.rank_divisors))
            if dim // d >= 1
        ]

    def _teacher_dim(self) -> int:
        from salt.models import resolve_arch

        teacher, _ = self._configs("cache", 1)
        return resolve_arch(
            teacher.encoder.arch, img_size=self.cfg.size, num_frames=self.cfg.frames, **teacher.encoder.overrides
        )["embed_dim"]

    def _grow_cache(self, teacher: Path, name: str, views: int) -> None:
        """Grow the cache one view count at a time, so each K is a set of whole shards."""
        for k in sorted({*(v for v in self.cfg.views_sweep if v <= views), views}):
            self.chain.run(self._cache_step(name, teacher, k))

    def _teacher_and_students(self, name: str, steps: int) -> None:
        self._train_and_probe(self._teacher_step(name, steps), "teacher.pt")
        self._students(name, self.out / name / "teacher.pt")

    def _students(self, name: str, teacher: Path) -> None:
        cache = self._cache_dir(name).name
        self._grow_cache(teacher, cache, self.cfg.views)
        prefix = self._student_prefix(name)
        for seed in self.cfg.seeds:
            self._train_and_probe(
                self._student_step(
                    f"{prefix}_seed{seed}", self.out / cache, seed, self.cfg.student_steps, views=self.cfg.views
                ),
                "student.pt",
            )

    # -- FLOPs -----------------------------------------------------------------------------
    def _configs(self, targets: str, steps: int):
        from salt.training.config import StudentConfig, TeacherConfig

        teacher = load_config(
            TeacherConfig,
            self.cfg.teacher_config,
            [
                f"data.view.frames={self.cfg.frames}",
                f"data.view.size={self.cfg.size}",
                f"data.batch_size={self.cfg.batch_size}",
                f"encoder.arch={self.cfg.arch}",
                f"encoder.overrides.patch_size={self.cfg.patch_size}",
            ],
        )
        student = load_config(
            StudentConfig, self.cfg.student_config, self._student_sets("flops", self.out / "cache", 0, steps, targets)
        )
        return teacher, student

    def planned_flops(self, targets: str, teacher_steps: int, student_steps: int) -> float:
        """torch-counter FLOPs (the unit of the runs' metrics) of a chain row, from the planner."""
        from salt.flops import plan

        teacher, student = self._configs(targets, student_steps)
        batch = self.cfg.batch_size
        return plan(teacher if teacher_steps else None, student, teacher_steps, student_steps, batch, batch)[
            "counted_total"
        ]

    def matched_ema_steps(self) -> int:
        """EMA steps whose FLOPs equal SALT's with the teacher forward counted online."""
        salt_total = self.planned_flops("teacher", self.cfg.teacher_steps, self.cfg.student_steps)
        return max(1, round(salt_total / self.planned_flops("ema", 0, 1)))

    def teacher_forward_per_clip(self) -> float:
        """torch-counter FLOPs of one frozen teacher forward: per student clip online, per view cached."""
        from salt.flops import frozen_forward_part
        from salt.models import resolve_arch

        teacher, _ = self._configs("cache", 1)
        arch = resolve_arch(
            teacher.encoder.arch, img_size=self.cfg.size, num_frames=self.cfg.frames, **teacher.encoder.overrides
        )
        return frozen_forward_part("1b cache", "teacher forward", arch, self.cfg.frames, self.cfg.size, clips=1).counted

    # -- table ------------------------------------------------------------------------------
    def _probe_records(self, names: list[str]) -> dict[str, dict[str, dict]]:
        records = {}
        for name in names:
            for protocol in self.cfg.protocols:
                path = self.out / "probes" / f"{name}.{protocol}.json"
                if path.exists():
                    records.setdefault(name, {})[protocol] = json.loads(path.read_text())
        return records

    def _measured_flops(self, name: str) -> float:
        path = self.out / name / "metrics.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return json.loads(lines[-1]).get("flops", 0.0) if lines else 0.0

    def _train_videos(self) -> int:
        return sum(1 for line in (self.data / "train.csv").read_text().splitlines() if line.strip())

    def _cache_size(self, cache: Path) -> dict | None:
        path = cache / "manifest.json"
        if not path.exists():
            return None
        m = json.loads(path.read_text())
        views = max(m["sample_count"], 1)
        return {
            "latent_kb": m["latent_bytes"] / views / 1e3,
            "frame_kb": m["frame_bytes"] / views / 1e3,
            "dtype": m["latent_dtype"],
            "rank": m.get("target_rank", 0),
            "dim": m["dim"],
            "explained": (m.get("basis") or {}).get("explained", 1.0),
        }

    def _add_rank_rows(self, add, rows: list[dict]) -> None:
        """The compacted caches' students, each row with its cache's bytes per view; the fp16
        full-rank row of the same teacher is the reference (it carries its bytes too)."""
        teacher = self.cfg.rank_teacher
        label = _teacher_label(teacher)
        prefix, source = self._student_prefix(teacher), self._cache_dir(teacher)
        for row in rows:
            if row["row"] == f"SALT student of the {label}":
                row["cache"] = self._cache_size(source)
        for variant, rank in self.rank_variants():
            before = len(rows)
            name = f"SALT student of the {label}, {self.cfg.rank_dtype} " + (f"rank {rank}" if rank else "full rank")
            add("rank", name, [f"{prefix}_{variant}_seed{seed}" for seed in self.cfg.seeds])
            if len(rows) > before:
                rows[-1]["cache"] = self._cache_size(self.out / f"{source.name}_{variant}")

    def write_table(self) -> dict:
        from salt.claims import format_table, row, verdicts

        cfg, rows = self.cfg, []
        teacher_forward = self.teacher_forward_per_clip()

        def add(
            group: str, name: str, runs: list[str], flops_online: float | None = None, flops_cache: float | None = None
        ):
            measured = mean(self._measured_flops(n) for n in runs)
            found = row(
                group,
                name,
                runs,
                self._probe_records(runs),
                flops_online if flops_online is not None else measured,
                flops_cache,
            )
            if found is not None:
                rows.append(found)

        add("calibration", "random-init floor", [f"floor_seed{s}" for s in cfg.floor_seeds], 0.0)
        add("calibration", "supervised ceiling", ["supervised"])
        for teacher in ("teacher", "weak_teacher", "random_teacher", "supervised"):
            prefix, label = self._student_prefix(teacher), _teacher_label(teacher)
            teacher_flops = self._measured_flops(teacher)  # 0 for the random-init teacher: it never trained
            if teacher in ("teacher", "weak_teacher"):  # the random-init and supervised encoders are rows above
                add(teacher, f"{label} (pixels)", [teacher], teacher_flops)
            students = [f"{prefix}_seed{s}" for s in cfg.seeds]
            if self._probe_records(students):
                trained = mean(self._measured_flops(n) for n in students)
                online = teacher_flops + trained + teacher_forward * cfg.batch_size * cfg.student_steps
                cached = teacher_flops + trained + teacher_forward * cfg.views * self._train_videos()
                add(teacher, f"SALT student of the {label}", students, online, cached)
        add("matched_flops", "V-JEPA EMA baseline (same FLOPs as SALT online)", [f"ema_seed{s}" for s in cfg.seeds])
        for views in sorted(set(cfg.views_sweep) - {cfg.views}):
            add("views", f"SALT student, K = {views} views per video", [f"student_views{views}"])
        for dtype in cfg.dtypes:
            add("dtype", f"SALT student, {dtype} targets", [f"student_{dtype}"])
        if "rank" in cfg.claims:
            self._add_rank_rows(add, rows)
        classes = len(json.loads((self.data / "synthetic.json").read_text())["classes"])
        result = {"config": asdict(cfg), "rows": rows, "verdicts": verdicts(rows, 1 / classes)}
        if "rank" in cfg.claims:
            from salt.claims import rank_verdicts

            label = _teacher_label(cfg.rank_teacher)
            result["verdicts"] += rank_verdicts(rows, f"SALT student of the {label}")
        (self.out / "claims.json").write_text(json.dumps(result, indent=2) + "\n")
        (self.out / "claims.md").write_text(format_table(result))
        return result


def _teacher_label(teacher: str) -> str:
    """How the table names a teacher of the chain ("random_teacher" → "random-init teacher")."""
    return {"random_teacher": "random-init teacher", "supervised": "supervised teacher"}.get(
        teacher, teacher.replace("_", " ")
    )


def _sets(pairs: list[str]) -> list[str]:
    return [item for pair in pairs for item in ("--set", pair)]


def reproduce(config_path: str | None, overrides: list[str], echo: Callable[[str], None] = print) -> dict:
    cfg = load_config(ReproduceConfig, config_path, overrides)
    try:
        cfg.validate()
    except ValueError as err:
        raise ConfigError(f"{config_path or '<defaults>'}: {err}") from None
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return Reproduction(cfg, echo).run()
