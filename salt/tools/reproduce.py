"""`salt reproduce`: the paper's claims at small scale, as a resumable chain of runs.

Every step of the chain is an ordinary `salt` command (make-synthetic, train-teacher,
cache-latents, train-student, probe) run as a subprocess with its log under `<out>/logs/`.
A step is finished when its marker `<out>/done/<step>` exists; a restart skips finished steps
and resumes an interrupted training run from its last checkpoint, so a long chain can be
stopped at any moment. Every encoder is probed by each protocol in `protocols` (linear and
attentive), from token maps computed once per encoder. At the end the claims table goes to
`<out>/claims.md` and `.json` (salt/tools/claims.py: standard errors and verdicts).

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

import os
from pathlib import Path
from typing import Callable

from salt.config import ConfigError, load_config
from salt.tools.reproduce_chain import Chain, ReproduceConfig, ReproduceError, Step, step_environment
from salt.tools.reproduce_steps import ChainPlan

__all__ = ["ReproduceConfig", "ReproduceError", "Reproduction", "reproduce", "step_environment"]


class Reproduction:
    """Runs the chain the config's claims ask for, then writes the claims table."""

    def __init__(self, cfg: ReproduceConfig, echo: Callable[[str], None] = print):
        self.cfg, self.plan = cfg, ChainPlan(cfg)
        self.out = self.plan.out
        self.chain = Chain(self.out, echo)

    def run(self) -> dict:
        cfg, plan, chain = self.cfg, self.plan, self.chain
        (self.out / "probes").mkdir(parents=True, exist_ok=True)
        chain.run(plan.data_step())
        claims = set(cfg.claims)
        if claims & {"calibration", "random_teacher"}:
            for seed in cfg.floor_seeds:
                self._probe(f"floor_seed{seed}", None, seed)
        if claims & {"calibration", "supervised_teacher"}:
            supervised = plan.teacher_step("supervised", cfg.supervised_steps, "supervised")
            self._train_and_probe(supervised, "supervised.pt")
        if claims & {"student_vs_teacher", "matched_flops", "views", "dtype"}:
            self._teacher_and_students("teacher")
        if "matched_flops" in claims:
            ema_steps = plan.matched_ema_steps()
            for seed in cfg.seeds:  # the same cached frames as SALT's students
                ema = plan.student_step(f"ema_seed{seed}", self.out / "cache", seed, ema_steps, "ema", cfg.views)
                self._train_and_probe(ema, "student.pt")
        if "weak_teacher" in claims:
            self._teacher_and_students("weak_teacher")
        if "random_teacher" in claims:  # the floor's first encoder, frozen, as the teacher
            self._students("random_teacher", plan.floor_encoder(cfg.floor_seeds[0]))
        if "supervised_teacher" in claims:
            self._students("supervised", self.out / "supervised" / "supervised.pt")
        if "views" in claims:
            for views in sorted(set(cfg.views_sweep) - {cfg.views}):  # the main students are the K = views row
                self._grow_cache(self.out / "teacher" / "teacher.pt", "cache", views)
                name = f"student_views{views}"
                step = plan.student_step(name, self.out / "cache", cfg.seeds[0], cfg.student_steps, views=views)
                self._train_and_probe(step, "student.pt")
        if "dtype" in claims:
            for dtype in cfg.dtypes:
                chain.run(plan.cache_step(f"cache_{dtype}", self.out / "teacher" / "teacher.pt", cfg.views, dtype))
                step = plan.student_step(
                    f"student_{dtype}", self.out / f"cache_{dtype}", cfg.seeds[0], cfg.student_steps
                )
                self._train_and_probe(step, "student.pt")
        if "rank" in claims:
            self._rank_rows()
        from salt.tools.reproduce_table import ClaimsTable

        return ClaimsTable(plan).write()

    def _rank_rows(self) -> None:
        """The fp16 full-rank students of `rank_teacher`, its cache compacted, and their students."""
        cfg, plan = self.cfg, self.plan
        if cfg.rank_teacher == "random_teacher":
            teacher = plan.floor_encoder(cfg.floor_seeds[0])
            if not teacher.exists():
                self._probe(f"floor_seed{cfg.floor_seeds[0]}", None, cfg.floor_seeds[0])
        elif cfg.rank_teacher == "supervised":  # the calibration's ceiling, frozen
            teacher = self.out / "supervised" / "supervised.pt"
            self._train_and_probe(plan.teacher_step("supervised", cfg.supervised_steps, "supervised"), "supervised.pt")
        else:
            teacher = self.out / cfg.rank_teacher / "teacher.pt"
            step = plan.teacher_step(cfg.rank_teacher, plan.teacher_steps(cfg.rank_teacher))
            self._train_and_probe(step, "teacher.pt")
        self._students(cfg.rank_teacher, teacher)  # the fp16 full-rank row (kept steps are skipped)
        # Every row's student is also scored against the fp16 targets of val videos it never saw.
        self.chain.run(plan.heldout_cache_step(cfg.rank_teacher, teacher))
        heldout = plan.heldout_dir(cfg.rank_teacher)
        prefix = plan.student_prefix(cfg.rank_teacher)
        for seed in cfg.seeds:
            self.chain.run(plan.score_step(f"{prefix}_seed{seed}", heldout))
        source = plan.cache_dir(cfg.rank_teacher)
        for label, rank in plan.rank_variants():
            self.chain.run(plan.compact_step(source, label, rank))
        for seed in cfg.seeds:  # seed by seed: a chain stopped early still has one run of every row
            for label, _ in plan.rank_variants():
                name = f"{prefix}_{label}_seed{seed}"
                step = plan.student_step(name, Path(f"{source}_{label}"), seed, cfg.student_steps, views=cfg.views)
                self._train_and_probe(step, "student.pt")
                self.chain.run(plan.score_step(name, heldout))

    def _probe(self, name: str, encoder: Path | None, seed: int = 0) -> None:
        for step in self.plan.probe_steps(name, encoder, seed):
            self.chain.run(step)

    def _train_and_probe(self, step: Step, export: str) -> None:
        self.chain.run(step)
        self._probe(step.name, self.out / step.name / export)

    def _grow_cache(self, teacher: Path, name: str, views: int) -> None:
        """Grow the cache one view count at a time, so each K is a set of whole shards."""
        for k in sorted({*(v for v in self.cfg.views_sweep if v <= views), views}):
            self.chain.run(self.plan.cache_step(name, teacher, k))

    def _teacher_and_students(self, name: str) -> None:
        self._train_and_probe(self.plan.teacher_step(name, self.plan.teacher_steps(name)), "teacher.pt")
        self._students(name, self.out / name / "teacher.pt")

    def _students(self, name: str, teacher: Path) -> None:
        cfg, plan = self.cfg, self.plan
        cache = plan.cache_dir(name).name
        self._grow_cache(teacher, cache, cfg.views)
        for seed in cfg.seeds:
            name_seed = f"{plan.student_prefix(name)}_seed{seed}"
            step = plan.student_step(name_seed, self.out / cache, seed, cfg.student_steps, views=cfg.views)
            self._train_and_probe(step, "student.pt")


def reproduce(config_path: str | None, overrides: list[str], echo: Callable[[str], None] = print) -> dict:
    cfg = load_config(ReproduceConfig, config_path, overrides)
    try:
        cfg.validate()
    except ValueError as err:
        raise ConfigError(f"{config_path or '<defaults>'}: {err}") from None
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return Reproduction(cfg, echo).run()
