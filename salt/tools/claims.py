"""The claims table of `salt reproduce`: probe accuracies per row and protocol, their standard
errors, and verdicts that read as the numbers say.

A row is one kind of run (e.g. "SALT student of the teacher") over its seeds. For each probe
protocol it holds every run's val top-1 and that accuracy's binomial standard error over the
val videos; the row's error is that of the mean of its runs (independent val samples),
sqrt(sum se_i²) / k. A comparison holds when the difference exceeds twice its standard error
sqrt(se_a² + se_b²), fails when it is below minus twice that, and is within noise otherwise.
The seed spread is listed beside it: with 2 seeds it is a weak estimate and not used. The rank
verdicts (claim 5) are the exception: students of nearly the same targets were seen 16 points
apart, so there a difference is judged against the val videos' error and the run-to-run spread
pooled over the rows with two or more runs (the interval's width from Student's t at the
spread's degrees of freedom), and stays undecided where no row has two.
"""

from __future__ import annotations

import hashlib
import json
import math
from statistics import mean, stdev

import numpy as np

from salt.evaluation.probe import binomial_se

PROTOCOLS = ("linear", "attentive")
CALIBRATION = {"floor_above_chance": 0.05, "ceiling_above_floor": 0.30}  # the bar, linear protocol


def row(
    group: str,
    name: str,
    runs: list[str],
    probes: dict[str, dict[str, dict]],
    flops: float,
    flops_with_cache: float | None = None,
) -> dict | None:
    """`probes[run][protocol]` is that run's probe record; None when no run of the row was probed."""
    by_protocol = {}
    for protocol in PROTOCOLS:
        records = [probes[r][protocol] for r in runs if protocol in probes.get(r, {})]
        if not records:
            continue
        top1 = [rec["best"]["top1"] for rec in records]
        errors = [
            rec["best"].get("top1_se", binomial_se(rec["best"]["top1"], rec.get("val_videos", 0))) for rec in records
        ]
        by_protocol[protocol] = {
            "top1": top1,
            "se": errors,
            "mean": mean(top1),
            "se_mean": math.sqrt(sum(e * e for e in errors)) / len(errors),
            "spread": stdev(top1) if len(top1) > 1 else 0.0,
            # Per run, per val video: right (1) or not, and which videos, for paired comparisons.
            "correct": [rec["best"].get("correct") for rec in records],
            "videos": [_digest(rec.get("val_video_ids")) for rec in records],
        }
    if not by_protocol:
        return None
    return {
        "group": group,
        "row": name,
        "runs": runs,
        "by_protocol": by_protocol,
        "flops": flops,
        "flops_with_cache": flops_with_cache,
    }


def _digest(ids: list[int] | None) -> str | None:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16] if ids is not None else None


def paired(a: dict, b: dict) -> tuple[float, float] | None:
    """(a − b, its standard error) over the same val videos, from each video's share of runs that
    got it right in either row; None when a probe record lacks its per-video results."""
    runs = a.get("correct", []) + b.get("correct", [])
    if not runs or None in runs or len(set(a.get("videos", []) + b.get("videos", []))) != 1:
        return None
    share = [np.mean([[c == "1" for c in s] for s in row["correct"]], axis=0) for row in (a, b)]
    differences = share[0] - share[1]
    return float(differences.mean()), float(differences.std(ddof=1) / math.sqrt(len(differences)))


def compare(a: dict, b: dict) -> tuple[float, float, str]:
    """(a − b, its standard error, 'holds' | 'fails' | 'within noise') for one protocol's stats."""
    diff = a["mean"] - b["mean"]
    se = math.sqrt(a["se_mean"] ** 2 + b["se_mean"] ** 2)
    return (
        diff,
        se,
        "holds" if diff > 2 * se else "fails" if diff < -2 * se else "within noise (|difference| <= 2 s.e.)",
    )


