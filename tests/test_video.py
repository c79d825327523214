import numpy as np
import pytest

from salt.video import (
    IsolatedDecoder,
    VideoDecodeError,
    VideoRecord,
    ViewConfig,
    ViewParams,
    decode_views,
    load_records,
    read_csv,
    replay_view,
)
from salt.video.synthetic import write_mp4
from salt.video.views import sample_view

CFG = ViewConfig(frames=8, frame_step=2, size=32, seed=3)


def test_replay_from_params_is_bit_exact(make_video):
    path = make_video(frames=30, height=48, width=64)
    views = decode_views(str(path), video_id=5, view_indices=[0, 1, 2], cfg=CFG)
    for frames, params in views:
        assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
        restored = ViewParams.from_dict(params.to_dict())
        assert restored == params
        np.testing.assert_array_equal(replay_view(str(path), restored), frames)


def test_views_depend_only_on_seed_video_and_index(make_video):
    path = make_video(frames=40, height=48, width=64)
    first = decode_views(str(path), 5, [0, 1, 2, 3], CFG)
    # View 2 alone, or after adding more views, is unchanged: views can be added later.
    again = decode_views(str(path), 5, [2, 7], CFG)
    assert again[0][1] == first[2][1]
    np.testing.assert_array_equal(again[0][0], first[2][0])
    params = [p for _, p in first]
    assert len({(p.frame_indices, p.crop, p.flip) for p in params}) == 4, "views must differ"
    other_video = decode_views(str(path), 6, [0], CFG)[0][1]
    other_seed = decode_views(str(path), 5, [0], ViewConfig(frames=8, frame_step=2, size=32, seed=4))[0][1]
    assert (other_video.frame_indices, other_video.crop) != (params[0].frame_indices, params[0].crop)
    assert (other_seed.frame_indices, other_seed.crop) != (params[0].frame_indices, params[0].crop)


def test_crop_and_frames_stay_inside_the_video():
    cfg = ViewConfig(frames=16, frame_step=4, size=64)
    for view in range(200):
        p = sample_view(1, view, num_frames=100, height=90, width=160, cfg=cfg)
        top, left, h, w = p.crop
        assert 0 <= top and top + h <= 90 and 0 <= left and left + w <= 160
        area = h * w / (90 * 160)
        assert 0.25 <= area <= 1.0
        assert 0 <= p.frame_indices[0] and p.frame_indices[-1] < 100
        assert np.all(np.diff(p.frame_indices) == 4)


def test_short_video_repeats_last_frame(make_video):
    path = make_video(frames=5, height=48, width=64)
    ((frames, params),) = decode_views(str(path), 0, [0], CFG)
    assert params.frame_indices == (0, 2, 4, 4, 4, 4, 4, 4)
    np.testing.assert_array_equal(frames[3], frames[7])


def test_odd_sized_video(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, size=(12, 33, 47, 3), dtype=np.uint8)
    path = tmp_path / "odd.mp4"
    write_mp4(path, image, pix_fmt="yuv444p")
    ((frames, params),) = decode_views(str(path), 0, [0], CFG)
    assert frames.shape == (8, 32, 32, 3) and params.source_size == (33, 47)


def test_bytes_equal_path(make_video):
    path = make_video(frames=24)
    from_path = decode_views(str(path), 2, [0, 1], CFG)
    from_bytes = decode_views(path.read_bytes(), 2, [0, 1], CFG, name=str(path))
    for (a, pa), (b, pb) in zip(from_path, from_bytes):
        assert pa == pb
        np.testing.assert_array_equal(a, b)


def bad_files(tmp_path, make_video):
    good = make_video(frames=24)
    data = good.read_bytes()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    return {
        "zero": tmp_path / "zero.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "random": tmp_path / "random.mp4",
        "text": tmp_path / "text.mp4",
        "missing": tmp_path / "missing.mp4",
    }


def test_broken_files_raise_one_clear_error(tmp_path, make_video):
    with IsolatedDecoder("salt.video.decode:decode_views", timeout=30) as decoder:
        for kind, path in bad_files(tmp_path, make_video).items():
            with pytest.raises(VideoDecodeError) as err:
                decoder(str(path), str(path), 0, [0], CFG)
            assert str(path) in str(err.value), kind
        # The same decoder still works after the failures.
        good = make_video("good.mp4", frames=24)
        ((frames, _),) = decoder(str(good), str(good), 0, [0], CFG)
    with IsolatedDecoder(timeout=30) as decoder:  # the default: decode a VideoRecord
        ((frames, _),) = decoder(str(good), VideoRecord(0, str(good)), [0], CFG)
        assert frames.shape == (8, 32, 32, 3)


