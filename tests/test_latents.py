"""The latent cache format: codecs, both storage formats, streaming, integrity checks."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from salt.latents import (
    MANIFEST_NAME,
    WDS_DIR,
    ZARR_DIR,
    CacheError,
    EncodedSample,
    LatentCodec,
    Manifest,
    ShardId,
    ShardRecord,
    ZarrCacheWriter,
    apply_target_norm,
    decode_frames,
    encode_frames,
    frames_decoder_id,
    load_manifest,
    open_cache,
    sample_key,
    split_members,
    verify,
    write_json_atomic,
    write_wds_shard,
)

# torchvision 0.29 deprecates its image codecs in favour of torchcodec (not installed here).
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

GRID = (2, 4, 4)
N, D, T, SIZE = 32, 16, 4, 32
INT8_TARGET_ERROR_BOUND = 0.02  # mean |Δ| of layer-normed targets after int8 round trip


def make_latents(video: int, view: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(video * 1000 + view)
    x = torch.randn(N, D, generator=g)
    x[:, 3] *= 8.0  # an outlier channel, as real final-norm outputs have
    return x


def make_frames(video: int, view: int) -> np.ndarray:
    t, y, x = np.meshgrid(np.arange(T), np.arange(SIZE), np.arange(SIZE), indexing="ij")
    channels = [(x * 5 + t * 7 + video * 11) % 256, (y * 3 + view * 13) % 256, (x + y + t * 17) % 256]
    return np.stack(channels, axis=-1).astype(np.uint8)


def make_meta(video: int, view: int) -> dict:
    return {
        "path": f"videos/{video:03d}.mp4",
        "label": video % 3,
        "view": view,
        "crop": [0, 1, 30, 31],
        "flip": bool(view % 2),
    }


def write_cache(
    root: Path,
    dtype: str = "fp16",
    formats=("wds", "zarr"),
    num_videos: int = 8,
    view_range=(0, 2),
    shard_videos: int = 2,
    skipped=frozenset(),
    previous: Manifest | None = None,
    compressor: dict | None | str = "default",
) -> Manifest:
    """What `salt cache-latents` does, minus decoding and the teacher."""
    codec = LatentCodec(dtype) if compressor == "default" else LatentCodec(dtype, compressor)
    views = view_range[1]
    zarr_writer = None
    if "zarr" in formats:
        zarr_writer = ZarrCacheWriter.open(
            root / ZARR_DIR, num_videos, views, N, D, dtype, codec.compressor, T, shard_videos
        )
    records = list(previous.shards) if previous else []
    for start in range(0, num_videos, shard_videos):
        shard = ShardId(start, min(start + shard_videos, num_videos), *view_range)
        wds_samples, zarr_samples = [], []
        for video, view in shard.sample_ids(set(skipped)):
            stored = codec.to_stored(make_latents(video, view))
            frames = encode_frames(make_frames(video, view), "jpeg", 90)
            meta = make_meta(video, view)
            wds_samples.append(EncodedSample(sample_key(video, view), frames, "jpg", codec.encode(stored), meta))
            zarr_samples.append((video, view, stored, frames, meta))
        wds_files = write_wds_shard(root / WDS_DIR, shard, wds_samples) if "wds" in formats else None
        zarr_bytes = zarr_writer.write_shard(shard, zarr_samples) if zarr_writer else None
        records.append(
            ShardRecord.for_shard(
                shard, len(wds_samples), wds_files and wds_files.bytes, wds_files and wds_files.sha256, zarr_bytes
            )
        )
    manifest = Manifest(
        teacher={"fingerprint": "0" * 64, "arch": "vit_tiny", "path": "teacher.pt"},
        grid=GRID,
        dim=D,
        geometry={"frames": T, "frame_step": 2, "size": SIZE, "patch": 8, "tubelet": 2},
        input_mean=(0.485, 0.456, 0.406),
        input_std=(0.229, 0.224, 0.225),
        frames_decoder=frames_decoder_id(),
        views=views,
        latent_dtype=dtype,
        compressor=codec.compressor,
        formats=list(formats),
        num_videos=num_videos,
        shards=records,
        skipped=[{"video": v, "path": f"videos/{v:03d}.mp4", "reason": "broken"} for v in sorted(skipped)],
        sample_count=sum(r.samples for r in records),
        command="pytest",
        seed=1,
    )
    write_json_atomic(root / MANIFEST_NAME, manifest.to_json())
    return manifest


def expected_latents(dtype: str, video: int, view: int) -> torch.Tensor:
    x = make_latents(video, view)
    return {"fp16": x.half().float(), "bf16": x.bfloat16().float(), "int8": x}[dtype]


def assert_same_sample(a, b) -> None:
    assert (a.key, a.video, a.view, a.meta) == (b.key, b.video, b.view, b.meta)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert torch.equal(a.latents, b.latents)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def member_offset(root: Path, shard: str, member: str) -> int:
    index = json.loads((root / WDS_DIR / f"{shard}.idx.json").read_text())
    return index["members"][member][0]


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_round_trip_both_formats_identical(tmp_path, dtype):
    write_cache(tmp_path, dtype, skipped={5})
    by_wds, by_zarr = open_cache(tmp_path, "wds"), open_cache(tmp_path, "zarr")
    assert len(by_wds) == len(by_zarr) == 7 * 2 and "v00000005k000" not in by_wds.keys()
    errors = []
    for key in by_wds.keys():
        a, b = by_wds.get(key), by_zarr.get(key)
        assert_same_sample(a, b)
        assert a.frames.shape == (T, SIZE, SIZE, 3) and a.latents.dtype == torch.float32
        assert a.meta == make_meta(a.video, a.view)
        reference = expected_latents(dtype, a.video, a.view)
        if dtype == "int8":
            errors.append(
                (apply_target_norm(a.latents, by_wds.manifest) - apply_target_norm(reference, by_wds.manifest))
                .abs()
                .mean()
            )
        else:
            assert torch.equal(a.latents, reference), "fp16/bf16 must round-trip bit-exactly"
        np.testing.assert_array_equal(a.frames, decode_frames(encode_frames(make_frames(a.video, a.view), "jpeg", 90)))
    if dtype == "int8":
        error = float(torch.stack(errors).mean())
        print(f"int8: mean |Δ| of layer-normed targets = {error:.4f}")
        assert error < INT8_TARGET_ERROR_BOUND
    assert verify(by_wds) == []


@pytest.mark.parametrize("compressor", [{"id": "zstd", "level": 3}, None])
def test_other_compressors_round_trip(tmp_path, compressor):
    write_cache(tmp_path, "bf16", num_videos=2, compressor=compressor)
    cache = open_cache(tmp_path, "wds")
    assert cache.manifest.compressor == compressor
    assert_same_sample(cache.get(0), open_cache(tmp_path, "zarr").get(0))
    assert torch.equal(cache.get(0).latents, expected_latents("bf16", 0, 0))


def test_codec_rejects_unknown_dtype_and_overflow():
    with pytest.raises(CacheError, match="latent dtype"):
        LatentCodec("fp8")
    with pytest.raises(CacheError, match="fp16 overflows"):
        LatentCodec("fp16").to_stored(torch.full((2, 2), 1e6))
    zero = LatentCodec("int8").to_stored(torch.zeros(4, 3))  # absmax 0 must not divide by zero
    assert torch.equal(LatentCodec("int8").from_stored(zero.values, zero.scales), torch.zeros(4, 3))


def test_wds_tar_is_deterministic_and_readable_by_tar_and_webdataset(tmp_path):
    first = write_cache(tmp_path / "a", "int8", formats=("wds",))
    second = write_cache(tmp_path / "b", "int8", formats=("wds",))
    assert [r.sha256 for r in first.shards] == [r.sha256 for r in second.shards]
    name = first.shards[0].name
    tar_path = tmp_path / "a" / WDS_DIR / f"{name}.tar"
    assert tar_path.read_bytes() == (tmp_path / "b" / WDS_DIR / f"{name}.tar").read_bytes()
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert names[:7] == [
        "v00000000k000.json",
        "v00000000k000.latents",
        "v00000000k000.scales",
        *[f"v00000000k000.f{i:02d}.jpg" for i in range(4)],
    ]
    if shutil.which("tar"):
        listed = subprocess.run(["tar", "tf", str(tar_path)], capture_output=True, text=True, check=True).stdout.split()
        assert listed == names
    import webdataset

    cache = open_cache(tmp_path / "a", "wds")
    dataset = webdataset.WebDataset(str(tar_path), shardshuffle=False, empty_check=False)
    seen = []
    for raw in dataset:
        key = raw["__key__"]
        members = {k: v for k, v in raw.items() if not k.startswith("__")}
        meta, fields, frames = split_members(members)
        stored = cache.codec.decode(fields, (N, D))
        expected = cache.get(key)
        assert json.loads(meta) == expected.meta
        assert torch.equal(cache.codec.from_stored(stored.values, stored.scales), expected.latents)
        np.testing.assert_array_equal(decode_frames(frames), expected.frames)
        seen.append(key)
    assert seen == ["v00000000k000", "v00000000k001", "v00000001k000", "v00000001k001"]
    # The whole cache as a plain webdataset pipeline over its shard URLs, in manifest order.
    everything = webdataset.WebDataset([str(p) for p in cache.shard_paths()], shardshuffle=False, empty_check=False)
    assert [raw["__key__"] for raw in everything] == cache.keys()


def test_stream_order_splits_and_resume(tmp_path):
    write_cache(tmp_path, "fp16", formats=("wds", "zarr"), num_videos=8, shard_videos=1)
    for fmt in ("wds", "zarr"):
        cache = open_cache(tmp_path, fmt)
        full = [s.key for s in cache.stream(seed=3, epoch=0)]
        assert full == [s.key for s in cache.stream(seed=3, epoch=0)]
        assert sorted(full) == cache.keys()
        assert full != [s.key for s in cache.stream(seed=3, epoch=1)]
        splits = [
            [s.key for s in cache.stream(3, 0, rank=r, world_size=2, worker=w, num_workers=2)]
            for r in range(2)
            for w in range(2)
        ]
        flat = [key for split in splits for key in split]
        assert sorted(flat) == cache.keys() and len(set(flat)) == len(flat)
        assert [len(s) for s in splits] == [cache.split_len(3, 0, r, 2, w, 2) for r in range(2) for w in range(2)]
        for start in (0, 1, 2, 3, 5, len(splits[1])):
            resumed = [s.key for s in cache.stream(3, 0, rank=0, world_size=2, worker=1, num_workers=2, start=start)]
            assert resumed == splits[1][start:]
    auto = open_cache(tmp_path)
    assert (auto.stream_format, auto.random_format) == ("wds", "zarr")
    with pytest.raises(CacheError, match="8 shards cannot feed 3 ranks × 3 workers"):
        auto.stream(0, 0, rank=0, world_size=3, worker=0, num_workers=3)


def test_random_access_by_index_and_key(tmp_path):
    write_cache(tmp_path, "bf16", num_videos=4)
    for fmt in ("wds", "zarr"):
        cache = open_cache(tmp_path, fmt)
        keys = cache.keys()
        assert keys == sorted(keys) and len(keys) == len(cache) == 8
        for i in (0, 3, 7, -1):
            assert cache.get(i).key == keys[i]
        sample = cache.get("v00000002k001")
        assert (sample.video, sample.view) == (2, 1)
        assert torch.equal(sample.latents, expected_latents("bf16", 2, 1))
        with pytest.raises(CacheError, match="no sample v00000009k000"):
            cache.get("v00000009k000")
        with pytest.raises(IndexError):
            cache.get(8)


@pytest.mark.parametrize("member", ["latents", "f02.jpg"])
def test_flipped_byte_detected_naming_shard_and_key(tmp_path, member):
    manifest = write_cache(tmp_path, "fp16", formats=("wds",), num_videos=4)
    shard, key = manifest.shards[1].name, "v00000003k001"
    offset = member_offset(tmp_path, shard, f"{key}.{member}")
    flip_byte(tmp_path / WDS_DIR / f"{shard}.tar", offset + 5)
    cache = open_cache(tmp_path)
    problems = verify(cache)
    assert any(p.shard == shard and p.key == key and "CRC" in p.reason for p in problems)
    assert any(p.shard == shard and p.key is None and "sha256" in p.reason for p in problems)
    with pytest.raises(CacheError, match=f"shard {shard}: sample {key}"):
        cache.get(key)
    with pytest.raises(CacheError, match=key):
        list(cache.stream(0, 0))
    skipped = []
    survivors = [s.key for s in cache.stream(0, 0, on_error="skip", on_skip=skipped.append)]
    assert len(survivors) == len(cache) - 1 and key not in survivors
    assert [(p.shard, p.key) for p in skipped] == [(shard, key)]


def test_truncated_and_missing_shards_detected(tmp_path):
    manifest = write_cache(tmp_path, "fp16", formats=("wds",), num_videos=6)
    truncated, missing = manifest.shards[0].name, manifest.shards[2].name
    tar_path = tmp_path / WDS_DIR / f"{truncated}.tar"
    tar_path.write_bytes(tar_path.read_bytes()[: member_offset(tmp_path, truncated, "v00000001k001.latents") + 10])
    (tmp_path / WDS_DIR / f"{missing}.tar").unlink()
    cache = open_cache(tmp_path)
    reasons: dict = {}
    for problem in verify(cache):
        reasons[(problem.shard, problem.key)] = reasons.get((problem.shard, problem.key), "") + problem.reason
    assert "truncated" in reasons[(truncated, None)]
    assert "truncated" in reasons[(truncated, "v00000001k001")]
    assert (truncated, "v00000000k000") not in reasons, "samples before the cut stay readable"
    assert "missing" in reasons[(missing, None)]
    with pytest.raises(CacheError, match=f"shard {missing}: missing"):
        cache.get("v00000004k000")
    skipped = []
    survivors = list(cache.stream(0, 0, on_error="skip", on_skip=skipped.append))
    assert len(survivors) == len(cache) - 1 - 4  # the cut sample and the 4 of the missing shard
    assert sorted({p.shard for p in skipped}) == sorted([truncated, missing])


def test_zarr_deleted_chunk_is_detected_not_read_as_zeros(tmp_path):
    manifest = write_cache(tmp_path, "int8", formats=("zarr",), num_videos=4)
    zarr_root = tmp_path / ZARR_DIR
    (zarr_root / "latents" / "c" / "1" / "0" / "0" / "0").unlink()  # videos 2-3, view 0
    (zarr_root / "written" / "c" / "0" / "1").unlink()  # videos 0-1, view 1
    cache = open_cache(tmp_path, "zarr")
    problems = {p.key: p.reason for p in verify(cache)}
    assert set(problems) == {"v00000002k000", "v00000003k000", "v00000000k001", "v00000001k001"}
    assert "checksum mismatch" in problems["v00000002k000"] and "not written" in problems["v00000000k001"]
    with pytest.raises(CacheError, match=f"shard {manifest.shards[1].name}: sample v00000002k000: checksum"):
        cache.get("v00000002k000")
    assert cache.get("v00000002k001").latents.abs().sum() > 0


def test_zarr_writer_refuses_misaligned_shards_and_mismatched_store(tmp_path):
    writer = ZarrCacheWriter.open(tmp_path / "z", 10, 2, N, D, "fp16", None, T, videos_per_shard=4)
    with pytest.raises(CacheError, match="do not cover whole Zarr shards of 4 videos"):
        writer.write_shard(ShardId(2, 6, 0, 1), [])
    writer.write_shard(ShardId(8, 10, 0, 2), [])  # the last, shorter Zarr shard is whole
    with pytest.raises(CacheError, match="does not match"):
        ZarrCacheWriter.open(tmp_path / "z", 10, 2, N, D + 1, "fp16", None, T, videos_per_shard=4)
    grown = ZarrCacheWriter.open(tmp_path / "z", 12, 3, N, D, "float16", None, T, videos_per_shard=4)
    assert (grown.num_videos, grown.views) == (12, 3)


def test_adding_views_keeps_old_shards_byte_identical(tmp_path):
    first = write_cache(tmp_path, "bf16", num_videos=4, view_range=(0, 2))
    old_files = {
        p: p.read_bytes()
        for p in tmp_path.rglob("*")
        if p.is_file() and p.name != "zarr.json" and p.name != MANIFEST_NAME
    }
    second = write_cache(tmp_path, "bf16", num_videos=4, view_range=(2, 3), previous=first)
    assert {p: p.read_bytes() for p in old_files} == old_files
    assert len(second.shards) == 4 and second.views == 3
    for fmt in ("wds", "zarr"):
        cache = open_cache(tmp_path, fmt)
        assert len(cache) == 12 and "v00000003k002" in cache.keys()
        assert torch.equal(cache.get("v00000003k002").latents, expected_latents("bf16", 3, 2))
        assert torch.equal(cache.get("v00000001k000").latents, expected_latents("bf16", 1, 0))
        assert sorted(s.key for s in cache.stream(0, 0)) == cache.keys()
    assert verify(open_cache(tmp_path)) == []


def test_manifest_errors_are_clear(tmp_path):
    with pytest.raises(CacheError, match="no manifest.json in .*writer has not finished"):
        load_manifest(tmp_path)
    manifest = write_cache(tmp_path, "fp16", formats=("zarr",), num_videos=2)
    path = tmp_path / MANIFEST_NAME
    good = manifest.to_json()

    def broken(**changes):
        data = {**good, **changes}
        path.write_text(json.dumps({k: v for k, v in data.items() if v is not ...}))
        return pytest.raises(CacheError, match=str(path))

    with broken(format_version=3) as error:
        load_manifest(tmp_path)
    assert "newer SALT (format 3 > 2)" in str(error.value)
    with broken(grid=[4, 4]) as error:
        load_manifest(tmp_path)
    assert "grid must be 3" in str(error.value)
    with broken(dim=0) as error:
        load_manifest(tmp_path)
    assert "dim must be" in str(error.value)
    with broken(dim=...) as error:
        load_manifest(tmp_path)
    assert "missing fields ['dim']" in str(error.value)
    with broken(sample_count=99) as error:
        load_manifest(tmp_path)
    path.write_text("{not json")
    with pytest.raises(CacheError, match="not valid JSON"):
        open_cache(tmp_path)
    assert Manifest.from_json(good) == manifest


def test_apply_target_norm_is_layer_norm_without_affine(tmp_path):
    manifest = write_cache(tmp_path, "fp16", formats=("zarr",), num_videos=2)
    x = make_latents(0, 0)
    assert torch.allclose(apply_target_norm(x, manifest), F.layer_norm(x, (D,), eps=1e-6), atol=0, rtol=0)


def test_loaded_shard_can_resume_and_written_samples_are_checked(tmp_path):
    """A shard is complete iff its tar and index exist; a leftover .tar.tmp is not a shard."""
    from salt.latents import complete_shard_files

    manifest = write_cache(tmp_path, "fp16", formats=("wds",), num_videos=2)
    shard = manifest.shards[0].shard_id
    files = complete_shard_files(tmp_path / WDS_DIR, shard)
    assert files is not None and files.sha256 == manifest.shards[0].sha256
    assert hashlib.sha256(files.tar_path.read_bytes()).hexdigest() == files.sha256
    (tmp_path / WDS_DIR / f"{shard.name}.idx.json").unlink()
    assert complete_shard_files(tmp_path / WDS_DIR, shard) is None
    with tarfile.open(fileobj=io.BytesIO(files.tar_path.read_bytes())) as tar:
        assert len(tar.getnames()) == 2 * 2 * (2 + T)


class _KeysOfSplit(torch.utils.data.IterableDataset):
    """What a student's loader does: each DataLoader worker streams its own split."""

    def __init__(self, cache, epoch: int) -> None:
        self.cache, self.epoch = cache, epoch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        for sample in self.cache.stream(5, self.epoch, worker=info.id, num_workers=info.num_workers):
            yield sample.key


