"""A newcomer's first hour (issue 29): the bad inputs a new user tried, through the `salt`
command line. Each gives one line `error: …` with the right exit status and no traceback, and
leaves nothing behind that blocks the corrected rerun. Most run in this process (`run_cli`, the
console script's entry point) so the table costs imports once; the S3 and permission cases and
one empty-cache student run in a child process, as users run them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import cache_args, free_port, salt

pytestmark = pytest.mark.timeout(600)


def one_error_line(code: int, err: str, expected: int, *named: str) -> str:
    assert code == expected, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    assert all(name in errors[0] for name in named), errors[0]
    return errors[0]


def good_lines(synthetic_set: Path, count: int = 2) -> list[str]:
    return [f"{synthetic_set / line}" for line in (synthetic_set / "train.csv").read_text().splitlines()[:count]]


CSV_CASES = {  # what a user wrote -> what the one line must say
    "hi": (lambda first: "hi\n", "is not a video path"),
    "comma-separated": (lambda first: first.replace(" ", ",") + "\n", "comma"),
    "text label": (lambda first: first.rsplit(" ", 1)[0] + " cat\n", "label 'cat' is not an integer"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_unusable_csv_lines_are_refused_naming_the_line(tmp_path, cli, teacher, synthetic_set, case):
    write, named = CSV_CASES[case]
    csv = tmp_path / "data.csv"
    csv.write_text(write(good_lines(synthetic_set, 1)[0]))
    code, err = cli(*cache_args(teacher, csv, tmp_path / "cache"))
    one_error_line(code, err, 1, f"{csv}:1:", named)
    assert not (tmp_path / "cache").exists()  # nothing to block the corrected rerun


@pytest.mark.parametrize(
    "option, value",
    [
        ("--jpeg-quality", "200"),
        ("--frame-step", "0"),
        ("--decode-timeout", "0"),
        ("--max-skipped", "2"),
        ("--views", "0"),
    ],
)
def test_out_of_range_options_are_refused_before_anything_starts(tmp_path, cli, teacher, synthetic_set, option, value):
    code, err = cli(*cache_args(teacher, synthetic_set / "train.csv", tmp_path / "cache", option, value))
    one_error_line(code, err, 2, option, value, "--help")
    assert not (tmp_path / "cache").exists()


def test_a_cache_of_nothing_fails_naming_the_videos_and_the_fixed_rerun_completes(
    tmp_path, cli, teacher, synthetic_set
):
    """Paths relative to the wrong folder: every video is missing. Nothing is cached, the run
    fails naming them; once the list is fixed in place, the same command completes."""
    csv = tmp_path / "data.csv"
    names = [Path(line.split(" ")[0]).name for line in good_lines(synthetic_set)]
    csv.write_text("".join(f"videos/{name} {i}\n" for i, name in enumerate(names)))
    args = cache_args(teacher, csv, tmp_path / "cache", views=1, videos=2)
    line = one_error_line(*cli(*args), 1, "no view was cached", f"videos/{names[0]}: file not found", "salt check-data")
    assert not (tmp_path / "cache" / "manifest.json").exists(), line
    csv.write_text("".join(f"{line}\n" for line in good_lines(synthetic_set)))
    code, err = cli(*args)
    assert code == 0, err
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["sample_count"] == 2


def test_more_skipped_than_allowed_stops_and_names_them(tmp_path, cli, teacher, synthetic_set):
    (tmp_path / "text.mp4").write_text("not a video, just a name\n")
    csv = tmp_path / "data.csv"
    csv.write_text(f"{tmp_path / 'text.mp4'} 0\n" + "".join(f"{line}\n" for line in good_lines(synthetic_set, 3)))
    args = cache_args(teacher, csv, tmp_path / "cache", views=1, videos=4)
    one_error_line(*cli(*args), 1, "1 of 4 videos", "text.mp4", "--max-skipped")
    code, err = cli(*args, "--max-skipped", "0.25")  # the user accepts the loss: the rerun completes, and says so
    assert code == 0, err
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["sample_count"] == 3 and [Path(s["path"]).name for s in manifest["skipped"]] == ["text.mp4"]


def test_unknown_encoder_size_is_one_line_with_the_list(tmp_path, cli, synthetic_set):
    line = one_error_line(
        *cli(
            "probe",
            "--random-init",
            "vit_tinyy",
            "--train",
            synthetic_set / "train.csv",
            "--val",
            synthetic_set / "val.csv",
        ),
        1,
        "vit_tinyy",
        "vit_tiny,",
    )
    assert "salt models" in line


def test_probe_refuses_a_garbage_csv_and_a_split_with_a_missing_video(tmp_path, cli, synthetic_set):
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("this is not\na list of videos\n")
    base = [
        "probe",
        "--random-init",
        "vit_tiny",
        "--arch",
        "img_size=32",
        "--arch",
        "num_frames=8",
        "--arch",
        "depth=1",
        "--protocol",
        "linear",
        "--set",
        "train_views=1",
        "--set",
        "eval_clips=1",
        "--set",
        "eval_spatial=1",
        "--set",
        "workers=0",
        "--set",
        "linear.epochs=1",
        "--no-progress",
    ]
    one_error_line(*cli(*base, "--train", garbage, "--val", synthetic_set / "val.csv"), 1, f"{garbage}:1:")
    val = tmp_path / "val.csv"
    val.write_text("".join(f"{line}\n" for line in good_lines(synthetic_set, 2)) + f"{tmp_path / 'gone.mp4'} 1\n")
    train = tmp_path / "train.csv"
    train.write_text("".join(f"{line}\n" for line in good_lines(synthetic_set, 2)))
    one_error_line(
        *cli(*base, "--train", train, "--val", val), 1, "1 videos are missing", "gone.mp4", "--allow-missing"
    )
    code, err = cli(*base, "--train", train, "--val", val, "--allow-missing", "--out", tmp_path / "probe.json")
    assert code == 0, err
    report = json.loads((tmp_path / "probe.json").read_text())
    assert report["val_videos"] == 2 and [Path(s["path"]).name for s in report["skipped"]["val"]] == ["gone.mp4"]


@pytest.fixture
def read_only(tmp_path):
    """A folder no one may write into (as root, whom modes do not stop: immutable)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root without chattr: nothing makes a folder read-only")
    else:
        folder.chmod(0o555)
    yield folder
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)