def verdicts(rows: list[dict], chance: float) -> list[str]:
    get = {r["row"]: r for r in rows}.get
    lines = []
    floor, ceiling = get("random-init floor"), get("supervised ceiling")
    calibrated = False
    if floor and ceiling and "linear" in floor["by_protocol"] and "linear" in ceiling["by_protocol"]:
        f, c = floor["by_protocol"]["linear"], ceiling["by_protocol"]["linear"]
        near_chance = f["mean"] - chance <= CALIBRATION["floor_above_chance"]
        gap = c["mean"] - f["mean"]
        calibrated = near_chance and gap >= CALIBRATION["ceiling_above_floor"]
        lines.append(
            f"0. calibration (linear): floor {_pct(f)} (chance {chance:.1%}: "
            f"{'within' if near_chance else 'more than'} 5 points), ceiling {_pct(c)}, gap {gap * 100:+.1f} points -> "
            f"{'calibrated' if calibrated else 'NOT calibrated: the claims below cannot be judged on this benchmark'}"
        )
    else:
        lines.append(
            "0. calibration: not in this run (the claims below count only where a calibration of the same data "
            "puts the linear floor within 5 points of chance and the ceiling >= 30 points above it)"
        )
    caveat = "" if calibrated else " [benchmark not calibrated]"

    def claim(number: str, text: str, a: dict | None, b: dict | None) -> None:
        if not (a and b):
            return
        parts = []
        for protocol in PROTOCOLS:
            if protocol in a["by_protocol"] and protocol in b["by_protocol"]:
                x, y = a["by_protocol"][protocol], b["by_protocol"][protocol]
                diff, se, verdict = compare(x, y)
                parts.append(
                    f"{protocol}: {_pct(x)} vs {_pct(y)}, difference {diff * 100:+.1f} ± {se * 100:.1f} -> {verdict}"
                )
        lines.append(f"{number}. {text}: " + "; ".join(parts) + caveat)

    student, teacher = get("SALT student of the teacher"), get("teacher (pixels)")
    claim("1", "student > its teacher", student, teacher)
    claim("2", "SALT >= V-JEPA EMA at matched FLOPs", student, get("V-JEPA EMA baseline (same FLOPs as SALT online)"))
    weak = get("SALT student of the weak teacher")
    claim("3a", "weak teacher (its steps) vs the full teacher", get("weak teacher (pixels)"), teacher)
    claim("3b", "student of the weak teacher vs student of the full teacher (paper: within ~2 points)", weak, student)
    random_student = get("SALT student of the random-init teacher")
    claim(
        "4a", "control: student of the full teacher vs student of a random-init frozen teacher", student, random_student
    )
    claim("4b", "control: student of a random-init teacher vs the random-init floor", random_student, floor)
    supervised_student = get("SALT student of the supervised teacher")
    claim("6a", "control: student of the frozen supervised teacher vs the random-init floor", supervised_student, floor)
    claim(
        "6b",
        "control: student of the frozen supervised teacher vs that teacher (what distillation keeps)",
        supervised_student,
        ceiling,
    )
    return lines


RANK_GOAL = {"bytes": 0.25, "points_lost": 0.01}  # issue 18: <= 0.25x the fp16 bytes at <= 1 point lost


