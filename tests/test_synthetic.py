import json

import numpy as np
from click.testing import CliRunner

from salt.cli import main
from salt.video import decode_frames, load_records, open_video
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
    assert [{k: v for k, v in s.items() if k != "bytes"} for s in summaries][0] == {
        k: v for k, v in summaries[1].items() if k != "bytes"
    }
    for index in range(spec.videos):
        first, second = (decode_frames(str(tmp_path / f / f"videos/{index:06d}.mp4"), range(8)) for f in "ab")
        assert np.abs(first.astype(int) - second.astype(int)).mean() < 1.0


def test_layout_and_balance(synthetic_set):
    train, val = load_records(synthetic_set / "train.csv"), load_records(synthetic_set / "val.csv")
    assert len(train) + len(val) == SYNTHETIC_SPEC.videos
    for records in (train, val):
        counts = np.bincount([r.label for r in records], minlength=len(CLASSES))
        assert counts.min() == counts.max() > 0
    with open_video(train[0].path) as video:
        assert video.num_frames == SYNTHETIC_SPEC.video_frames


def test_scene_holds_for_a_tubelet_and_moves_between(synthetic_set):
    """Inside one tubelet (clip frames 2j, 2j+1) the decoded frames are the same scene."""
    spec = SYNTHETIC_SPEC
    clip = list(range(0, spec.video_frames, spec.frame_step))
    within, across = [], []
    for record in load_records(synthetic_set / "train.csv"):
        if CLASSES[record.label] == "static":
            continue
        frames = decode_frames(record.path, clip).astype(np.float32)
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
    result = CliRunner().invoke(
        main, ["make-synthetic", "--out", str(tmp_path / "s"), "--videos", "16", "--size", "32"]
    )
    assert result.exit_code == 0, result.output
    assert "static" in result.output and (tmp_path / "s" / "train.csv").is_file()
    bad = CliRunner().invoke(main, ["make-synthetic", "--out", str(tmp_path / "t"), "--videos", "4"])
    assert bad.exit_code != 0 and "at least 8 videos" in bad.output


def _screen_shift(before: np.ndarray, after: np.ndarray, reach: int = 6) -> tuple[int, int]:
    """The integer (dy, dx) that best maps the centre of `before` onto `after` (least squares)."""
    a, b, n = before.astype(float), after.astype(float), before.shape[0]
    core = a[reach : n - reach, reach : n - reach]
    errors = {
        (dy, dx): np.square(b[reach + dy : n - reach + dy, reach + dx : n - reach + dx] - core).mean()
        for dy in range(-reach, reach + 1)
        for dx in range(-reach, reach + 1)
    }
    return min(errors, key=errors.get)


def _flows(spec: SyntheticSpec, videos: int, flip: bool = False) -> dict[str, np.ndarray]:
    """Screen-space shift between the first two hold periods of each video, by class."""
    flows = {name: [] for name in CLASSES}
    for index in range(videos):
        frames, label = render_video(spec, index)
        if flip:
            frames = frames[:, :, ::-1]
        flows[CLASSES[label]].append(_screen_shift(frames[0], frames[spec.hold]))
    return {name: np.array(shifts) for name, shifts in flows.items()}


def test_translations_are_in_screen_space():
    """Version 2: "up" moves the scene up the screen, "down" down, "sideways" and "shake" along
    x, whatever the texture's orientation; the three translation classes differ in mean flow."""
    spec = SyntheticSpec(videos=64, size=40, frames=8, tubelet=1, waves=2, blobs=0)
    flows = _flows(spec, 64)
    speed = 0.07 * spec.size  # the slowest class speed, pixels per period
    # Along the motion every video moves at least that far; across it the integer estimate of
    # a shift on a textured, scaled scene is off by a pixel or two at most, 0 typically.
    along = {
        "up": -flows["up"][:, 0],
        "down": flows["down"][:, 0],
        "sideways": np.abs(flows["sideways"][:, 1]),
        "shake": np.abs(flows["shake"][:, 1]),
    }
    across = {
        "up": flows["up"][:, 1],
        "down": flows["down"][:, 1],
        "sideways": flows["sideways"][:, 0],
        "shake": flows["shake"][:, 0],
    }
    for name in along:
        assert (along[name] >= speed - 1).all(), (name, along[name])
        assert np.median(np.abs(across[name])) == 0 and np.abs(across[name]).max() <= 2, (name, across[name])
    assert (flows["static"] == 0).all()
    # Version 1 (kept for old sets) turned the same translations by a random scene angle.
    old = _flows(SyntheticSpec(videos=64, size=40, frames=8, tubelet=1, waves=2, blobs=0, version=1), 64)
    assert (np.abs(old["up"][:, 1]) > 1).any() and (old["up"][:, 0] > 0).any()


def test_horizontal_flips_keep_every_label():
    """A flipped video of class c moves as some video of class c does: up/down keep their flow,
    sideways and shake take the other sign, which the same class also draws."""
    spec = SyntheticSpec(videos=64, size=40, frames=8, tubelet=1, waves=2, blobs=0)
    flows, flipped = _flows(spec, 64), _flows(spec, 64, flip=True)
    for name in CLASSES:
        np.testing.assert_array_equal(flipped[name], flows[name] * [1, -1])
    for name in ("sideways", "shake"):
        assert set(np.sign(flows[name][:, 1])) == {-1, 1}, name


def test_generator_version_1_is_reproduced():
    """Sets made before version 2 render exactly as they did (checksum of the old generator's frames)."""
    import hashlib

    frames, label = render_video(SyntheticSpec(videos=16, size=32, frames=8, tubelet=1, version=1), 7)
    assert label == 7 and frames.shape == (29, 32, 32, 3)
    assert (
        hashlib.sha256(frames.tobytes()).hexdigest()
        == "dc45f32d9cedac40d85887f4e09a0d3e9bf0fe45240533506bde1a34df6b08aa"
    )
    result = CliRunner().invoke(main, ["make-synthetic", "--out", "unused", "--generator-version", "3"])
    assert result.exit_code == 2 and "generator-version" in result.output
