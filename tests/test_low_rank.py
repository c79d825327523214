"""Low-rank (PCA) targets: the basis, `salt compact-cache`, and students trained from the result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from salt.cache_latents.compact import CompactJob, compact_cache
from salt.config import ConfigError
from salt.latents import BasisFit, CacheError, TargetBasis, load_manifest, normalise_targets, open_cache, verify
from salt.training.student import run_student
from tests.helpers import killed, salt
from tests.test_student import demo_cache, student_config  # noqa: F401  (the module's cache fixture)


def planted(tokens: int = 4000, dim: int = 48, rank: int = 6, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """Targets on a rank-`rank` subspace (strong directions) plus small isotropic noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, rank)))
    scales = np.linspace(3.0, 1.0, rank)
    return 0.5 + (rng.normal(size=(tokens, rank)) * scales) @ basis.T + noise * rng.normal(size=(tokens, dim))


def test_planted_low_rank_targets_come_back_within_their_dropped_variance():
    x = planted()
    fit = BasisFit(x.shape[1])
    fit.add(x[:1500])
    fit.add(torch.from_numpy(x[1500:]))  # streamed in pieces, numpy or torch
    basis = fit.finish(6)
    assert basis.explained() > 0.999
    assert np.allclose(basis.components.T @ basis.components, np.eye(6), atol=1e-5)
    reconstructed = basis.reconstruct(basis.project(torch.from_numpy(x).float())).numpy()
    error = ((reconstructed - x) ** 2).sum(axis=1).mean()
    dropped = basis.variance[6:].sum()  # PCA: the mean squared error on the fit data is exactly this
    assert error == pytest.approx(dropped, rel=1e-3)
    assert dropped == pytest.approx(0.01**2 * (48 - 6), rel=0.1)  # what was planted
    # Ranks are nested: a lower-rank basis is the leading columns, and fits repeat exactly.
    again = BasisFit(x.shape[1])
    again.add(x)
    assert np.array_equal(again.finish(3).components, basis.truncate(3).components)


def test_basis_bytes_round_trip_and_a_damaged_file_is_named():
    basis = BasisFit(48)
    basis.add(planted())
    basis = basis.finish(8)
    data = basis.to_bytes()
    import hashlib

    back = TargetBasis.from_bytes(data, "basis.npz", hashlib.sha256(data).hexdigest())
    for name in ("mean", "components", "variance"):
        assert np.array_equal(getattr(back, name), getattr(basis, name))
    assert back.fit_tokens == 4000
    with pytest.raises(CacheError, match="basis.npz: checksum differs"):
        TargetBasis.from_bytes(data[:-1] + b"x", "basis.npz", hashlib.sha256(data).hexdigest())
    with pytest.raises(CacheError, match="not a basis file"):
        TargetBasis.from_bytes(b"not an npz", "basis.npz")


