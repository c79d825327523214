"""`salt report`: one table for a pipeline run (the end of `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path


def _last_metrics(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def pipeline_report(teacher_run: str, cache: str, student_run: str, probes: list[str]) -> str:
    from salt.latents import load_manifest

    lines = [f"{'stage':<34}{'result':<34}{'time':>9}{'FLOPs':>11}"]
    for name, run_dir in (("stage 1: teacher", teacher_run), ("stage 2: student (from the cache)", student_run)):
        last = _last_metrics(Path(run_dir))
        lines.append(f"{name:<34}{'loss ' + format(last.get('loss', float('nan')), '.4f') + ' at step ' + str(last.get('step')):<34}"
                     f"{_seconds(last.get('elapsed_s')):>9}{last.get('flops', 0):>11.3g}")
    manifest = load_manifest(cache)
    per_view = (manifest.latent_bytes + manifest.frame_bytes) / max(1, manifest.sample_count)
    lines.append(f"{'process 1: cache ' + cache:<34}{f'{manifest.sample_count} views, {per_view / 1e3:.1f} kB/view':<34}{'':>9}"
                 f"{_teacher_forward_flops(manifest):>11.3g}")
    lines.append(f"  cache on disk: latents {manifest.latent_bytes / 1e6:.1f} MB + frames {manifest.frame_bytes / 1e6:.1f} MB per format "
                 f"({', '.join(manifest.formats)}); {len(manifest.skipped)} videos skipped")
    lines.append(f"{'probe (frozen, attentive)':<34}{'best top-1':<12}{'top-5':<10}{'chance':<12}{'time':>9}")
    for path in probes:
        report = json.loads(Path(path).read_text())
        seconds = sum(report["seconds"].values())
        top5 = f"{report['best'].get('top5', float('nan')):.1%}"
        lines.append(f"  {report['encoder']:<32}{report['best']['top1']:<12.1%}{top5:<10}{1 / report['classes']:<12.1%}{seconds:>8.0f}s")
    lines.append("FLOPs: training stages by torch's counter (forward x3, attention included); the cache by 2·N·D of the teacher")
    return "\n".join(lines)


def _seconds(value) -> str:
    """Runs logged before `elapsed_s` existed show '-', not a made-up 0 s."""
    return "-" if value is None else f"{value:.0f}s"


def _teacher_forward_flops(manifest) -> float:
    """2·N·D of the teacher over every cached view (the paper's count)."""
    from salt.models import count_params

    return 2 * count_params(manifest.teacher["arch"]) * manifest.tokens * manifest.sample_count
