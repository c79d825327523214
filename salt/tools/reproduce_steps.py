"""The steps of `salt reproduce`'s chain: names, folders, each step's `salt` argv, and the
FLOPs the planner gives each row (to match the EMA baseline's budget and to table the rows)."""

from __future__ import annotations

import functools
from pathlib import Path

from salt.config import load_config
from salt.tools.reproduce_chain import ReproduceConfig, Step
from salt.tools.run_records import salt_command


def _options(**values) -> list[str]:
    """`--name value` pairs (underscores become dashes); True is a bare flag, None is left out."""
    argv = []
    for name, value in values.items():
        if value is None or value is False:
            continue
        argv += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return argv


def _sets(pairs: list[str]) -> list[str]:
    return [item for pair in pairs for item in ("--set", pair)]


HELDOUT_VIDEOS = 512  # val videos the students are scored on against the fp16 targets (one view each)


class ChainPlan:
    """Names, folders and the argv of every step of the chain, and its planned FLOPs."""

    def __init__(self, cfg: ReproduceConfig):
        self.cfg, self.out = cfg, Path(cfg.out_dir)
        self.data = self.out / "data"

    # -- names and folders -------------------------------------------------------------------
    def teacher_steps(self, name: str) -> int:
        cfg = self.cfg
        return cfg.teacher_steps if name == "teacher" else max(1, round(cfg.teacher_steps * cfg.weak_fraction))

    def cache_dir(self, teacher: str) -> Path:
        return self.out / ("cache" if teacher == "teacher" else f"cache_{teacher}")

    @staticmethod
    def student_prefix(teacher: str) -> str:
        return "student" if teacher == "teacher" else f"{teacher}_student"

    def floor_encoder(self, seed: int) -> Path:
        """The random-init encoder `salt probe --random-init` probed (and kept in its work dir)."""
        return self.out / "features" / f"floor_seed{seed}" / f"random_{self.cfg.arch}_seed{seed}.pt"

    def rank_variants(self) -> list[tuple[str, int]]:
        """(label, rank) of the compacted caches: full rank (0) and R = D / divisor."""
        dim, dtype = self.teacher_arch["embed_dim"], self.cfg.rank_dtype
        divisors = sorted(set(self.cfg.rank_divisors))
        return [(f"{dtype}_full", 0)] + [(f"{dtype}_rank{dim // d}", dim // d) for d in divisors if dim // d >= 1]

    # -- steps -------------------------------------------------------------------------------
    def data_step(self) -> Step:
        cfg, data = self.cfg, self.cfg.data
        options = _options(
            out=self.data,
            videos=data.videos,
            size=data.size,
            seed=data.seed,
            motion=data.motion,
            tubelet=data.tubelet,
            waves=data.waves,
            blobs=data.blobs,
            val_fraction=data.val_fraction,
            frames=cfg.frames,
            frame_step=cfg.frame_step,
        )
        return Step("data", salt_command("make-synthetic", *options))

    def teacher_step(self, name: str, steps: int, objective: str = "pixels") -> Step:
        cfg, run_dir = self.cfg, self.out / name
        sets = [
            f"objective={objective}",
            f"data.train={self.data / 'train.csv'}",
            f"data.view.frames={cfg.frames}",
            f"data.view.frame_step={cfg.frame_step}",
            f"data.view.size={cfg.size}",
            f"data.batch_size={cfg.batch_size}",
            f"data.workers={cfg.workers}",
            *self._model_and_schedule(steps, "decoder"),
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
        return Step(name, salt_command("train-teacher", "--config", cfg.teacher_config, *_sets(sets)), str(run_dir))

    def student_sets(
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
            *self._model_and_schedule(steps, "predictor"),
            f"run.seed={seed}",
            f"run.out_dir={self.out / name}",
            f"run.checkpoint_every={max(1, steps // 4)}",
        ]

    def _model_and_schedule(self, steps: int, head: str) -> list[str]:
        """The encoder, the positions of its decoder / predictor (the encoder's kind: the stage
        configs' own may differ from `arch`), and the schedule."""
        from salt.models import ARCHS

        cfg = self.cfg
        positions = "sincos3d" if cfg.arch not in ARCHS or ARCHS[cfg.arch]["pos_embed"] != "rope" else "rope"
        return [
            f"encoder.arch={cfg.arch}",
            f"encoder.overrides.patch_size={cfg.patch_size}",
            f"{head}.pos_embed={positions}",
            f"optim.steps={steps}",
            f"optim.warmup_steps={max(1, steps // 15)}",
            f"optim.lr_peak={cfg.lr_peak}",
        ]

    def student_step(
        self, name: str, cache: Path, seed: int, steps: int, targets: str = "cache", views: int = 0
    ) -> Step:
        sets = self.student_sets(name, cache, seed, steps, targets, views)
        argv = salt_command("train-student", "--config", self.cfg.student_config, *_sets(sets))
        return Step(name, argv, str(self.out / name))

    def cache_step(self, name: str, teacher: Path, views: int, dtype: str = "fp16") -> Step:
        options = self._cache_latents(teacher, self.data / "train.csv", self.out / name, views, dtype=dtype)
        return Step(f"{name}_views{views}", salt_command("cache-latents", *options))

    def _cache_latents(self, teacher: Path, data: Path, out: Path, views: int, **extra) -> list[str]:
        """`salt cache-latents` options at the chain's geometry (`extra` after --views)."""
        cfg = self.cfg
        return _options(
            teacher=teacher,
            data=data,
            out=out,
            views=views,
            **extra,
            frames=cfg.frames,
            frame_step=cfg.frame_step,
            size=cfg.size,
            batch_size=cfg.batch_size,
            workers=cfg.workers,
            shard_videos=cfg.shard_videos,
            no_progress=True,
        )

    def heldout_dir(self, teacher: str) -> Path:
        return self.out / f"{self.cache_dir(teacher).name}_heldout"

    def heldout_cache_step(self, teacher: str, checkpoint: Path) -> Step:
        """The teacher's fp16 latents of val videos (one view each), which no student trains on."""
        out = self.heldout_dir(teacher)
        options = self._cache_latents(checkpoint, self.data / "val.csv", out, 1, max_videos=HELDOUT_VIDEOS)
        return Step(self.heldout_dir(teacher).name, salt_command("cache-latents", *options))

    def score_step(self, student: str, heldout: Path) -> Step:
        argv = salt_command("score-student", self.out / student, "--cache", heldout)
        return Step(f"score_{student}", argv + ["--out", str(self.out / "scores" / f"{student}.json")])

    def compact_step(self, source: Path, label: str, rank: int) -> Step:
        options = _options(out=f"{source}_{label}", rank=rank, dtype=self.cfg.rank_dtype, no_progress=True)
        return Step(f"compact_{source.name}_{label}", salt_command("compact-cache", str(source), *options))

    def probe_steps(self, name: str, encoder: Path | None, seed: int = 0) -> list[Step]:
        """One probe per protocol; they share the encoder's stored token maps (`--work-dir`)."""
        cfg, steps = self.cfg, []
        for protocol in cfg.protocols:
            argv = salt_command(
                "probe",
                *_options(
                    train=self.data / "train.csv",
                    val=self.data / "val.csv",
                    config=cfg.probe_config,
                    protocol=protocol,
                    work_dir=self.out / "features" / name,
                ),
                *_sets([f"head_depth={cfg.probe_head_depth}", *cfg.probe_overrides]),
                *_options(out=self.out / "probes" / f"{name}.{protocol}.json"),
            )
            if encoder is None:  # a random-init encoder, the floor (kept in its work dir)
                arch = [f"img_size={cfg.size}", f"num_frames={cfg.frames}", f"patch_size={cfg.patch_size}"]
                argv += ["--random-init", cfg.arch, *[a for pair in arch for a in ("--arch", pair)]]
                argv += ["--set", f"seed={seed}"]
            else:
                argv += ["--encoder", str(encoder)]
            steps.append(Step(f"probe_{name}_{protocol}", argv))
        return steps

    # -- FLOPs -------------------------------------------------------------------------------
    def configs(self, targets: str, steps: int):
        from salt.training.config import StudentConfig, TeacherConfig

        cfg = self.cfg
        teacher_sets = [
            f"data.view.frames={cfg.frames}",
            f"data.view.size={cfg.size}",
            f"data.batch_size={cfg.batch_size}",
            f"encoder.arch={cfg.arch}",
            f"encoder.overrides.patch_size={cfg.patch_size}",
        ]
        teacher = load_config(TeacherConfig, cfg.teacher_config, teacher_sets)
        student_sets = self.student_sets("flops", self.out / "cache", 0, steps, targets)
        return teacher, load_config(StudentConfig, cfg.student_config, student_sets)

    @functools.cached_property
    def teacher_arch(self) -> dict:
        from salt.models import resolve_arch

        teacher, _ = self.configs("cache", 1)
        overrides = teacher.encoder.overrides
        return resolve_arch(teacher.encoder.arch, img_size=self.cfg.size, num_frames=self.cfg.frames, **overrides)

    def planned_flops(self, targets: str, teacher_steps: int, student_steps: int) -> float:
        """torch-counter FLOPs (the unit of the runs' metrics) of a chain row, from the planner."""
        from salt.tools.flops import plan

        teacher, student = self.configs(targets, student_steps)
        batch = self.cfg.batch_size
        found = plan(teacher if teacher_steps else None, student, teacher_steps, student_steps, batch, batch)
        return found["counted_total"]

    def matched_ema_steps(self) -> int:
        """EMA steps whose FLOPs equal SALT's with the teacher forward counted online."""
        salt_total = self.planned_flops("teacher", self.cfg.teacher_steps, self.cfg.student_steps)
        return max(1, round(salt_total / self.planned_flops("ema", 0, 1)))

    def teacher_forward_per_clip(self) -> float:
        """torch-counter FLOPs of one frozen teacher forward: per student clip online, per view cached."""
        from salt.tools.flops import frozen_forward_part

        cfg = self.cfg
        part = frozen_forward_part("1b cache", "teacher forward", self.teacher_arch, cfg.frames, cfg.size, clips=1)
        return part.counted
