"""Statistics of a cache's samples, on the student's targets (the manifest's normalisation
applied, a low-rank cache's coefficients reconstructed) and on the raw stored latents: token
norms, channel spread, effective rank, token cosine, the spectrum. What `salt inspect` reports
and draws (tools/inspection.py, tools/inspection_pictures.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from salt.latents import CacheError, CacheSample, LatentCache, student_targets

RANK_TOKENS = 8192  # tokens pooled for an effective rank: enough for D <= 2048, one quick eigensolve
STATS_SAMPLES = 64
PERCENTILES = (1, 5, 50, 95, 99)


def targets_of(cache: LatentCache, samples: list[CacheSample]) -> list[torch.Tensor]:
    """What a student trains on: normalised targets [N, D] (reconstructed from a low-rank cache)."""
    return [student_targets(s.latents, cache.manifest.target_norm, cache.basis) for s in samples]


def spectrum(cache: LatentCache, samples: list[CacheSample]) -> dict[str, Any]:
    """Share of the target variance per principal component, and the ranks that keep 90/95/99 %:
    from the basis fit of a low-rank cache, else from the sampled targets."""
    if cache.basis is not None:
        variance, source = cache.basis.variance, f"basis fit on {cache.basis.fit_tokens} tokens"
    else:
        tokens = torch.cat(targets_of(cache, samples)).double().numpy()
        variance = np.clip(np.linalg.eigvalsh(np.cov(tokens, rowvar=False)), 0, None)[::-1]
        source = f"{tokens.shape[0]} sampled tokens"
    ratio = variance / max(float(variance.sum()), 1e-30)
    cumulative = np.cumsum(ratio)
    kept = cache.manifest.target_rank
    return {
        "source": source,
        "ratio": ratio.tolist(),
        "rank_for": {f"{q:.0%}": int(np.searchsorted(cumulative, q) + 1) for q in (0.9, 0.95, 0.99)},
        "rank": kept,
        "explained": float(cumulative[kept - 1]) if kept else 1.0,
        # Without the full-rank latents, the reconstruction error is the fit's dropped share
        # (measured against a full cache by `--compare`).
        "dropped": float(1 - cumulative[kept - 1]) if kept else 0.0,
    }


def evenly_spaced_keys(keys, count: int) -> list[str]:
    """`count` keys spread over the whole key range (all videos, not just the first shard), of a
    list of keys or of a cache (which names only those, never listing all of its keys)."""
    total = len(keys)
    if count <= 0 or not total:
        return []
    positions = np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))
    return [keys[int(i)] for i in positions] if isinstance(keys, list) else [keys.key(int(i)) for i in positions]


def load_samples(cache: LatentCache, keys: list[str]) -> tuple[list[CacheSample], list[dict[str, str]]]:
    """Readable samples, and {key, reason} for those that fail (corruption is --verify's job to
    report in full; statistics should still describe the rest)."""
    samples, unreadable = [], []
    for key in keys:
        try:
            samples.append(cache.get(key))
        except CacheError as error:
            unreadable.append({"key": key, "reason": str(error)})
    return samples, unreadable


def effective_rank(matrix: torch.Tensor | np.ndarray) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of the
    centred matrix [tokens, D]. Equals r for r equal non-zero singular values, 1 when collapsed."""
    centred = np.asarray(matrix, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    # Singular values from the smaller Gram matrix: an eigensolve of D x D instead of an SVD of
    # 8192 x D, ten times faster for ViT-B (numpy's LAPACK: steadier here than torch's).
    gram = centred.T @ centred if centred.shape[0] >= centred.shape[1] else centred @ centred.T
    eigenvalues = np.linalg.eigvalsh(gram)
    if eigenvalues[-1] <= 0:
        return 0.0
    # Eigenvalues below 1e-12 of the largest are rounding noise (singular values below 1e-6 of
    # the largest); their square roots would otherwise add a spurious ~1e-4 to a collapsed rank.
    singular = np.sqrt(eigenvalues[eigenvalues > 1e-12 * eigenvalues[-1]])
    p = singular / singular.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_token_cosine(tokens: torch.Tensor) -> float:
    """Mean cosine similarity over pairs of distinct tokens [N, D]: near 1 means the tokens
    all point the same way (collapse); near 0 means they are spread out."""
    unit = torch.nn.functional.normalize(tokens.double(), dim=-1)
    n = unit.shape[0]
    if n < 2:
        return 1.0  # one token agrees with itself: no pair to tell spread from collapse
    # sum over all pairs of u_i . u_j = |sum u_i|^2; take away the n self-pairs (each 1).
    return float((unit.sum(dim=0).square().sum() - n) / (n * (n - 1)))


def _pooled_rank(tokens: torch.Tensor, generator: torch.Generator) -> float:
    if tokens.shape[0] > RANK_TOKENS:
        tokens = tokens[torch.randperm(tokens.shape[0], generator=generator)[:RANK_TOKENS]]
    return effective_rank(tokens)


def token_statistics(latent_list: list[torch.Tensor], grid: tuple[int, int, int], seed: int = 0) -> dict[str, Any]:
    """Statistics of a list of [N, D] token matrices laid out on `grid` (T', H', W')."""
    x = torch.stack([latents.float() for latents in latent_list])  # [S, N, D]
    samples, tokens, dim = x.shape
    steps = grid[0]
    flat = x.reshape(-1, dim)
    norms = flat.double().norm(dim=-1).numpy()
    low, high = norms.min(), norms.max()
    if high - low < 1e-6 * max(1.0, high):  # layer-normed targets: every norm is sqrt(D)
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(norms, bins=40, range=(low, high))
    channel_mean, channel_std = flat.mean(dim=0), flat.std(dim=0)
    cosines = [mean_token_cosine(sample) for sample in x]
    per_step = x.reshape(samples, steps, tokens // steps, dim)
    generator = torch.Generator().manual_seed(seed)  # the same token subsample on every run
    return {
        "samples": samples,
        "tokens": samples * tokens,
        "rank_tokens": min(samples * tokens, RANK_TOKENS),
        "max_rank": min(dim, samples * tokens),
        "norm": {
            "mean": float(norms.mean()),
            "std": float(norms.std()),
            "min": float(norms.min()),
            "max": float(norms.max()),
            **{f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(norms, PERCENTILES))},
        },
        "norm_histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        "channel": {
            "mean_abs_mean": float(channel_mean.abs().mean()),
            "min_std": float(channel_std.min()),
            "max_std": float(channel_std.max()),
            "std": channel_std.tolist(),
        },
        "effective_rank": _pooled_rank(flat, generator),
        "cosine": {"mean": float(np.mean(cosines)), "max": float(np.max(cosines))},
        "rank_per_step": [_pooled_rank(per_step[:, t].reshape(-1, dim), generator) for t in range(steps)],
        "cosine_per_step": [float(np.mean([mean_token_cosine(s[t]) for s in per_step])) for t in range(steps)],
    }


def sample_statistics(cache: LatentCache, count: int) -> dict[str, Any]:
    """Statistics over `count` evenly spaced samples: on the targets and on the raw latents."""
    samples, unreadable = load_samples(cache, evenly_spaced_keys(cache, count))
    result: dict[str, Any] = {"requested": count, "read": len(samples), "unreadable": unreadable}
    if samples:
        grid = cache.manifest.grid
        result["targets"] = token_statistics(targets_of(cache, samples), grid)
        result["raw"] = token_statistics([s.latents for s in samples], grid)
        result["spectrum"] = spectrum(cache, samples)
    return result