def test_isolated_equals_in_process(make_video):
    path = make_video(frames=24)
    with IsolatedDecoder() as decoder:
        isolated = decoder(str(path), VideoRecord(3, str(path)), [0, 1], CFG)
    direct = decode_views(str(path), 3, [0, 1], CFG)
    for (a, pa), (b, pb) in zip(isolated, direct):
        assert pa == pb
        np.testing.assert_array_equal(a, b)


def test_hanging_decoder_times_out_and_recovers():
    # The stub sleeps an hour: only the timeout returns this call (pytest-timeout bounds a failure;
    # no wall-clock bound here, the child's start-up time depends on the machine's load).
    with IsolatedDecoder("tests.video_stubs:hang", timeout=1.0) as decoder:
        with pytest.raises(VideoDecodeError, match="longer than 1 s"):
            decoder("hangs.mp4")
    with IsolatedDecoder("tests.video_stubs:echo", timeout=10) as decoder:
        assert decoder("x", 1, "two") == (1, "two")


def test_crashing_decoder_is_contained():
    with IsolatedDecoder("tests.video_stubs:crash", timeout=10) as decoder:
        with pytest.raises(VideoDecodeError, match="died .*signal 6"):
            decoder("crashes.mp4")
        with pytest.raises(VideoDecodeError, match="died"):
            decoder("crashes-again.mp4")  # a fresh child is started each time


def test_csv_and_folder_sources(tmp_path, make_video):
    a = make_video("a b é.mp4")
    csv = tmp_path / "list.csv"
    csv.write_text(f"{a.name} 3\n\n# comment\n{a} \n")
    records = read_csv(csv)
    assert [(r.video_id, r.path, r.label) for r in records] == [(0, str(a), 3), (1, str(a), None)]
    (tmp_path / "cls0").mkdir()
    (tmp_path / "cls1").mkdir()
    make_video("cls1/z.mp4")
    make_video("cls0/y.mp4")
    folder_records = load_records(tmp_path / "cls0").__len__(), load_records(tmp_path)
    assert folder_records[0] == 1
    labels = {r.path.split("/")[-1]: r.label for r in folder_records[1]}
    assert labels == {"a b é.mp4": None, "y.mp4": None, "z.mp4": None}  # mixed layout: no labels


def test_video_shards_read_like_files(tmp_path, synthetic_set):
    from click.testing import CliRunner

    from salt.cli import main

    out = tmp_path / "shards"
    result = CliRunner().invoke(
        main, ["make-shards", "--data", str(synthetic_set / "val.csv"), "--out", str(out), "--shard-size", "5"]
    )
    assert result.exit_code == 0, result.output
    files, sharded = load_records(synthetic_set / "val.csv"), load_records(out)
    assert len(sorted(out.glob("videos-*.tar"))) == -(-len(files) // 5)
    assert [(r.video_id, r.label) for r in files] == [(r.video_id, r.label) for r in sharded]
    for plain, packed in zip(files[:3], sharded[:3]):
        assert packed.read_bytes() == plain.read_bytes()
        ((a, pa),) = decode_views(plain.path, plain.video_id, [1], CFG)
        with IsolatedDecoder() as decoder:
            ((b, pb),) = decoder(packed.name, packed, [1], CFG)
        assert pa == pb
        np.testing.assert_array_equal(a, b)
    import tarfile

    with tarfile.open(sorted(out.glob("videos-*.tar"))[0]) as tar:  # plain tar reads it
        assert len(tar.getnames()) == 10


def test_evaluation_views_are_fixed_crops_and_even_windows():
    cfg = ViewConfig(frames=4, frame_step=2, size=16, eval_clips=2, eval_spatial=3)
    views = [sample_view(9, k, num_frames=50, height=30, width=60, cfg=cfg) for k in range(6)]
    assert [v.frame_indices[0] for v in views] == [0, 0, 0, 43, 43, 43]  # windows at the ends
    assert [v.crop for v in views[:3]] == [(0, 0, 30, 30), (0, 15, 30, 30), (0, 30, 30, 30)]
    assert not any(v.flip for v in views)
    assert [v.crop for v in views] == [v.crop for v in (sample_view(1, k, 50, 30, 60, cfg) for k in range(6))]