def test_cache_pickles_into_spawned_workers(tmp_path):
    write_cache(tmp_path, "int8", num_videos=4)
    for fmt in ("wds", "zarr"):
        cache = open_cache(tmp_path, fmt)
        first = cache.get(3)  # opens the Zarr store in this process before workers start
        assert_same_sample(pickle.loads(pickle.dumps(cache)).get(3), first)
    loader = torch.utils.data.DataLoader(
        _KeysOfSplit(cache, epoch=1), batch_size=None, num_workers=2, multiprocessing_context="spawn"
    )
    assert sorted(loader) == cache.keys()


def test_undecodable_frames_with_good_crc_are_reported(tmp_path, monkeypatch):
    """A writer bug (not disk corruption): CRCs match, but the JPEG bytes are not an image."""
    monkeypatch.setitem(globals(), "encode_frames", lambda frames, codec, quality: [b"\xff\xd8broken"] * T)
    manifest = write_cache(tmp_path, "fp16", num_videos=2)
    for fmt in ("wds", "zarr"):
        cache = open_cache(tmp_path, fmt)
        with pytest.raises(
            CacheError, match=f"shard {manifest.shards[0].name}: sample v00000001k000: frames do not decode"
        ):
            cache.get("v00000001k000")
    problems = verify(open_cache(tmp_path))
    assert len(problems) == 2 * len(cache) and all("frames do not decode" in p.reason for p in problems)