def test_outputs_in_a_read_only_folder_are_one_line(read_only, cli, teacher, synthetic_set):
    one_error_line(
        *cli("make-synthetic", "--out", read_only / "syn", "--videos", "8"),
        1,
        "permission denied",
        str(read_only / "syn"),
    )
    one_error_line(*cli(*cache_args(teacher, synthetic_set / "train.csv", read_only / "cache")), 1, "permission denied")


def test_object_store_without_endpoint_or_credentials_is_one_line_in_seconds(tmp_path, teacher, synthetic_set):
    unreachable = {
        "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    result = salt(*cache_args(teacher, synthetic_set / "train.csv", "s3://bucket/cache"), env=unreachable, timeout=120)
    one_error_line(result.returncode, result.stderr, 1, "cannot be reached", "FSSPEC_S3_ENDPOINT_URL")
    anonymous = {
        **unreachable,
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    result = salt("inspect", "s3://bucket/cache", env=anonymous, timeout=120)
    one_error_line(result.returncode, result.stderr, 1, "no credentials", "AWS_ACCESS_KEY_ID")


def test_usage_errors_are_one_line_and_debug_keeps_the_traceback(tmp_path, cli, synthetic_set):
    one_error_line(*cli("inspect"), 2, "CACHE", "salt inspect --help")
    one_error_line(*cli("no-such-command"), 2, "no-such-command")
    missing = tmp_path / "nothing"
    one_error_line(*cli("inspect", missing), 1, str(missing))
    try:
        with pytest.raises(Exception, match=str(missing)):
            cli("--debug", "inspect", missing)
    finally:
        os.environ.pop("SALT_DEBUG", None)


def test_student_on_an_empty_cache_refuses_within_seconds(tmp_path, cli, teacher, synthetic_set):
    """A cache written before empty caches were refused (every video skipped): `inspect --verify`
    fails and a student refuses before step 1, never hangs."""
    cache = tmp_path / "cache"
    assert cli(*cache_args(teacher, synthetic_set / "train.csv", cache, views=1, videos=2))[0] == 0
    config = {
        "cache": {"path": str(cache)},
        "geometry": {"frames": 8, "frame_step": 4, "size": 32},
        "data": {"batch_size": 2, "workers": 0},
        "encoder": {"arch": "vit_tiny", "overrides": {"depth": 1}},
        "predictor": {"width": 32, "depth": 1, "num_heads": 2},
        "optim": {"steps": 2, "warmup_steps": 1},
        "run": {"out_dir": str(tmp_path / "run"), "progress": False},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(config))
    other = ("--set", "geometry.size=64", "--set", "encoder.overrides.patch_size=8")  # refused before DeepSpeed starts
    one_error_line(
        *cli("train-student", "--config", tmp_path / "s.yaml", *other),
        1,
        "size: config 64, cache 32 (--set geometry.size=32)",
        "(--set encoder.overrides.patch_size=16)",
    )
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["skipped"] = [{"video": v, "path": f"v{v}.mp4", "reason": "broken"} for v in range(2)]
    manifest["sample_count"], manifest["shards"][0]["samples"] = 0, 0
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert cli("inspect", cache, "--verify", "--samples", "0")[0] == 1
    assert "no samples" in cli.out
    result = salt("train-student", "--config", str(tmp_path / "s.yaml"), timeout=120)
    one_error_line(result.returncode, result.stderr, 1, "holds no samples", str(cache))
