"""`salt reproduce`: the chain runs every stage for real, keeps finished steps, and tables them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from salt.tools.reproduce import ReproduceError, reproduce

REPO = Path(__file__).resolve().parent.parent

TINY = {
    "data": {"videos": 16, "size": 40, "seed": 5},
    "frames": 8,
    "frame_step": 4,
    "size": 32,
    "batch_size": 4,
    "workers": 0,
    "supervised_steps": 3,
    "teacher_steps": 4,
    "student_steps": 3,
    "seeds": [0],
    "floor_seeds": [0],
    "views": 1,
    "shard_videos": 4,
    "claims": ["calibration", "student_vs_teacher", "matched_flops"],
    "probe_overrides": ["epochs=1", "train_views=1", "workers=0", "weight_decays=[0.01]", "linear.epochs=2"],
    "teacher_config": str(REPO / "configs/teacher/vit_tiny.yaml"),
    "student_config": str(REPO / "configs/student/vit_tiny.yaml"),
    "probe_config": str(REPO / "configs/probe/demo.yaml"),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    """(folder, config) of one chain shared by the tests below, in order: the rank claim's
    test continues the chain the first test ran (alone, it runs it all itself)."""
    tmp_path = tmp_path_factory.mktemp("reproduce")
    config = tmp_path / "reproduce.yaml"
    config.write_text(
        yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "out"), "probe_config": str(tmp_path / "missing.yaml")})
    )
    return tmp_path, config


def test_chain_runs_keeps_finished_steps_and_tables_the_claims(workspace, monkeypatch):
    tmp_path, config = workspace
    monkeypatch.chdir(tmp_path)
    # A failing step names itself and its log; the steps before it stay done.
    with pytest.raises(
        ReproduceError,
        match=r"(?s)step probe_floor_seed0_linear failed.*logs/probe_floor_seed0_linear\.log.*config file not found",
    ):
        reproduce(str(config), [], echo=lambda line: None)
    assert (tmp_path / "out/done/data").exists() and not (tmp_path / "out/done/probe_floor_seed0_linear").exists()

    lines: list[str] = []
    result = reproduce(str(config), [f"probe_config={TINY['probe_config']}"], echo=lines.append)
    assert "  kept     data" in lines
    done = sorted(p.name for p in (tmp_path / "out/done").iterdir())
    probed = ["floor_seed0", "supervised", "teacher", "student_seed0", "ema_seed0"]
    assert done == sorted(
        ["data", "supervised", "teacher", "cache_views1", "student_seed0", "ema_seed0"]
        + [f"probe_{name}_{protocol}" for name in probed for protocol in ("linear", "attentive")]
    )
    rows = {r["row"]: r for r in result["rows"]}
    assert set(rows) == {
        "random-init floor",
        "supervised ceiling",
        "teacher (pixels)",
        "SALT student of the teacher",
        "V-JEPA EMA baseline (same FLOPs as SALT online)",
    }
    assert all(set(r["by_protocol"]) == {"linear", "attentive"} for r in rows.values())
    assert all(
        0.0 <= stats["mean"] <= 1.0 and stats["se_mean"] >= 0
        for r in rows.values()
        for stats in r["by_protocol"].values()
    )
    assert result["verdicts"][0].startswith("0. calibration (linear)")
    assert any(v.startswith("1. student > its teacher: linear:") for v in result["verdicts"])
    salt, ema = rows["SALT student of the teacher"], rows["V-JEPA EMA baseline (same FLOPs as SALT online)"]
    # The EMA baseline ran the steps whose planned FLOPs equal SALT's with the online teacher,
    # and its measured FLOPs (torch's counter, in its metrics) land close to that.
    ema_args = json.loads((tmp_path / "out/done/ema_seed0").read_text())["argv"]
    assert any(a.startswith("optim.steps=") and int(a.split("=")[1]) > TINY["student_steps"] for a in ema_args)
    assert ema["flops"] == pytest.approx(salt["flops"], rel=0.25)
    assert salt["flops_with_cache"] < salt["flops"]  # 1 view x 12 videos of teacher forward < 3 steps x 4 clips
    assert (tmp_path / "out/claims.md").read_text().count("\n|") >= 5

    # Everything is kept on a rerun: no step runs again.
    lines.clear()
    again = reproduce(str(config), [f"probe_config={TINY['probe_config']}"], echo=lines.append)
    assert all(line.startswith("  kept") for line in lines) and again["rows"] == result["rows"]


def test_the_rank_claim_compacts_the_ceilings_cache_and_scores_every_student(workspace, monkeypatch):
    """The frozen supervised ceiling's cache compacted (int8 full rank, and rank D/4), a student of
    each, each probed (paired per val video) and scored against the fp16 targets of held-out videos."""
    tmp_path, config = workspace
    monkeypatch.chdir(tmp_path)
    ranked = reproduce(
        str(config),
        [
            f"probe_config={TINY['probe_config']}",
            "claims=[calibration,student_vs_teacher,rank]",
            "rank_teacher=supervised",
            "rank_divisors=[4]",
        ],
        echo=lambda line: None,
    )
    prefix = "supervised_student"
    students = [f"{prefix}_seed0", f"{prefix}_int8_full_seed0", f"{prefix}_int8_rank32_seed0"]
    assert {
        "compact_cache_supervised_int8_full",
        "compact_cache_supervised_int8_rank32",
        "cache_supervised_heldout",
        *students,
        *(f"score_{name}" for name in students),
    } <= {p.name for p in (tmp_path / "out/done").iterdir()}
    rank_rows = [r for r in ranked["rows"] if r["group"] == "rank"]
    assert [r["row"] for r in rank_rows] == [
        "SALT student of the supervised teacher, int8 full rank",
        "SALT student of the supervised teacher, int8 rank 32",
    ]
    assert (
        rank_rows[1]["cache"]["rank"] == 32 and rank_rows[1]["cache"]["latent_kb"] < rank_rows[0]["cache"]["latent_kb"]
    )
    fives = [v for v in ranked["verdicts"] if v.startswith("5. ")]
    assert len(fives) == 2 and all("the fp16 cache's bytes" in v and "linear:" in v for v in fives)
    assert all("(paired over the same val videos)" in v and "of the fp16 targets' variance" in v for v in fives)
    score = json.loads((tmp_path / "out/scores/supervised_student_int8_rank32_seed0.json").read_text())
    assert score["samples"] > 0 and score["explained_variance"] <= 1.0


def test_cli_rejects_unknown_claims(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "salt.cli", "reproduce", "--set", "claims=[faster]", "--set", f"out_dir={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "claims: unknown ['faster']" in done.stderr


def test_steps_do_not_inherit_a_process_group(monkeypatch):
    """A caller that already formed a group (or a SLURM job) must not make every step join it."""
    from salt.tools.reproduce import step_environment

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_PORT", "29999")
    monkeypatch.setenv("SALT_KEEP_ME", "1")
    env = step_environment()
    assert "RANK" not in env and "MASTER_PORT" not in env and env["SALT_KEEP_ME"] == "1"
