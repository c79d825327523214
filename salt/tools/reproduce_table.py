"""The claims table of `salt reproduce`: each row's probe accuracies with standard errors,
its FLOPs (measured, and with the teacher forward counted online or once per cached view),
and the verdicts (salt/tools/claims.py), to `<out>/claims.md` and `.json`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from statistics import mean

from salt.tools.reproduce_steps import ChainPlan
from salt.tools.run_records import last_record


def teacher_label(teacher: str) -> str:
    """How the table names a teacher of the chain ("random_teacher" → "random-init teacher")."""
    labels = {"random_teacher": "random-init teacher", "supervised": "supervised teacher"}
    return labels.get(teacher, teacher.replace("_", " "))


def student_row(teacher: str) -> str:
    return f"SALT student of the {teacher_label(teacher)}"


class ClaimsTable:
    def __init__(self, plan: ChainPlan):
        self.plan, self.cfg, self.out = plan, plan.cfg, plan.out
        self.rows: list[dict] = []

    def write(self) -> dict:
        from salt.tools.claims import format_table, rank_verdicts, verdicts

        cfg, plan = self.cfg, self.plan
        teacher_forward = plan.teacher_forward_per_clip()
        self.add("calibration", "random-init floor", [f"floor_seed{s}" for s in cfg.floor_seeds], 0.0)
        self.add("calibration", "supervised ceiling", ["supervised"])
        for teacher in ("teacher", "weak_teacher", "random_teacher", "supervised"):
            teacher_flops = self.measured_flops(teacher)  # 0 for the random-init teacher: it never trained
            if teacher in ("teacher", "weak_teacher"):  # the random-init and supervised encoders are rows above
                self.add(teacher, f"{teacher_label(teacher)} (pixels)", [teacher], teacher_flops)
            students = [f"{plan.student_prefix(teacher)}_seed{s}" for s in cfg.seeds]
            if self.probe_records(students):
                trained = mean(self.measured_flops(n) for n in students)
                online = teacher_flops + trained + teacher_forward * cfg.batch_size * cfg.student_steps
                cached = teacher_flops + trained + teacher_forward * cfg.views * self.train_videos()
                self.add(teacher, student_row(teacher), students, online, cached)
        ema_runs = [f"ema_seed{s}" for s in cfg.seeds]
        self.add("matched_flops", "V-JEPA EMA baseline (same FLOPs as SALT online)", ema_runs)
        for views in sorted(set(cfg.views_sweep) - {cfg.views}):
            self.add("views", f"SALT student, K = {views} views per video", [f"student_views{views}"])
        for dtype in cfg.dtypes:
            self.add("dtype", f"SALT student, {dtype} targets", [f"student_{dtype}"])
        if "rank" in cfg.claims:
            self.add_rank_rows()
        classes = len(json.loads((plan.data / "synthetic.json").read_text())["classes"])
        result = {"config": asdict(cfg), "rows": self.rows, "verdicts": verdicts(self.rows, 1 / classes)}
        if "rank" in cfg.claims:
            result["verdicts"] += rank_verdicts(self.rows, student_row(cfg.rank_teacher))
        (self.out / "claims.json").write_text(json.dumps(result, indent=2) + "\n")
        (self.out / "claims.md").write_text(format_table(result))
        return result

    def add(
        self,
        group: str,
        name: str,
        runs: list[str],
        flops_online: float | None = None,
        flops_cache: float | None = None,
    ) -> None:
        from salt.tools.claims import row

        measured = mean(self.measured_flops(n) for n in runs)
        online = flops_online if flops_online is not None else measured
        found = row(group, name, runs, self.probe_records(runs), online, flops_cache)
        if found is not None:
            self.rows.append(found)

    def add_rank_rows(self) -> None:
        """The compacted caches' students, each row with its cache's bytes per view; the fp16
        full-rank row of the same teacher is the reference (it carries its bytes too)."""
        plan, teacher = self.plan, self.cfg.rank_teacher
        prefix, source = plan.student_prefix(teacher), plan.cache_dir(teacher)
        for row in self.rows:
            if row["row"] == student_row(teacher):
                row["cache"] = cache_size(source)
                row["explained_fp16"] = self.explained(row["runs"])
        for variant, rank in plan.rank_variants():
            before = len(self.rows)
            name = f"{student_row(teacher)}, {self.cfg.rank_dtype} " + (f"rank {rank}" if rank else "full rank")
            self.add("rank", name, [f"{prefix}_{variant}_seed{seed}" for seed in self.cfg.seeds])
            if len(self.rows) > before:
                self.rows[-1]["cache"] = cache_size(self.out / f"{source.name}_{variant}")
                self.rows[-1]["explained_fp16"] = self.explained(self.rows[-1]["runs"])

    def explained(self, runs: list[str]) -> dict | None:
        """The share of the fp16 targets' variance each run explains on held-out videos (salt score-student)."""
        scores = [self.out / "scores" / f"{run}.json" for run in runs]
        found = [json.loads(path.read_text())["explained_variance"] for path in scores if path.exists()]
        return {"per_run": found, "mean": mean(found)} if found else None

    def probe_records(self, names: list[str]) -> dict[str, dict[str, dict]]:
        records = {}
        for name in names:
            for protocol in self.cfg.protocols:
                path = self.out / "probes" / f"{name}.{protocol}.json"
                if path.exists():
                    records.setdefault(name, {})[protocol] = json.loads(path.read_text())
        return records

    def measured_flops(self, name: str) -> float:
        record = last_record(self.out / name / "metrics.jsonl")
        return record.get("flops", 0.0) if record else 0.0

    def train_videos(self) -> int:
        return sum(1 for line in (self.plan.data / "train.csv").read_text().splitlines() if line.strip())


def cache_size(cache: Path) -> dict | None:
    """Bytes per view of a finished cache (kB), its dtype, rank and explained variance."""
    from salt.latents import load_manifest

    if not (cache / "manifest.json").exists():
        return None
    manifest = load_manifest(cache)
    latent, frames = manifest.bytes_per_view()
    basis = manifest.basis or {}
    return {
        "latent_kb": latent / 1e3,
        "frame_kb": frames / 1e3,
        "dtype": manifest.latent_dtype,
        "rank": manifest.target_rank,
        "dim": manifest.dim,
        "explained": basis.get("explained", 1.0),
    }
