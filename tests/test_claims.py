"""Verdicts of the claims table read as the numbers say."""

from salt.tools.claims import compare, rank_verdicts, row, verdicts


def record(top1: float, videos: int = 400) -> dict:
    return {"best": {"top1": top1}, "val_videos": videos}


def probes(**runs: tuple[float, float]) -> dict:
    return {
        name: {"linear": record(linear), "attentive": record(attentive)} for name, (linear, attentive) in runs.items()
    }


def test_row_errors_and_comparisons():
    found = row("g", "r", ["a", "b"], probes(a=(0.30, 0.40), b=(0.34, 0.40)), flops=1.0)
    stats = found["by_protocol"]["linear"]
    assert stats["mean"] == 0.32 and stats["top1"] == [0.30, 0.34]
    se_a, se_b = (0.30 * 0.70 / 400) ** 0.5, (0.34 * 0.66 / 400) ** 0.5
    assert abs(stats["se_mean"] - (se_a**2 + se_b**2) ** 0.5 / 2) < 1e-12
    high = {"mean": 0.40, "se_mean": 0.01}
    assert compare(high, {"mean": 0.30, "se_mean": 0.01})[2] == "holds"
    assert compare({"mean": 0.30, "se_mean": 0.01}, high)[2] == "fails"
    assert compare({"mean": 0.39, "se_mean": 0.01}, high)[2].startswith("within noise")


def test_verdicts_judge_calibration_then_each_claim():
    rows = [
        row("calibration", "random-init floor", ["f0", "f1"], probes(f0=(0.13, 0.38), f1=(0.15, 0.40)), 0.0),
        row("calibration", "supervised ceiling", ["s"], probes(s=(0.60, 0.62)), 1.0),
        row("teacher", "teacher (pixels)", ["t"], probes(t=(0.16, 0.41)), 1.0),
        row("teacher", "SALT student of the teacher", ["s0"], probes(s0=(0.30, 0.41)), 1.0),
    ]
    lines = verdicts(rows, chance=0.125)
    assert lines[0].startswith("0. calibration (linear): floor 14.0%") and lines[0].endswith("-> calibrated")
    assert "linear: 30.0%" in lines[1] and "-> holds" in lines[1] and "attentive:" in lines[1]
    assert "not calibrated" not in lines[1]
    uncalibrated = verdicts(
        [rows[0], row("calibration", "supervised ceiling", ["s"], probes(s=(0.20, 0.5)), 1.0)] + rows[2:], 0.125
    )
    assert "NOT calibrated" in uncalibrated[0] and uncalibrated[1].endswith("[benchmark not calibrated]")


def test_rank_verdicts_decide_the_one_point_goal_only_where_the_interval_allows():
    runs = {"a": (0.30, 0.40), "a2": (0.31, 0.40), "a3": (0.30, 0.40), "a4": (0.31, 0.40)}
    reference = row("teacher", "SALT student of the teacher", list(runs), probes(**runs), 1.0)
    reference["cache"] = {"latent_kb": 100.0, "frame_kb": 20.0, "explained": 1.0}
    close = row("rank", "rank 16", ["b"], probes(b=(0.30, 0.40)), 1.0)
    close["cache"] = {"latent_kb": 10.0, "frame_kb": 20.0, "explained": 0.97}
    far = row("rank", "rank 4", ["c"], probes(c=(0.10, 0.40)), 1.0)
    far["cache"] = {"latent_kb": 5.0, "frame_kb": 20.0, "explained": 0.7}
    lines = rank_verdicts([reference, close, far], "SALT student of the teacher")
    assert len(lines) == 2 and "0.25x the fp16 cache's bytes (latents alone 0.10x)" in lines[0] and "97.0%" in lines[0]
    assert "undecided" in lines[0]  # 400 val videos: +-2 s.e. spans more than a point either way
    assert "linear: 10.0% ± 1.5 vs 30.5%" in lines[1] and "(unpaired)" in lines[1]
    assert "run-to-run spread (0.6 points, 3 d.o.f.)" in lines[1] and "interval ± 3.2 s.e. (Student's t)" in lines[1]
    assert "loses more than 1 point" in lines[1]
    assert rank_verdicts([close], "SALT student of the teacher") == []
    # One run a row: however far apart, two single runs decide nothing.
    single = row("teacher", "SALT student of the teacher", ["a"], probes(a=(0.30, 0.40)), 1.0)
    single["cache"] = reference["cache"]
    lines = rank_verdicts([single, far], "SALT student of the teacher")
    assert "-> undecided (one run a row: the run-to-run spread is not measured)" in lines[0]
    assert "loses" not in lines[0]


def test_a_spread_between_runs_of_one_row_outweighs_a_paired_difference():
    """Two runs of the reference 16 points apart (a student that took off late): a row 8 points
    below their mean is undecided, not a loss (a spread from two runs is itself uncertain: t, 1 d.o.f.)."""
    reference = row("teacher", "ref", ["a", "a2"], probes(a=(0.52, 0.77), a2=(0.36, 0.76)), 1.0)
    reference["cache"] = {"latent_kb": 100.0, "frame_kb": 20.0, "explained": 1.0}
    compact = row("rank", "int8", ["b"], probes(b=(0.36, 0.76)), 1.0)
    compact["cache"] = {"latent_kb": 50.0, "frame_kb": 20.0, "explained": 1.0}
    for record in (reference, compact):
        for stats in record["by_protocol"].values():
            stats["se_mean"] = 0.005
    (line,) = rank_verdicts([reference, compact], "ref")
    assert "linear: 36.0% ± 0.5 vs 44.0% ± 0.5, difference -8.0 ± 0.71 (unpaired)" in line
    assert "run-to-run spread (11.3 points, 1 d.o.f.)" in line and "interval ± 13 s.e. (Student's t)" in line
    assert "undecided (the interval holds both)" in line


def test_a_paired_comparison_over_the_same_videos_decides_what_an_unpaired_one_cannot():
    """Two students that disagree on 5 of 2000 val videos: unpaired, each accuracy's own error
    (±1.1 points) leaves the 1-point goal open; paired per video, the difference is -0.25 ± 0.11."""

    def probe(correct: str, ids: list[int]) -> dict:
        best = {"top1": correct.count("1") / len(correct), "correct": correct}
        return {"b": {"linear": {"best": best, "val_videos": len(correct), "val_video_ids": ids}}}

    ids = list(range(2000))
    twice = probe("1" * 800 + "0" * 1200, ids)
    reference = row("teacher", "ref", list("bcde"), dict.fromkeys("bcde", twice["b"]), 1.0)  # four runs alike
    reference["cache"] = {"latent_kb": 100.0, "frame_kb": 20.0, "explained": 1.0}
    compact = row("rank", "rank 16", ["b"], probe("1" * 795 + "0" * 1205, ids), 1.0)
    compact["cache"] = {"latent_kb": 10.0, "frame_kb": 20.0, "explained": 0.97}
    (line,) = rank_verdicts([reference, compact], "ref")
    assert "difference -0.2 ± 0.11 (paired over the same val videos)" in line
    assert (
        "run-to-run spread (0.0 points, 3 d.o.f.) ± 0.11, interval ± 3.2 s.e. (Student's t) -> keeps the accuracy"
        in line
    )
    other_videos = row("rank", "rank 16", ["b"], probe("1" * 795 + "0" * 1205, [i + 1 for i in ids]), 1.0)
    other_videos["cache"] = compact["cache"]
    (line,) = rank_verdicts([reference, other_videos], "ref")
    assert "(unpaired); with the run-to-run spread" in line and "-> undecided" in line