def rank_verdicts(rows: list[dict], reference: str) -> list[str]:
    """Claim 5, smaller caches: each compacted cache's student against the fp16 full-rank one.
    Paired over the same val videos where the probe records say which videos each got right."""
    ref = next((r for r in rows if r["row"] == reference), None)
    if ref is None or not ref.get("cache"):
        return []
    base = ref["cache"]["latent_kb"] + ref["cache"]["frame_kb"]
    lines = []
    for r in rows:
        if r["group"] != "rank" or not r.get("cache"):
            continue
        c = r["cache"]
        size = (
            f"{c['latent_kb']:.1f} + {c['frame_kb']:.1f} kB/view (latents + frames) = "
            f"{(c['latent_kb'] + c['frame_kb']) / base:.2f}x "
            f"the fp16 cache's bytes (latents alone {c['latent_kb'] / ref['cache']['latent_kb']:.2f}x), "
            f"{c['explained']:.1%} of the target variance kept"
        )
        parts = []
        for protocol in PROTOCOLS:
            if protocol in r["by_protocol"] and protocol in ref["by_protocol"]:
                x, y = r["by_protocol"][protocol], ref["by_protocol"][protocol]
                same_videos = paired(x, y)
                diff, se = same_videos if same_videos else compare(x, y)[:2]
                kind = "paired over the same val videos" if same_videos else "unpaired"
                spread = run_spread([ref, *(q for q in rows if q["group"] == "rank")], protocol)
                if spread is None:
                    verdict = " -> undecided (one run a row: the run-to-run spread is not measured)"
                else:
                    total = math.sqrt(se**2 + spread[0] ** 2 * (1 / len(x["top1"]) + 1 / len(y["top1"])))
                    factor = t_quantile_975(spread[1])
                    verdict = (
                        f"; with the run-to-run spread ({spread[0] * 100:.1f} points, {spread[1]} d.o.f.) "
                        f"± {total * 100:.2f}, interval ± {factor:.2g} s.e. (Student's t) "
                        f"-> {rank_verdict(diff, total, factor)}"
                    )
                parts.append(
                    f"{protocol}: {_pct(x)} vs {_pct(y)}, difference {diff * 100:+.1f} ± {se * 100:.2f} ({kind})"
                    + verdict
                )
        if r.get("explained_fp16") and ref.get("explained_fp16"):
            mine, theirs = r["explained_fp16"]["mean"], ref["explained_fp16"]["mean"]
            parts.append(f"explains {mine:.1%} of the fp16 targets' variance on held-out videos (fp16: {theirs:.1%})")
        lines.append(f"5. {r['row']} vs fp16 full rank: {size}; " + "; ".join(parts))
    return lines


def run_spread(rows: list[dict], protocol: str) -> tuple[float, int] | None:
    """(standard deviation of top-1 between runs of one row, pooled over the rows with two or
    more runs; its degrees of freedom), or None where no row has two runs. Students of nearly
    the same targets can differ by many points (the step at which one takes off varies), so a
    difference between two rows is judged against this spread, not the val videos' alone."""
    groups = [
        r["by_protocol"][protocol]["top1"] for r in rows if len(r["by_protocol"].get(protocol, {}).get("top1", [])) > 1
    ]
    dof = sum(len(g) - 1 for g in groups)
    if not dof:
        return None
    squares = sum(sum((t - mean(g)) ** 2 for t in g) for g in groups)
    return math.sqrt(squares / dof), dof


# Student's t, two-sided 95 %, by degrees of freedom (a spread from few runs is itself uncertain).
_T975 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23, 2.20, 2.18, 2.16, 2.14, 2.13)


def t_quantile_975(dof: int) -> float:
    """The 97.5 % quantile of Student's t with `dof` degrees of freedom (2.0 from 30 on, ~2.1 between)."""
    return _T975[dof - 1] if dof <= len(_T975) else 2.1 if dof < 30 else 2.0


def rank_verdict(diff: float, se: float, factor: float = 2.0) -> str:
    """Decided only where the interval difference ± factor × s.e. lies on one side of −1 point."""
    limit = -RANK_GOAL["points_lost"]
    if diff - factor * se >= limit:
        return "keeps the accuracy within 1 point"
    if diff + factor * se < limit:
        return "loses more than 1 point"
    return "undecided (the interval holds both)"


def format_table(result: dict) -> str:
    header = "| group | row | " + " | ".join(f"{p} top-1 (mean ± s.e.) | {p} per run" for p in PROTOCOLS)
    lines = [header + " | FLOPs (teacher online) | FLOPs (with cache) |", "|" + "---|" * (4 + 2 * len(PROTOCOLS))]
    for r in result["rows"]:
        cells = []
        for protocol in PROTOCOLS:
            stats = r["by_protocol"].get(protocol)
            cells += [_pct(stats), " / ".join(f"{a:.1%}" for a in stats["top1"])] if stats else ["-", "-"]
        cached = f"{r['flops_with_cache']:.3g}" if r["flops_with_cache"] else "-"
        lines.append(f"| {r['group']} | {r['row']} | " + " | ".join(cells) + f" | {r['flops']:.3g} | {cached} |")
    return "\n".join(lines + [""] + [f"- {v}" for v in result["verdicts"]]) + "\n"


def _pct(stats: dict) -> str:
    return f"{stats['mean']:.1%} ± {stats['se_mean'] * 100:.1f}"