@pytest.mark.parametrize("size, quality", [(32, 90), (64, 75), (48, 100)])
def test_jpeg_frames_decode_to_torchvisions_pixels(size, quality):
    """The reader's libjpeg-turbo decode (one call per sample, into one array) gives exactly
    the pixels of torchvision's decode_jpeg, so caches written before the switch read the same."""
    from torchvision.io import decode_jpeg

    rng = np.random.default_rng(size)
    smooth = np.cumsum(rng.integers(-9, 10, (T, size, size, 3)), axis=2)  # textured, not flat
    frames = np.clip(smooth + 128, 0, 255).astype(np.uint8)
    encoded = encode_frames(frames, "jpeg", quality)
    by_torchvision = np.stack(
        [decode_jpeg(torch.frombuffer(bytearray(b), dtype=torch.uint8)).permute(1, 2, 0).numpy() for b in encoded]
    )
    decoded = decode_frames(encoded)
    assert decoded.shape == (T, size, size, 3) and decoded.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(decoded, by_torchvision)
    from salt.latents.codecs import decode_jpeg_batch

    batch = decode_jpeg_batch([encoded, encoded[::-1]], "cpu")  # the "decode on the device" path, on a CPU
    np.testing.assert_array_equal(batch.numpy(), np.stack([decoded, decoded[::-1]]))


