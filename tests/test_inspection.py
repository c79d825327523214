"""`salt inspect`: summary, verification, statistics, comparison and pictures on tiny caches."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from salt.cache_latents import CacheJob, run_cache
from salt.cli import main, run_cli
from salt.latents import CacheError, normalise_targets, open_cache
from salt.models import build_encoder, save_encoder
from salt.tools.cache_statistics import effective_rank, mean_token_cosine, token_statistics
from salt.tools.inspection import compare_caches, summarise
from salt.tools.inspection_pictures import DPI, SUMMARY_FIGSIZE, sample_figsize, write_pictures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def caches(tmp_path_factory, synthetic_set):
    """One vit_tiny teacher (8 frames at 32²: grid 4x2x2, dim 128) and two caches of the same
    views, 6 videos x 2 views in 3 shards: fp16 in both formats, int8 as WebDataset."""
    root = tmp_path_factory.mktemp("inspect")
    torch.manual_seed(0)
    teacher = root / "teacher.pt"
    save_encoder(teacher, build_encoder("vit_tiny", img_size=32, num_frames=8, depth=2), kind="teacher")
    for name, dtype, formats in (("fp16", "fp16", ("wds", "zarr")), ("int8", "int8", ("wds",))):
        run_cache(
            CacheJob(
                teacher=str(teacher),
                data=str(synthetic_set / "train.csv"),
                out=str(root / name),
                views=2,
                max_videos=6,
                shard_videos=2,
                workers=0,
                precision="fp32",
                progress=False,
                dtype=dtype,
                formats=formats,
            )
        )
    return root


def run_inspect(*args):
    return CliRunner().invoke(main, ["inspect", *map(str, args)])


def test_healthy_cache_verifies_and_summarises(caches, tmp_path):
    result = run_inspect(caches / "fp16", "--verify", "--samples", 8, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "OK: 12 samples in 3 shards verified" in result.output
    assert "vit_tiny" not in result.output  # depth 2 is no standard size
    assert "custom (dim 128, depth 2, heads 4)" in result.output and "grid 4x2x2 = 16 tokens x dim 128" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["problems"] == [] and report["statistics"]["read"] == 8
    summary = report["summary"]
    assert summary["samples"] == 12 and summary["views_per_video"] == 2 and summary["formats"] == ["wds", "zarr"]
    assert summary["raw_latent_bytes_per_view"] == 16 * 128 * 2
    manifest = open_cache(caches / "fp16").manifest
    assert summary["compression_ratio"] == pytest.approx(16 * 128 * 2 * 12 / manifest.latent_bytes)
    # int8 stores one byte a value plus float32 scales per channel.
    assert summarise(open_cache(caches / "int8"))["raw_latent_bytes_per_view"] == 16 * 128 + 4 * 128


def test_verify_names_a_flipped_byte_and_a_truncated_shard(caches, tmp_path):
    cache = tmp_path / "broken"
    shutil.copytree(caches / "fp16", cache)
    shards = [record.name for record in open_cache(cache).manifest.shards]
    index = json.loads((cache / "wds" / f"{shards[0]}.idx.json").read_text())
    key = index["keys"][1]
    offset, size, _ = index["members"][f"{key}.latents"]
    with open(cache / "wds" / f"{shards[0]}.tar", "r+b") as tar:
        tar.seek(offset + size // 2)
        byte = tar.read(1)
        tar.seek(offset + size // 2)
        tar.write(bytes([byte[0] ^ 0xFF]))
    truncated = cache / "wds" / f"{shards[2]}.tar"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])

    result = run_inspect(cache, "--verify", "--format", "wds", "--json", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    assert f"shard {shards[0]}" in result.output and f"{key}: [wds]" in result.output and "CRC-32" in result.output
    assert f"shard {shards[2]}" in result.output and "truncated" in result.output
    assert f"shard {shards[1]}" not in result.output
    problems = json.loads((tmp_path / "r.json").read_text())["problems"]
    assert {p["shard"] for p in problems} == {shards[0], shards[2]}
    # The tar's sha256 (shard level) and the one sample whose member fails its CRC.
    assert [p["key"] for p in problems if p["shard"] == shards[0]] == [None, key]
    # Statistics still describe the readable samples and list the others.
    assert f"unreadable {key}" in result.output


def test_missing_or_corrupt_manifest_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    result = run_inspect(tmp_path / "empty")
    assert isinstance(result.exception, CacheError) and "no manifest.json" in str(result.exception)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "manifest.json").write_text("{not json")
    monkeypatch.setattr(sys, "argv", ["salt", "inspect", str(tmp_path / "garbled")])
    with pytest.raises(SystemExit) as exit_info:
        run_cli()
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "manifest.json" in message and "\n" not in message


def test_pictures_are_pngs_of_the_expected_size(caches, tmp_path):
    paths = write_pictures(open_cache(caches / "fp16", format="zarr"), tmp_path / "pictures", samples=2)
    assert [p.name for p in paths] == [
        "sample_v00000000k000.png",
        "sample_v00000005k001.png",
        "statistics.png",
        "explained_variance.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    width, height = sample_figsize(4)
    assert Image.open(paths[0]).size == (round(width * DPI), round(height * DPI))
    assert Image.open(paths[2]).size == (round(SUMMARY_FIGSIZE[0] * DPI), round(SUMMARY_FIGSIZE[1] * DPI))
    pixels = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert pixels.std() > 10  # something was drawn, not a blank canvas


def test_comparing_a_cache_with_itself_is_exact(caches):
    cache = open_cache(caches / "fp16")
    result = compare_caches(cache, cache)
    assert result["matched"] == result["compared"] == 12 and result["only_in_a"] == result["only_in_b"] == 0
    assert result["cosine"]["min"] == pytest.approx(1.0, abs=1e-6)
    assert result["mean_abs_diff"]["max"] == 0.0 and result["identical_frames"] == 12


def test_fp16_and_int8_caches_of_one_teacher_agree(caches, tmp_path):
    result = run_inspect(caches / "fp16", "--compare", caches / "int8", "--samples", 0, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    compared = json.loads((tmp_path / "r.json").read_text())["compare"]
    assert compared["matched"] == 12 and compared["identical_frames"] == 12
    assert 0.99 < compared["cosine"]["min"] < 1.0 and 0 < compared["mean_abs_diff"]["mean"] < 0.1
    assert "12 keys matched (0 only here, 0 only there)" in result.output


def test_comparing_caches_of_other_geometry_or_other_keys_is_refused(caches, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(caches / "int8", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["geometry"]["frame_step"] = 2
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="geometry differs"):
        compare_caches(open_cache(caches / "fp16"), open_cache(other))


def test_statistics_match_direct_computation():
    torch.manual_seed(0)
    # r orthonormal columns orthogonal to the all-ones vector: already centred, r equal singular values.
    centred = torch.randn(64, 10, dtype=torch.float64)
    centred -= centred.mean(dim=0)
    orthonormal, _ = torch.linalg.qr(centred)
    assert effective_rank(3 * orthonormal) == pytest.approx(10, abs=1e-6)
    assert effective_rank(torch.randn(1, 32).repeat(50, 1) * torch.rand(50, 1)) == pytest.approx(1.0, abs=1e-6)
    assert mean_token_cosine(torch.randn(1, 32).repeat(20, 1)) == pytest.approx(1.0, abs=1e-9)
    assert mean_token_cosine(torch.eye(16)) == pytest.approx(0.0, abs=1e-9)

    grid, dim = (2, 3, 3), 64
    raw = [torch.randn(18, dim) * torch.linspace(0.5, 2, dim) + 1.0 for _ in range(5)]
    targets = [normalise_targets(x) for x in raw]
    stats = token_statistics(targets, grid)
    assert stats["norm"]["mean"] == pytest.approx(dim**0.5, rel=1e-4) and stats["norm"]["std"] < 1e-3
    flat = torch.cat(targets)
    assert stats["channel"]["max_std"] == pytest.approx(float(flat.std(dim=0).max()), rel=1e-5)
    assert stats["channel"]["mean_abs_mean"] == pytest.approx(float(flat.mean(dim=0).abs().mean()), rel=1e-5)
    assert stats["effective_rank"] == pytest.approx(effective_rank(flat), rel=1e-9)
    first_step = [x[:9] for x in targets]  # t'=0: the first H'*W' tokens of each sample
    assert stats["rank_per_step"][0] == pytest.approx(effective_rank(torch.cat(first_step)), rel=1e-9)
    unit = torch.nn.functional.normalize(first_step[0].double(), dim=-1)
    pairs = unit @ unit.T
    direct = float((pairs.sum() - pairs.trace()) / (9 * 8))
    assert mean_token_cosine(first_step[0]) == pytest.approx(direct, abs=1e-9)
    raw_stats = token_statistics(raw, grid)
    assert raw_stats["norm"]["p50"] == pytest.approx(float(torch.cat(raw).norm(dim=-1).median()), rel=0.05)


def test_flat_token_norms_are_drawn_flat_not_as_noise():
    from salt.tools.inspection_pictures import _norm_range

    flat = 9.7975 + np.linspace(0, 1e-3, 8).reshape(2, 2, 2)  # the spread a final LayerNorm leaves
    (low, high), label = _norm_range([flat])
    assert high - low > 0.1 and "flat" in label
    assert _norm_range([np.linspace(1.0, 3.0, 8)]) == ((1.0, 3.0), "L2 norm")
