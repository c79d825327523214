import json

import torch

from salt.cache_latents import CacheJob, run_cache
from salt.models import build_encoder, save_encoder
from salt.tools.report import panel_title, pipeline_report


def test_pipeline_report_lists_every_stage(tmp_path, synthetic_set):
    torch.manual_seed(0)
    save_encoder(tmp_path / "t.pt", build_encoder("vit_tiny", img_size=32, num_frames=8, depth=1), kind="teacher")
    run_cache(
        CacheJob(
            teacher=str(tmp_path / "t.pt"),
            data=str(synthetic_set / "train.csv"),
            out=str(tmp_path / "cache"),
            max_videos=2,
            workers=0,
            progress=False,
        )
    )
    for run in ("teacher", "student"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.jsonl").write_text(
            json.dumps({"step": 5, "loss": 0.5, "elapsed_s": 12.0, "flops": 3e9}) + "\n"
        )
    probe = tmp_path / "probe.json"
    probe.write_text(
        json.dumps(
            {
                "encoder": "random-init vit_tiny",
                "classes": 8,
                "best": {"top1": 0.25, "top5": 0.75},
                "seconds": {"train_features": 1.0, "val_features": 1.0, "heads": 2.0},
            }
        )
    )
    text = pipeline_report(str(tmp_path / "teacher"), str(tmp_path / "cache"), str(tmp_path / "student"), [str(probe)])
    assert "loss 0.5000 at step 5" in text and "2 views" in text and "25.0%" in text and "12.5%" in text


def test_probe_table_lists_both_protocols_with_errors_and_margins():
    from salt.tools.report import probe_table

    def record(encoder, protocol, top1):
        return {
            "encoder": encoder,
            "protocol": protocol,
            "classes": 8,
            "val_videos": 200,
            "best": {"top1": top1, "top1_se": (top1 * (1 - top1) / 200) ** 0.5},
            "seconds": {"heads": 1.0},
        }

    lines = probe_table(
        [
            record("random-init vit_tiny", "linear", 0.14),
            record("random-init vit_tiny", "attentive", 0.40),
            record("teacher.pt", "linear", 0.30),
            record("teacher.pt", "attentive", 0.45),
        ]
    )
    assert "linear" in lines[0] and "attentive" in lines[0] and lines[0].index("linear") < lines[0].index("attentive")
    floor_row, teacher_row = lines[1], lines[2]
    assert "(floor)" in floor_row and "14.0% ± 2.5" in floor_row
    assert "30.0% ± 3.2 (+16.0)" in teacher_row and "45.0% ± 3.5 (+5.0)" in teacher_row


def test_loss_curve_panels_are_titled_by_name_and_short_folder():
    """Full paths as titles ran into each other in a row of panels: each line now fits its panel."""
    title = panel_title(
        "SALT student (supervised teacher)", "/work/benchmarks/results/reproduce-cpu-long/student_seed0"
    )
    assert title.splitlines() == ["SALT student (supervised teacher)", "reproduce-cpu-long/student_seed0"]
    long = panel_title("stage 2", "/x/" + "a" * 80 + "/run")
    assert all(len(line) <= 44 for line in long.splitlines()) and long.endswith("a/run")