def test_frames_that_do_not_decode_are_named():
    good = encode_frames(make_frames(0, 0), "jpeg", 90)
    with pytest.raises(CacheError, match="frames do not decode"):
        decode_frames(good[:-1] + [good[-1][: len(good[-1]) // 2]])  # truncated
    other = encode_frames(np.zeros((1, SIZE // 2, SIZE, 3), np.uint8), "jpeg", 90)
    with pytest.raises(CacheError, match="differing shapes"):
        decode_frames(good[:-1] + other)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "int8"])
def test_partial_reads_give_the_same_sample(tmp_path, dtype):
    """stream(frames=, latents=) decodes less but never differently: the stored-width latents
    dequantise (on any device) to the same floats, the JPEG bytes decode to the same frames."""
    from salt.latents.codecs import dequantise

    write_cache(tmp_path, dtype, num_videos=4)
    for fmt in ("wds", "zarr"):
        cache = open_cache(tmp_path, fmt)
        full = list(cache.stream(2, 1))
        light = list(cache.stream(2, 1, frames="encoded", latents="stored"))
        bare = list(cache.stream(2, 1, frames="none"))
        assert [s.key for s in light] == [s.key for s in bare] == [s.key for s in full]
        for a, b, c in zip(full, light, bare):
            assert b.frames is None and c.frames is None and c.encoded_frames is None
            assert b.latents.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}[dtype]
            assert (b.latent_scales is not None) == (dtype == "int8")
            assert torch.equal(dequantise(b.latents, b.latent_scales), a.latents) and torch.equal(c.latents, a.latents)
            np.testing.assert_array_equal(decode_frames(b.encoded_frames), a.frames)
            assert b.meta == a.meta
    with pytest.raises(CacheError, match="frames must be decoded/encoded/none"):
        cache.stream(0, 0, frames="pixels")
