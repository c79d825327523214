"""`salt report`: one table for a pipeline run (the end of `make demo`)."""

from __future__ import annotations

import json
import math
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
    lines += probe_table([json.loads(Path(path).read_text()) for path in probes])
    lines.append("FLOPs: training stages by torch's counter (forward x3, attention included); the cache by 2·N·D of the teacher")
    return "\n".join(lines)


def probe_table(reports: list[dict]) -> list[str]:
    """One row per encoder, one column per probe protocol: val top-1 ± its standard error, and
    each encoder's margin over the random-init floor of the same protocol."""
    if not reports:
        return []
    protocols = sorted({r.get("protocol", "attentive") for r in reports}, key=lambda p: p != "linear")
    rows: dict[str, dict[str, dict]] = {}
    for report in reports:  # records made before protocols existed were attentive
        rows.setdefault(report["encoder"], {})[report.get("protocol", "attentive")] = report
    floor = next((name for name in rows if name.startswith("random-init")), None)
    chance = 1 / reports[0]["classes"]
    lines = [f"{'frozen probes: val top-1 ± s.e.':<34}" + "".join(f"{p:<22}" for p in protocols) + f"{'chance':<9}{'time':>7}"]
    for name, by_protocol in rows.items():
        cells = []
        for protocol in protocols:
            report = by_protocol.get(protocol)
            if report is None:
                cells.append(f"{'-':<22}")
                continue
            top1, margin = report["best"]["top1"], ""
            if floor and name != floor and protocol in rows[floor]:
                margin = f" ({(top1 - rows[floor][protocol]['best']['top1']) * 100:+.1f})"
            cells.append(f"{_with_se(report) + margin:<22}")
        seconds = sum(sum(r["seconds"].values()) for r in by_protocol.values())
        label = f"{name} (floor)" if name == floor else name
        lines.append(f"  {label[:31]:<32}" + "".join(cells) + f"{chance:<9.1%}{seconds:>6.0f}s")
    if floor:
        lines.append("  (in brackets: points above the random-init floor of the same protocol)")
    return lines


def _with_se(report: dict) -> str:
    best = report["best"]
    se = best.get("top1_se")
    if se is None and "val_videos" in report:
        se = math.sqrt(best["top1"] * (1 - best["top1"]) / max(1, report["val_videos"]))
    return f"{best['top1']:.1%}" + (f" ± {se * 100:.1f}" if se is not None else "")


def _seconds(value) -> str:
    """Runs logged before `elapsed_s` existed show '-', not a made-up 0 s."""
    return "-" if value is None else f"{value:.0f}s"


def _teacher_forward_flops(manifest) -> float:
    """2·N·D of the teacher over every cached view (the paper's count)."""
    from salt.models import count_params

    return 2 * count_params(manifest.teacher["arch"]) * manifest.tokens * manifest.sample_count