@pytest.fixture(scope="module")
def compacted(demo_cache, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("compacted")
    out = root / "r16"
    compact_cache(CompactJob(str(demo_cache / "cache"), str(out), rank=16, dtype="int8", fit_samples=16))
    return out


def test_compacted_cache_holds_the_projected_targets_and_verifies(demo_cache, compacted):  # noqa: F811
    full, small = open_cache(demo_cache / "cache"), open_cache(compacted)
    m = small.manifest
    assert (m.target_rank, m.dim, m.latent_dtype, m.target_norm) == (16, full.manifest.dim, "int8", "none")
    assert json.loads((compacted / "manifest.json").read_text())["format_version"] == 2
    full_manifest = json.loads((demo_cache / "cache" / "manifest.json").read_text())
    assert full_manifest["format_version"] == 1 and not {"target_rank", "basis"} & set(
        full_manifest
    )  # format 1 as before
    assert small.keys() == full.keys() and verify(small) == []
    assert m.latent_bytes < full.manifest.latent_bytes / 4 and m.frame_bytes == full.manifest.frame_bytes
    for key in full.keys()[:3]:
        a, b = full.get(key), small.get(key)
        assert np.array_equal(a.frames, b.frames) and a.meta == b.meta
        assert b.latents.shape == (full.shape[0], 16)
        target = normalise_targets(a.latents)
        expected = small.basis.project(target)
        assert torch.allclose(
            b.latents, expected, atol=float(expected.abs().max()) / 127 * 0.51 + 1e-6
        )  # int8 rounding
        reconstructed = small.basis.reconstruct(b.latents)
        # The reconstruction keeps most of the target: its error is at most the dropped share (+ int8 rounding).
        residual = ((reconstructed - target) ** 2).sum() / ((target - torch.from_numpy(small.basis.mean)) ** 2).sum()
        assert float(residual) < 1 - m.basis["explained"] + 0.05


def test_compact_cache_is_resumable_after_a_kill_and_names_bad_requests(demo_cache, compacted, tmp_path):  # noqa: F811
    source = str(demo_cache / "cache")
    args = ["compact-cache", source, "--out", str(tmp_path / "r16"), "--rank", "16", "--fit-samples", "16"]
    assert killed(salt(*args, fault="kill-mid-shard"))  # inside the first shard's tar
    assert not (tmp_path / "r16" / "manifest.json").exists()
    rerun = salt(*args)
    assert rerun.returncode == 0, rerun.stderr
    files = lambda root: {p.relative_to(root): p.read_bytes() for p in sorted((root / "wds").iterdir())}  # noqa: E731
    assert files(tmp_path / "r16") == files(compacted)  # the same bytes as a run never killed
    assert (tmp_path / "r16" / "basis.npz").read_bytes() == (compacted / "basis.npz").read_bytes()
    verified = salt("inspect", str(tmp_path / "r16"), "--verify", "--samples", "0")
    assert verified.returncode == 0, verified.stderr
    too_big = salt("compact-cache", source, "--out", str(tmp_path / "x"), "--rank", "500")
    assert too_big.returncode != 0 and "--rank 500" in too_big.stderr and "dim 128" in too_big.stderr
    changed = salt("compact-cache", source, "--out", str(tmp_path / "r16"), "--rank", "8", "--fit-samples", "16")
    assert changed.returncode != 0 and "other settings" in changed.stderr and "rank" in changed.stderr
    (tmp_path / "r16" / "basis.npz").write_bytes(b"damaged")
    damaged = salt("inspect", str(tmp_path / "r16"))
    assert damaged.returncode != 0 and "basis.npz" in damaged.stderr


def test_lower_rank_from_a_low_rank_cache_keeps_the_leading_coefficients(compacted, tmp_path):
    compact_cache(CompactJob(str(compacted), str(tmp_path / "r4"), rank=4, dtype="fp16"))
    a, b = open_cache(compacted), open_cache(tmp_path / "r4")
    assert np.array_equal(b.basis.components, a.basis.components[:, :4])
    key = a.keys()[0]
    assert torch.allclose(
        b.get(key).latents, a.get(key).latents[:, :4], rtol=1e-3, atol=1e-3
    )  # fp16 of the int8 values


@pytest.mark.parametrize("mode", ["reconstructed", "coefficients"])
def test_students_train_from_a_compacted_cache(tmp_path, demo_cache, compacted, mode):  # noqa: F811
    config = student_config(
        tmp_path, demo_cache, cache={"path": str(compacted), "rank": 16, "low_rank": mode}, loss="l2"
    )
    result = run_student(str(config), ["optim.steps=3"])
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and np.isfinite(losses).all()
    assert result.objective.predictor.out_dim == (16 if mode == "coefficients" else 128)
    assert (result.objective.basis is None) == (mode == "coefficients")


def test_rank_requests_the_cache_cannot_serve_are_refused_before_step_1(tmp_path, demo_cache, compacted):  # noqa: F811
    full = str(demo_cache / "cache")
    with pytest.raises(ConfigError, match=r"coefficients, but .*cache holds full rank \(dim 128\)"):
        run_student(
            str(student_config(tmp_path, demo_cache, cache={"path": full, "low_rank": "coefficients"}, loss="l2")), []
        )
    with pytest.raises(ConfigError, match=r"cache.rank 32, but .*r16 holds rank 16 of dim 128"):
        run_student(str(student_config(tmp_path, demo_cache, cache={"path": str(compacted), "rank": 32})), [])
    with pytest.raises(ConfigError, match="needs loss: l2"):
        run_student(
            str(student_config(tmp_path, demo_cache, cache={"path": str(compacted), "low_rank": "coefficients"})), []
        )
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_low_rank_manifest_needs_its_format_version(compacted):
    data = json.loads((compacted / "manifest.json").read_text())
    from salt.latents import Manifest

    with pytest.raises(CacheError, match="format_version 1 cannot hold low-rank targets"):
        Manifest.from_json({**data, "format_version": 1})
    with pytest.raises(CacheError, match="target_norm must be 'none'"):
        Manifest.from_json({**data, "target_norm": "layer_norm"})
    assert load_manifest(compacted).basis["file"] == "basis.npz"


def test_cache_latents_with_a_target_rank_stores_the_teachers_coefficients(demo_cache, synthetic_set, tmp_path):  # noqa: F811
    from salt.cache_latents import CacheJob, run_cache
    from salt.latents.errors import CacheWriteError

    job = dict(
        teacher=str(demo_cache / "teacher.pt"),
        data=str(synthetic_set / "train.csv"),
        out=str(tmp_path / "r16"),
        views=2,
        max_videos=8,
        shard_videos=2,
        workers=0,
        precision="fp32",
        progress=False,
        formats=("wds", "zarr"),
    )
    run_cache(CacheJob(**job, target_rank=16, basis_videos=4))
    full, small = open_cache(demo_cache / "cache"), open_cache(tmp_path / "r16")
    assert small.manifest.target_rank == 16 and small.keys() == full.keys() and verify(small) == []
    assert small.manifest.basis["fit_samples"] == 8  # 4 videos x 2 views
    for key in full.keys()[::5]:
        a, b = full.get(key), small.get(key)
        assert np.array_equal(a.frames, b.frames)
        expected = small.basis.project(normalise_targets(a.latents))  # fp16 on both sides: rounding only
        assert torch.allclose(b.latents, expected, rtol=2e-3, atol=2e-2)
    with pytest.raises(CacheWriteError, match="target_rank: cache 16, now 8"):
        run_cache(CacheJob(**job, target_rank=8, basis_videos=4))
    with pytest.raises(CacheWriteError, match="--target-rank 128: the teacher's latents have 128 channels"):
        run_cache(CacheJob(**{**job, "out": str(tmp_path / "x")}, target_rank=128))


def test_inspect_shows_the_spectrum_and_measures_the_error_against_the_full_cache(demo_cache, compacted, tmp_path):  # noqa: F811
    from salt.tools.inspection import format_report, inspect_cache

    # Compared over all 16 samples the basis was fit on: the fit's dropped share is their mean, and
    # a subset of 8 can lie above it by more than int8 rounding (seen on generator version 2's set).
    report = inspect_cache(compacted, samples=16, compare=demo_cache / "cache", pictures=tmp_path / "pictures")
    spectrum = report["statistics"]["spectrum"]
    assert spectrum["rank"] == 16 and spectrum["explained"] == pytest.approx(
        load_manifest(compacted).basis["explained"]
    )
    assert spectrum["source"].startswith("basis fit on")
    compared = report["compare"]
    assert compared["ranks"] == [16, 128] and compared["identical_frames"] == 16
    # Measured against the full cache: the dropped variance plus int8 rounding, no more.
    assert spectrum["dropped"] * 0.5 < compared["relative_error"] < spectrum["dropped"] + 0.02
    text = format_report(report)
    assert "stored as 16 PCA coefficients" in text and "stored rank 16: keeps" in text and "target error:" in text
    assert (tmp_path / "pictures" / "explained_variance.png").read_bytes()[:4] == b"\x89PNG"
    full = inspect_cache(demo_cache / "cache", samples=8)["statistics"]["spectrum"]
    assert full["rank"] == 0 and full["source"] == "128 sampled tokens" and full["rank_for"]["99%"] <= 128
