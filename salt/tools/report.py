"""`salt report`: one table for a pipeline run (the end of `make demo`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from salt.tools.run_records import metric_records


def _records(run_dir: Path) -> list[dict]:
    if not (run_dir / "metrics.jsonl").is_file():
        raise ValueError(f"{run_dir} holds no metrics.jsonl: give the run.out_dir of a salt train-teacher/-student run")
    return metric_records(run_dir / "metrics.jsonl")


def check_run_kind(run_dir: Path, kind: str) -> None:
    """Refuse a student run given as the teacher's (or the reverse): their configs differ in
    `objective` (stage 1) and `targets` (stage 2)."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return  # runs made by hand or by older versions: nothing to tell them by
    import yaml

    config = yaml.safe_load(config_file.read_text()) or {}
    actual = "teacher" if "objective" in config else "student" if "targets" in config else None
    if actual is not None and actual != kind:
        raise ValueError(f"{run_dir} is a {actual} run, given as --{kind}-run; pass it as --{actual}-run")


def stage_lines(name: str, records: list[dict]) -> list[str]:
    """The stage's row (last loss, time, FLOPs) and, where logged, its trivial baseline: the
    loss of predicting zeros (stage 1) or the mean target (stage 2) on the same micro-batches."""
    last = records[-1] if records else {}
    lines = [
        f"{name:<34}{'loss ' + format(last.get('loss', float('nan')), '.4f') + ' at step ' + str(last.get('step')):<34}"
        f"{_seconds(last.get('elapsed_s')):>9}{last.get('flops', 0):>11.3g}"
    ]
    if "baseline_loss" in last:
        trivial = "predicting zeros" if "explained_variance" not in last else "predicting the mean target"
        ratio = last["loss"] / last["baseline_loss"]
        text = f"  {'':<32}baseline {last['baseline_loss']:.4f} ({trivial}): loss/baseline {ratio:.2f}"
        if "explained_variance" in last:
            text += f"; explains {last['explained_variance']:.0%} of the target variance"
        lines.append(text)
    return lines


def pipeline_report(teacher_run: str, cache: str, student_run: str, probes: list[str]) -> str:
    from salt.latents import load_manifest

    lines = [f"{'stage':<34}{'result':<34}{'time':>9}{'FLOPs':>11}"]
    for name, kind, run_dir in (
        ("stage 1: teacher", "teacher", Path(teacher_run)),
        ("stage 2: student (from the cache)", "student", Path(student_run)),
    ):
        check_run_kind(run_dir, kind)
        lines += stage_lines(name, _records(run_dir))
    manifest = load_manifest(cache)
    per_view = sum(manifest.bytes_per_view())
    lines.append(
        f"{'process 1: cache ' + cache:<34}{f'{manifest.sample_count} views, {per_view / 1e3:.1f} kB/view':<34}{'':>9}"
        f"{_teacher_forward_flops(manifest):>11.3g}"
    )
    lines.append(
        f"  cache on disk: latents {manifest.latent_bytes / 1e6:.1f} MB + frames {manifest.frame_bytes / 1e6:.1f} MB "
        f"per format ({', '.join(manifest.formats)}); {len(manifest.skipped)} videos skipped"
    )
    lines += probe_table([json.loads(Path(path).read_text()) for path in probes])
    lines.append(
        "FLOPs: training stages by torch's counter (forward x3, attention included); the cache by 2·N·D of the teacher"
    )
    return "\n".join(lines)


def loss_curves(runs: dict[str, str], out: str) -> None:
    """One panel per run: loss and its trivial baseline against the step (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.2), squeeze=False)
    for ax, (name, run_dir) in zip(axes[0], runs.items()):
        records = _records(Path(run_dir))
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["loss"] for r in records], label="loss")
        if records and "baseline_loss" in records[-1]:
            ax.plot(steps, [r.get("baseline_loss", float("nan")) for r in records], "--", label="trivial baseline")
        ax.set_title(panel_title(name, run_dir), fontsize=8)
        ax.set_xlabel("optimiser step")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def panel_title(name: str, run_dir: str, width: int = 44) -> str:
    """The run's name over its folder's last two parts, each line short enough for its panel
    (full paths side by side ran into each other)."""
    import textwrap

    folder = "/".join(Path(run_dir).parts[-2:])
    if len(folder) > width:
        folder = "…" + folder[-(width - 1) :]
    return "\n".join([*textwrap.wrap(name, width), folder])


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
    lines = [
        f"{'frozen probes: val top-1 ± s.e.':<34}"
        + "".join(f"{p:<22}" for p in protocols)
        + f"{'chance':<9}{'time':>7}"
    ]
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
