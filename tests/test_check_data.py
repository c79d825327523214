"""`salt check-data`: every listed video decoded once; counts, frames, sizes, durations, labels
per class, and every failure by file or CSV line; exit status 1 when any line is unusable."""

from __future__ import annotations

import json

from click.testing import CliRunner

from salt.cli import main
from salt.video.check_data import check_data


def test_a_clean_list_is_described(tmp_path, synthetic_set):
    lines = (synthetic_set / "train.csv").read_text().splitlines()[:4]
    csv = tmp_path / "clean.csv"
    csv.write_text("".join(f"{synthetic_set / line}\n" for line in lines))
    result = CliRunner().invoke(
        main, ["check-data", str(csv), "--workers", "2", "--no-progress", "--json", str(tmp_path / "r.json")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["listed"] == report["decoded"] == 4 and not report["failed"] and not report["bad_lines"]
    assert report["sizes"] == [["80x80", 4]] and report["frames"]["min"] > 0 and report["seconds"]["max"] > 0
    assert report["labels"] == {str(int(line.split()[-1])): 1 for line in lines}
    assert "4 videos listed, 4 decode, 0 unusable" in result.output


def test_every_unusable_line_and_video_is_named(tmp_path, synthetic_set):
    good = (synthetic_set / "train.csv").read_text().splitlines()[:2]
    (tmp_path / "text.mp4").write_text("just text\n")
    csv = tmp_path / "data.csv"
    csv.write_text(
        "\n".join(
            [
                "hi",
                *(f"{synthetic_set / line}" for line in good),
                f"{synthetic_set / good[0].split()[0]} cat",
                "missing.mp4 3",
                "text.mp4 1",
                f"{synthetic_set / good[0].replace(' ', ',')}",
            ]
        )
        + "\n"
    )
    report = check_data(str(csv), workers=2, progress=False)
    assert report["listed"] == 7 and report["decoded"] == 2
    reasons = {bad["line"]: bad["reason"] for bad in report["bad_lines"]}
    assert sorted(reasons) == [1, 4, 7] and "not a video path" in reasons[1] and "label 'cat'" in reasons[4]
    assert "comma" in reasons[7]
    failed = {f["path"].rsplit("/", 1)[-1]: f["reason"] for f in report["failed"]}
    assert "file not found" in failed["missing.mp4"] and "not a decodable video" in failed["text.mp4"]
    result = CliRunner().invoke(main, ["check-data", str(csv), "--no-progress"])
    assert (
        result.exit_code == 1
        and "5 unusable" in result.output
        and "line 4: label 'cat' is not an integer" in result.output
    )
