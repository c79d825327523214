from pathlib import Path

import pytest
from click.testing import CliRunner

from salt.cli import main
from salt.config import ConfigError, load_config
from salt.masks import DEFAULT_MASKS, MultiBlockMasker
from salt.tools.flops import plan, token_shares
from salt.training.config import StudentConfig, TeacherConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_token_shares_are_the_maskers_ratios_after_equalisation():
    shares = token_shares((8, 14, 14), DEFAULT_MASKS, micro_batch=24, steps=4)
    pairs = [MultiBlockMasker((8, 14, 14), list(DEFAULT_MASKS), seed=0)(24, s) for s in range(4)]
    for i, (context, target) in enumerate(shares):
        assert abs(context - sum(p[i].context_ratio for p in pairs) / 4) < 1e-9
        assert abs(target - sum(p[i].target_ratio for p in pairs) / 4) < 1e-9


def test_paper_budget_is_reproduced():
    """ViT-L teacher 80k + ViT-L student 160k steps, batch 3072, 16x224², online teacher: ~1.19e21."""
    teacher = load_config(TeacherConfig, CONFIGS / "teacher/vit_large.yaml", ["data.batch_size=64"])
    student = load_config(
        StudentConfig,
        CONFIGS / "student/vit_large.yaml",
        ["geometry.size=224", "data.batch_size=64", "targets=teacher"],
    )
    result = plan(teacher, student, 80_000, 160_000, 3072, 3072)
    assert 0.9 * 1.19e21 < result["total"] < 1.1 * 1.19e21, result["total"]
    for part in result["parts"]:  # the counter includes attention, which 6ND leaves out
        assert part.flops <= part.counted < 1.6 * part.flops, part


# The demo cache's geometry: a plan without a teacher or a cache is given it.
DEMO_GEOMETRY = ["geometry.frames=8", "geometry.frame_step=4", "geometry.size=32", "encoder.overrides.patch_size=8"]


def test_cached_targets_replace_the_online_teacher_with_a_one_off_cost():
    student = load_config(StudentConfig, CONFIGS / "student/vit_tiny.yaml", DEMO_GEOMETRY)
    online = plan(
        None,
        load_config(StudentConfig, CONFIGS / "student/vit_tiny.yaml", [*DEMO_GEOMETRY, "targets=teacher"]),
        0,
        100,
        32,
        32,
    )
    cached = plan(None, student, 0, 100, 32, 32, cache_views=4, cache_videos=10)
    teacher_online = [p for p in online["parts"] if "online" in p.name][0]
    teacher_once = [p for p in cached["parts"] if "once" in p.name][0]
    assert teacher_online.clips == 3200 and teacher_once.clips == 40
    assert abs(teacher_once.flops / teacher_online.flops - 40 / 3200) < 1e-9
    assert cached["cache"]["epochs_over_views"] == 80


def test_flops_command():
    result = CliRunner().invoke(
        main,
        [
            "flops",
            "--student-config",
            str(CONFIGS / "student/vit_tiny.yaml"),
            "--student-steps",
            "10",
            "--targets",
            "ema",
            *(arg for pair in DEMO_GEOMETRY for arg in ("--student-set", pair)),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "EMA target encoder forward" in result.output and "total:" in result.output


def test_a_plan_takes_the_students_geometry_from_its_teacher_or_cache_or_says_what_to_give(tmp_path):
    """Student configs leave clip geometry, patch and tubelet to the cache: a plan reads them from
    the cache its teacher writes, else the manifest at cache.path; with neither it names the keys."""
    teacher = load_config(TeacherConfig, CONFIGS / "teacher/vit_tiny.yaml", [])
    student = load_config(StudentConfig, CONFIGS / "student/vit_tiny.yaml", [f"cache.path={tmp_path / 'none'}"])
    planned = plan(teacher, student, 10, 10, 32, 32)
    explicit = plan(
        teacher, load_config(StudentConfig, CONFIGS / "student/vit_tiny.yaml", DEMO_GEOMETRY), 10, 10, 32, 32
    )
    assert [p.counted for p in planned["parts"]] == [p.counted for p in explicit["parts"]]
    with pytest.raises(ConfigError, match=r"cannot tell it.*--teacher-config.*geometry\.frames"):
        plan(None, student, 0, 10, 32, 32)


def test_rope_configs_are_planned_like_their_sincos_twins():
    """RoPE adds no parameters and no matmuls (its rotation is elementwise): the same counts."""
    results = []
    for suffix in ("", "_rope"):
        teacher = load_config(TeacherConfig, str(CONFIGS / f"teacher/vit_large{suffix}.yaml"), [])
        student = load_config(StudentConfig, str(CONFIGS / f"student/vit_small{suffix}.yaml"), [])
        results.append(plan(teacher, student, 100, 100, 64, 64))
    sincos, rope = results
    assert [p.params for p in rope["parts"]] == [p.params for p in sincos["parts"]]
    assert rope["counted_total"] == sincos["counted_total"] and rope["total"] == sincos["total"]


def test_cache_size_and_read_bandwidth_per_dtype_and_rank():
    student = load_config(
        StudentConfig,
        CONFIGS / "student/vit_large.yaml",
        ["geometry.size=224", "geometry.frames=16", "geometry.frame_step=4"],
    )
    cache = plan(None, student, 0, 10, 3072, 3072, cache_views=8, cache_videos=660_000)["cache"]
    rows = {(r["dtype"], r["rank"]): r for r in cache["by_format"]}
    assert set(rows) == {(d, r) for d in ("fp16", "bf16", "int8") for r in (1024, 512, 256, 128)}
    assert rows[("fp16", 1024)]["bytes"] == cache["bytes"]  # the headline figure is fp16 at full rank
    tokens, frames = 1568, 150e3
    assert (
        rows[("int8", 256)]["bytes_per_view"] == tokens * 256 + 4 * 256 + frames
    )  # int8: 1 byte + scales, no compression
    assert rows[("int8", 256)]["bytes_per_step"] == rows[("int8", 256)]["bytes_per_view"] * 3072
    assert (
        rows[("int8", 128)]["bytes"]
        < rows[("int8", 256)]["bytes"]
        < rows[("bf16", 1024)]["bytes"]
        < rows[("fp16", 1024)]["bytes"]
    )
