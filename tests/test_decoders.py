"""Every video a user brings (issue 42), through the one decoder interface: each codec of today's
downloads, tagged colour, rotation, non-square pixels, a variable frame rate, several video
streams, files that are not videos, and decord 0.6's exact frames on H.264 (caches made before
stay valid). Every file is made here with PyAV's encoders (tests/video_zoo.py)."""

from __future__ import annotations

import importlib.util
import json
from fractions import Fraction

import av
import numpy as np
import pytest
from av.video.reformatter import ColorRange, Colorspace
from click.testing import CliRunner

from salt.cache_latents import CacheJob, CacheWriteError, run_cache
from salt.cli import main
from salt.latents import load_manifest
from salt.video import VideoDecodeError, ViewConfig, decode_frames, decode_views, decoder_version, open_video
from salt.video.synthetic import write_mp4
from tests import video_zoo
from tests.video_zoo import FRAMES, encode, pattern

HAS_DECORD = importlib.util.find_spec("decord") is not None
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed (the dev extra has it on x86_64)")


@pytest.fixture(scope="module")
def codecs(tmp_path_factory):
    return video_zoo.make_codecs(tmp_path_factory.mktemp("codecs"))


def plain_decode(path) -> np.ndarray:
    """Every frame in presentation order, PyAV's plain sequential decode: the reference."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


@pytest.mark.parametrize("name", sorted(video_zoo.CODECS))
def test_every_codec_decodes_each_frame_in_order(codecs, name):
    source = pattern()
    with open_video(codecs[name]) as video:
        assert video.num_frames == FRAMES  # webm and mkv declare no count: the packets are counted
        assert video.codec == name.split(".")[0].split("-")[0]
        frames = np.stack(video.read(range(FRAMES)))
    assert frames.shape == (FRAMES, video_zoo.HEIGHT, video_zoo.WIDTH, 3)
    errors = np.abs(frames[:, None].astype(int) - source[None].astype(int)).mean(axis=(2, 3, 4))
    np.testing.assert_array_equal(errors.argmin(axis=1), np.arange(FRAMES))  # frame i is source frame i
    assert errors.diagonal().max() < 12


@pytest.mark.parametrize("name", ["h264 gop 8.mp4", "mpeg4.avi", "vp9.webm", "av1.mkv"])
def test_random_reads_equal_a_sequential_decode(tmp_path, codecs, name):
    """Seeks to keyframes and decoding forward, in any order and across calls, give exactly the
    frames a plain decode from the start gives (B-frames, avi's decode-order index, mkv's cues)."""
    if name.startswith("h264"):
        path = encode(tmp_path / name, "libx264", pattern(40), options={"g": "8", "bf": "3"})
    else:
        path = codecs[name]
    truth = plain_decode(path)
    rng = np.random.default_rng(0)
    with open_video(path) as video:
        for _ in range(25):
            indices = rng.integers(0, len(truth), rng.integers(1, 12))
            np.testing.assert_array_equal(np.stack(video.read(indices)), truth[indices])


@pytest.mark.parametrize("codec", ["libx264", "libx265", "libvpx-vp9"])
@pytest.mark.parametrize("matrix", [Colorspace.ITU601, Colorspace.ITU709])
@pytest.mark.parametrize("levels", [ColorRange.MPEG, ColorRange.JPEG])
def test_colour_follows_the_matrix_and_range_the_file_declares(tmp_path, codec, matrix, levels):
    image = np.zeros((4, 32, 64, 3), np.uint8)
    image[:, :, :32], image[:, :, 32:] = (200, 30, 60), (20, 180, 90)  # saturated: BT.601 vs 709 differ by ~20
    options = {"x265-params": "log-level=error:crf=1"} if codec == "libx265" else {"crf": "1"}
    path = encode(tmp_path / "colour.mkv", codec, image, options=options, colorspace=matrix, color_range=levels)
    decoded = decode_frames(path).astype(int)
    inside = np.r_[4:28, 36:60]  # away from the edge, where chroma subsampling blends the two
    assert np.abs(decoded - image)[:, 4:-4, inside].max() <= 4


@pytest.mark.parametrize("rotation", [90, 180, -90])
def test_a_phone_video_stands_upright(tmp_path, rotation):
    source = pattern(4)
    path = encode(tmp_path / "phone.mp4", "libx264", source, options={"crf": "1"}, rotation=rotation)
    decoded = decode_frames(path).astype(int)
    upright = np.rot90(source, rotation // 90, axes=(1, 2)).astype(int)  # the display matrix turns counter-clockwise
    assert decoded.shape == upright.shape and np.abs(decoded - upright).mean() < 3


def test_non_square_pixels_are_shown_at_their_display_aspect(tmp_path):
    source = pattern(4)  # 64 x 48 stored pixels, each twice as wide as high: shown 128 x 48
    path = encode(tmp_path / "anamorphic.mp4", "libx264", source, options={"crf": "1"}, aspect=Fraction(2, 1))
    decoded = decode_frames(path)
    assert decoded.shape == (4, 48, 128, 3)
    assert np.abs(decoded[:, :, ::2].astype(int) - source).mean() < 4


def test_a_variable_frame_rate_is_sampled_by_time(tmp_path):
    """Frames at 0, 0.1, 0.15, 0.4, ... s: index i is the frame shown at i * (mean interval),
    to the nearest half interval, not the i-th frame of the file."""
    stamps = [0, 100, 150, 400, 450, 500, 900, 950, 1000, 1050, 1100, 1500]  # ms
    source = pattern(len(stamps))
    path = encode(
        tmp_path / "vfr.mp4", "libx264", source, options={"crf": "1"}, stamps=stamps, time_base=Fraction(1, 1000)
    )
    with open_video(path) as video:
        assert video.num_frames == len(stamps)
        decoded = np.stack(video.read(range(video.num_frames))).astype(int)
    interval = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    shown = [max(j for j, s in enumerate(stamps) if s <= i * interval + interval / 2) for i in range(len(stamps))]
    assert shown != list(range(len(stamps)))  # by counter, this would be another rule
    assert np.abs(decoded - source[shown].astype(int)).mean() < 3


def test_the_stream_decord_reads_is_read(tmp_path):
    """Two video tracks, the first marked default: the costlier one is read, as decord 0.6 did
    (FFmpeg 8's own rule would pick the default track and change an old cache's frames)."""
    path = video_zoo.two_video_streams(tmp_path / "two.mp4")
    with open_video(path) as video:
        assert video.num_frames == 14 and video.read([0])[0].shape == (32, 48, 3)
    if HAS_DECORD:
        import decord

        assert len(decord.VideoReader(str(path))) == 14


NOT_VIDEOS = {
    "audio.m4a": ("no video stream (the file holds only audio)", lambda tmp: video_zoo.audio_only(tmp / "audio.m4a")),
    "empty.mp4": (
        "no video stream (the file holds no streams)",
        lambda tmp: video_zoo.empty_container(tmp / "empty.mp4"),
    ),
    "cut.mp4": (
        "not a decodable video (cut short",
        lambda tmp: video_zoo.cut(encode(tmp / "whole.mp4", "libx264", pattern(30)), tmp / "cut.mp4", 0.6),
    ),
    "cut-faststart.mp4": (
        "cut short: the file holds",
        lambda tmp: video_zoo.cut(
            encode(tmp / "fast.mp4", "libx264", pattern(30), container_options={"movflags": "faststart"}),
            tmp / "cut-faststart.mp4",
            0.6,
        ),
    ),
    "picture.mp4": ("a still image (png)", None),
    "text.mp4": ("not a decodable video", lambda tmp: (tmp / "text.mp4").write_text("not a video\n" * 40)),
}


def make_not_video(tmp_path, name):
    make = NOT_VIDEOS[name][1]
    if make is None:
        from PIL import Image

        Image.fromarray(pattern(1)[0]).save(tmp_path / "picture.png")
        (tmp_path / "picture.png").rename(tmp_path / name)
    else:
        make(tmp_path)
    return tmp_path / name


@pytest.mark.parametrize("name", sorted(NOT_VIDEOS))
def test_a_file_that_is_not_a_video_gets_one_plain_line(tmp_path, name):
    path = make_not_video(tmp_path, name)
    with pytest.raises(VideoDecodeError) as caught:
        decode_views(str(path), 0, [0], ViewConfig(frames=4, frame_step=2, size=16))
    reason = caught.value.reason
    assert NOT_VIDEOS[name][0] in reason and "\n" not in reason
    assert not any(internal in reason for internal in ("DECORD", ".cc:", "Errno", "moov", "Invalid data"))


@needs_decord
@pytest.mark.parametrize("tagged", [False, True])
def test_the_default_decoder_gives_decord_06s_exact_frames_on_h264(tmp_path, synthetic_set, tagged):
    """Caches made with decord stay valid: on H.264 the same frame counts and the same pixels,
    window by window, as decord 0.6.0 (SALT's decoder until issue 42)."""
    rng = np.random.default_rng(0)
    frames = np.clip(pattern(90, 96, 160).astype(int) + rng.normal(0, 8, (90, 96, 160, 1)), 0, 255).astype(np.uint8)
    extra = dict(colorspace=Colorspace.ITU709, color_range=ColorRange.MPEG) if tagged else {}
    path = encode(tmp_path / "clip.mp4", "libx264", frames, options={"g": "30", "bf": "3"}, rate=30, **extra)
    videos = [path, *sorted((synthetic_set / "videos").glob("*.mp4"))[:3]]
    cfg = dict(frames=8, frame_step=3, size=32, seed=1)
    for video in videos:
        with open_video(video) as ours, open_video(video, decoder="decord") as theirs:
            assert ours.num_frames == theirs.num_frames and theirs._fallback is None
            for start in rng.integers(0, ours.num_frames - 22, 4):
                window = range(start, start + 22, 3)
                np.testing.assert_array_equal(np.stack(ours.read(window)), np.stack(theirs.read(window)))
        by_pyav = decode_views(str(video), 3, [0, 1, 2], ViewConfig(**cfg))
        by_decord = decode_views(str(video), 3, [0, 1, 2], ViewConfig(**cfg, decoder="decord"))
        for (a, params_a), (b, params_b) in zip(by_pyav, by_decord):
            assert params_a == params_b
            np.testing.assert_array_equal(a, b)


@needs_decord
def test_the_decord_decoder_hands_what_it_cannot_read_to_pyav(codecs, tmp_path):
    import decord

    with open_video(codecs["av1.mkv"], decoder="decord") as video:  # decord 0.6's FFmpeg 4.1 has no AV1
        assert video.num_frames == FRAMES and len(video.read([0, 11])) == 2
        if decord.__version__.startswith("0.6"):
            assert video._fallback is not None
    tiny = tmp_path / "tiny.mp4"  # decord 0.6 cannot copy out frames 2 px wide
    write_mp4(tiny, np.random.default_rng(0).integers(0, 255, (6, 2, 2, 3), dtype=np.uint8))
    np.testing.assert_array_equal(decode_frames(tiny, decoder="decord"), decode_frames(tiny))


def test_an_unknown_or_missing_decoder_is_named(make_video, monkeypatch):
    path = make_video()
    with pytest.raises(ValueError, match="view.decoder 'ffmpeg' is not one of pyav, decord"):
        ViewConfig(decoder="ffmpeg").validate()
    monkeypatch.setitem(__import__("sys").modules, "decord", None)  # as where decord is not installed
    with pytest.raises(VideoDecodeError, match="pip install decord2"):
        open_video(path, decoder="decord")


def test_check_data_reports_every_codec_and_the_audio_file_in_plain_words(tmp_path, codecs):
    audio = video_zoo.audio_only(tmp_path / "audio.m4a")
    csv = tmp_path / "zoo.csv"
    csv.write_text("".join(f"{path} {i % 2}\n" for i, path in enumerate([*codecs.values(), audio])))
    result = CliRunner().invoke(
        main, ["check-data", str(csv), "--workers", "2", "--no-progress", "--json", str(tmp_path / "r.json")]
    )
    report = json.loads((tmp_path / "r.json").read_text())
    assert result.exit_code == 1 and report["decoded"] == len(codecs)
    assert dict(report["codecs"]) == {"av1": 3, "hevc": 2, "h264": 1, "vp9": 1, "mpeg4": 1}
    assert report["failed"] == [
        {"path": str(audio), "reason": "no video stream (the file holds only audio); remove it from the data list"}
    ]
    assert "codecs    av1 (3)" in result.output and "audio.m4a: no video stream" in result.output


def test_cache_latents_takes_every_codec_and_records_its_decoder(tmp_path, codecs, teacher):
    csv = tmp_path / "zoo.csv"
    csv.write_text("".join(f"{path} {i % 2}\n" for i, path in enumerate(codecs.values())))
    job = dict(teacher=str(teacher), data=str(csv), out=str(tmp_path / "cache"), views=2, shard_videos=4)
    job.update(workers=0, batch_size=4, precision="fp32", progress=False, max_skipped=0.0)
    run_cache(CacheJob(**job))
    manifest = load_manifest(tmp_path / "cache")
    assert manifest.sample_count == 2 * len(codecs) and not manifest.skipped
    assert manifest.view_config["decoder"] == "pyav" and manifest.view_config["video_decoder"] == decoder_version()
    assert decoder_version().startswith(f"pyav {av.__version__} (FFmpeg ")

    settings = tmp_path / "cache" / "cache_settings.json"
    saved = json.loads(settings.read_text())
    settings.write_text(json.dumps({**saved, "video_decoder": "pyav 0.1 (FFmpeg 1)"}))
    with pytest.raises(CacheWriteError, match=r"video_decoder: cache 'pyav 0.1 \(FFmpeg 1\)', now 'pyav "):
        run_cache(CacheJob(**job))
    # A cache begun before decoders were recorded was decoded by decord: named, with the way on.
    legacy = {k: v for k, v in saved.items() if k != "video_decoder"}
    legacy["view"] = {k: v for k, v in saved["view"].items() if k != "decoder"}
    settings.write_text(json.dumps(legacy))
    with pytest.raises(CacheWriteError, match="view.decoder: cache 'decord', now 'pyav'.* rerun with --decoder decord"):
        run_cache(CacheJob(**job))
    if HAS_DECORD:
        run_cache(CacheJob(**job, decoder="decord"))  # any decord continues it
