import json

import numpy as np
from click.testing import CliRunner

from salt.cli import main
from salt.video import load_records, open_reader, read_frames
from salt.video.synthetic import CLASSES, SyntheticSpec, make_synthetic, render_video, single_frame_baseline
from tests.conftest import SYNTHETIC_SPEC


def test_deterministic_for_a_seed(tmp_path, synthetic_set):
    spec = SyntheticSpec(videos=16, seed=SYNTHETIC_SPEC.seed, size=SYNTHETIC_SPEC.size)
    make_synthetic(tmp_path / "a", spec)
    frames, label = render_video(spec, 3)
    again, label_again = render_video(spec, 3)
    np.testing.assert_array_equal(frames, again)
    assert label == label_again == 3
    other, _ = render_video(SyntheticSpec(videos=16, seed=SYNTHETIC_SPEC.seed + 1, size=SYNTHETIC_SPEC.size), 3)
    assert not np.array_equal(frames, other)
    make_synthetic(tmp_path / "b", spec)
    # Labels, splits and every rendered frame are exact for a seed. The mp4 bytes are libx264's
    # (not always reproducible: see write_mp4), so the videos are compared decoded, within the
    # codec's noise, and the summary without its byte count.
    for name in ("train.csv", "val.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    summaries = [json.loads((tmp_path / f / "synthetic.json").read_text()) for f in "ab"]
    assert [{k: v for k, v in s.items() if k != "bytes"} for s in summaries][0] == \
        {k: v for k, v in summaries[1].items() if k != "bytes"}
    for index in range(spec.videos):
        first, second = (read_frames(open_reader(str(tmp_path / f / f"videos/{index:06d}.mp4")), list(range(8))) for f in "ab")
        assert np.abs(first.astype(int) - second.astype(int)).mean() < 1.0


def test_layout_and_balance(synthetic_set):
    train, val = load_records(synthetic_set / "train.csv"), load_records(synthetic_set / "val.csv")
    assert len(train) + len(val) == SYNTHETIC_SPEC.videos
    for records in (train, val):
        counts = np.bincount([r.label for r in records], minlength=len(CLASSES))
        assert counts.min() == counts.max() > 0
    reader = open_reader(train[0].path)
    assert len(reader) == SYNTHETIC_SPEC.video_frames


def test_scene_holds_for_a_tubelet_and_moves_between(synthetic_set):
    """Inside one tubelet (clip frames 2j, 2j+1) the decoded frames are the same scene."""
    spec = SYNTHETIC_SPEC
    clip = list(range(0, spec.video_frames, spec.frame_step))
    within, across = [], []
    for record in load_records(synthetic_set / "train.csv"):
        if CLASSES[record.label] == "static":
            continue
        frames = read_frames(open_reader(record.path), clip).astype(np.float32)
        within += [np.abs(frames[2 * j] - frames[2 * j + 1]).mean() for j in range(spec.frames // 2)]
        across += [np.abs(frames[2 * j + 1] - frames[2 * j + 2]).mean() for j in range(spec.frames // 2 - 1)]
    assert np.mean(within) < 2.0, "codec noise only inside a tubelet"
    assert np.mean(across) > 10 * np.mean(within)


def test_single_frame_classifier_is_near_chance(synthetic_set):
    """Labels need motion: logistic regression on one frame's pixels is near chance (1/8)."""
    train, val = load_records(synthetic_set / "train.csv"), load_records(synthetic_set / "val.csv")
    accuracies = single_frame_baseline(train, val, frame_indices=(0, 28, 60))
    # 16 val videos per frame index, 48 predictions in all; chance is 0.125.
    assert np.mean(accuracies) < 0.30, accuracies


def test_cli_make_synthetic(tmp_path):
    result = CliRunner().invoke(main, ["make-synthetic", "--out", str(tmp_path / "s"), "--videos", "16", "--size", "32"])
    assert result.exit_code == 0, result.output
    assert "static" in result.output and (tmp_path / "s" / "train.csv").is_file()
    bad = CliRunner().invoke(main, ["make-synthetic", "--out", str(tmp_path / "t"), "--videos", "4"])
    assert bad.exit_code != 0 and "at least 8 videos" in bad.output
