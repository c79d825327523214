"""A newcomer's first day, second round (issue 37): what a new user tried again on tiny data,
through the `salt` command line. Misuse exits 2 in one line; data lists may be tab-separated;
commands that do no heavy work never import torch; a cache run names every unusable video, after
its progress bar; another teacher's cache names only what differs. (Exports: test_hf_export.py;
geometry from the cache: test_config.py and test_rope.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from salt.models import build_encoder, save_encoder
from tests.faults.test_first_hour import good_lines, one_error_line
from tests.helpers import REPO, cache_args

pytestmark = pytest.mark.timeout(600)

STUDENT = REPO / "configs/student/vit_tiny.yaml"
TEACHER = REPO / "configs/teacher/vit_tiny.yaml"


@pytest.mark.parametrize(
    "command",
    [
        ["train-student", "--config", STUDENT],
        ["train-teacher", "--config", TEACHER],
        ["flops", "--student-config", STUDENT, "--student-steps", "1", "--student-set"],
        ["reproduce", "--config", REPO / "configs/reproduce/small.yaml"],
    ],
    ids=["train-student", "train-teacher", "flops", "reproduce"],
)
def test_a_set_without_a_value_is_a_usage_error(cli, command):
    flag = [] if command[-1] == "--student-set" else ["--set"]
    line = one_error_line(*cli(*command, *flag, "optim.steps"), 2, "'optim.steps' is not KEY=VALUE", "--help")
    assert "Traceback" not in line


def test_a_set_without_a_value_exits_2_under_deepspeed_too(capsys):
    from salt.training.student import main as student_main

    with pytest.raises(SystemExit) as stopped:
        student_main(["--config", str(STUDENT), "--set", "optim.steps"])
    assert stopped.value.code == 2
    assert "'optim.steps' is not KEY=VALUE" in capsys.readouterr().err


def test_tab_separated_lists_are_read(tmp_path, synthetic_set):
    from salt.video.check_data import check_data
    from salt.video.sources import read_csv

    lines = [line.rsplit(" ", 1) for line in good_lines(synthetic_set, 3)]
    listed = tmp_path / "tabs.csv"
    listed.write_text("".join(f"{path}\t{label}\n" for path, label in lines))
    assert [(r.path, r.label) for r in read_csv(listed)] == [(path, int(label)) for path, label in lines]
    report = check_data(str(listed), progress=False)
    assert report["decoded"] == 3 and not report["bad_lines"] and not report["failed"]


TORCH_MARKER = (
    "import atexit, sys; "
    "atexit.register(lambda: print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)); "
    "from salt.cli import run_cli; sys.argv[0] = 'salt'; run_cli()"
)


def imports_torch(*args) -> tuple[bool, subprocess.CompletedProcess]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", TORCH_MARKER, *map(str, args)], env=env, capture_output=True, text=True
    )
    assert done.stderr.strip().endswith(("torch imported", "no torch")), done.stderr[-2000:]
    return done.stderr.strip().endswith("torch imported"), done


def test_commands_that_do_no_heavy_work_answer_without_importing_torch(tmp_path, synthetic_set, teacher):
    """What makes them quick (docs/results.md, "Start-up"), checked without timing: torch (and
    timm, DeepSpeed) are never imported to print help, list sizes, check a data list, or refuse a
    misused command line or a bad data list. The decoders check-data starts import no torch either
    (they describe)."""
    missing = tmp_path / "missing.csv"
    missing.write_text(f"{tmp_path / 'gone.mp4'} 0\n")
    two = tmp_path / "two.csv"
    two.write_text("".join(f"{line}\n" for line in good_lines(synthetic_set, 2)))
    (tmp_path / "hi.csv").write_text("hi\n")
    for args in (
        ["--help"],
        ["models", "*rope"],
        ["check-data", missing, "--no-progress"],
        ["check-data", two, "--no-progress"],
        ["train-student", "--config", STUDENT, "--set", "optim.steps"],
        ["export", tmp_path / "nothing.pt", "--out", tmp_path / "out"],
        cache_args(teacher, tmp_path / "hi.csv", tmp_path / "cache"),
    ):
        torch_imported, done = imports_torch(*args)
        assert not torch_imported, (args, done.stdout[-500:], done.stderr[-2000:])
    assert "gone.mp4: file not found" in imports_torch("check-data", missing)[1].stdout


def test_check_data_decodes_as_many_videos_at_a_time_as_it_has_cores(synthetic_set):
    from salt.video.check_data import check_data

    report = check_data(str(synthetic_set / "val.csv"), progress=False)
    assert report["workers"] == len(os.sched_getaffinity(0)) and report["decoded"] == report["listed"]


def test_cache_latents_names_every_unusable_video_below_its_closed_progress_bar(tmp_path, cli, teacher, synthetic_set):
    """2 of 4 videos broken: both named in the one error line (the teacher stops at the first; the
    rest is only decoded), which starts on its own line after the bar; the fixed rerun completes."""
    good = good_lines(synthetic_set, 4)
    broken = [tmp_path / "text.mp4", tmp_path / "empty.mp4"]
    broken[0].write_text("not a video, just a name\n")
    broken[1].write_bytes(b"")
    csv = tmp_path / "data.csv"
    csv.write_text(f"{good[0]}\n{broken[0]} 1\n{good[1]}\n{broken[1]} 3\n")
    args = [a for a in cache_args(teacher, csv, tmp_path / "cache", views=1, videos=4) if a != "--no-progress"]
    line = one_error_line(*cli(*args), 1, "2 of 4 videos could not be used", "text.mp4", "empty.mp4", "--max-skipped")
    assert "no view was cached" not in line  # two decode: the stop left them uncached, not the data
    csv.write_text("".join(f"{line}\n" for line in good))
    code, err = cli(*args)
    assert code == 0, err
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["sample_count"] == 4


def test_another_teachers_cache_names_only_what_differs(tmp_path, cli, teacher, synthetic_set):
    args = cache_args(teacher, synthetic_set / "train.csv", tmp_path / "cache", views=1, videos=2)
    assert cli(*args)[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    torch.manual_seed(0)  # the same sizes and weights with RoPE: only pos_embed (and the fingerprint) differ
    other = build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2)
    rope = build_encoder("vit_tiny_rope", img_size=32, num_frames=8, depth=2)
    rope.load_state_dict(other.state_dict())
    save_encoder(tmp_path / "rope.pt", rope, kind="teacher")
    args[args.index("--teacher") + 1] = str(tmp_path / "rope.pt")
    line = one_error_line(*cli(*args), 1, "teacher_arch.pos_embed: cache 'sincos3d', now 'rope'", "--overwrite")
    assert "embed_dim" not in line and len(line) < 400, line
    assert {p: p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file()} == before
