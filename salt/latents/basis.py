"""Low-rank targets: a PCA basis of the layer-normalised teacher latents, stored once per cache.

A low-rank cache stores, per token, the R coefficients c = (LN(x) − mean) · U of its target
instead of the D channels of x (U: the R leading principal directions, orthonormal columns). The
student gets either c itself or the reconstruction mean + c · Uᵀ, which is LN(x) less its
dropped variance. PCA ranks are nested: the first R' < R coefficients are the rank-R' cache.

The basis file (`basis.npz`: plain arrays, read with allow_pickle=False) is named and checksummed
in the manifest; `BasisFit` accumulates the covariance over a streamed sample in float64.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch

from salt.latents.errors import CacheError

BASIS_NAME = "basis.npz"
FIT_ON = "layer_norm"  # what the targets were normalised with before the fit (the reader applies nothing after)


@dataclass(frozen=True)
class TargetBasis:
    mean: np.ndarray  # float32 [D]
    components: np.ndarray  # float32 [D, R], orthonormal columns by decreasing variance
    variance: np.ndarray  # float64 [D]: every eigenvalue of the fit's covariance, descending
    fit_tokens: int  # tokens the covariance was estimated from

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def rank(self) -> int:
        return int(self.components.shape[1])

    def explained(self, rank: int | None = None) -> float:
        """Share of the fit's target variance that the first `rank` components keep."""
        total = float(self.variance.sum())
        return float(self.variance[: self.rank if rank is None else rank].sum() / total) if total > 0 else 1.0

    def project(self, targets: torch.Tensor) -> torch.Tensor:
        """Coefficients [..., R] (float32) of normalised targets [..., D]."""
        mean = torch.from_numpy(self.mean).to(targets.device)
        components = torch.from_numpy(self.components).to(targets.device)
        return (targets.float() - mean) @ components

    def reconstruct(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Normalised targets [..., D] from coefficients [..., R], on the coefficients' device."""
        if coefficients.shape[-1] != self.rank:
            raise CacheError(f"coefficients have {coefficients.shape[-1]} channels, the basis has rank {self.rank}")
        mean = torch.from_numpy(self.mean).to(coefficients.device)
        components = torch.from_numpy(self.components).to(coefficients.device)
        return coefficients.float() @ components.T + mean

    def truncate(self, rank: int) -> TargetBasis:
        if not 1 <= rank <= self.rank:
            raise CacheError(f"rank {rank} is not between 1 and this basis's rank {self.rank}")
        return TargetBasis(self.mean, np.ascontiguousarray(self.components[:, :rank]), self.variance, self.fit_tokens)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean.astype("<f4"),
            components=self.components.astype("<f4"),
            variance=self.variance.astype("<f8"),
            fit_tokens=np.array(self.fit_tokens, dtype="<i8"),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str, sha256: str | None = None) -> TargetBasis:
        """Parse a basis file; `sha256` (the manifest's) is checked first."""
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise CacheError(
                f"{source}: checksum differs from the manifest's: the basis file is damaged or from "
                "another cache; compact the cache again (salt compact-cache)"
            )
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                mean, components = arrays["mean"].astype(np.float32), arrays["components"].astype(np.float32)
                variance, fit_tokens = arrays["variance"].astype(np.float64), int(arrays["fit_tokens"])
        except (ValueError, KeyError, OSError) as error:
            raise CacheError(f"{source}: not a basis file ({error})") from None
        dim = mean.shape[0] if mean.ndim == 1 else -1
        if (
            components.ndim != 2
            or components.shape[0] != dim
            or variance.shape != (dim,)
            or not 1 <= components.shape[1] <= dim
        ):
            raise CacheError(
                f"{source}: inconsistent shapes mean {mean.shape}, "
                f"components {components.shape}, variance {variance.shape}"
            )
        return cls(mean, components, variance, fit_tokens)


def manifest_record(data: bytes, fit_samples: int, source: str) -> dict:
    """The manifest's `basis` entry for the stored basis file `data`."""
    basis = TargetBasis.from_bytes(data, BASIS_NAME)
    return {
        "file": BASIS_NAME,
        "sha256": hashlib.sha256(data).hexdigest(),
        "fit_on": FIT_ON,
        "fit_tokens": basis.fit_tokens,
        "fit_samples": fit_samples,
        "explained": basis.explained(),
        "variance_ratio": [float(v) for v in basis.variance / max(float(basis.variance.sum()), 1e-30)],
        "source": source,
    }


class BasisFit:
    """Streaming mean and covariance of normalised targets [N, D] (float64 sums), then PCA."""

    def __init__(self, dim: int):
        self.dim = dim
        self.count = 0
        self.total = np.zeros(dim, dtype=np.float64)
        self.outer = np.zeros((dim, dim), dtype=np.float64)

    def add(self, targets: torch.Tensor | np.ndarray) -> None:
        x = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets, dtype=np.float64)
        x = x.reshape(-1, self.dim)
        self.count += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def finish(self, rank: int) -> TargetBasis:
        if not 1 <= rank <= self.dim:
            raise CacheError(f"target rank {rank} must lie between 1 and the latent dim {self.dim}")
        if self.count < 2:
            raise CacheError("a basis needs at least 2 tokens to fit")
        mean = self.total / self.count
        covariance = self.outer / self.count - np.outer(mean, mean)
        values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
        # A component's sign is arbitrary: fix it (largest entry positive) so fits repeat exactly.
        signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(self.dim)])
        vectors = vectors * np.where(signs == 0, 1.0, signs)
        return TargetBasis(
            mean.astype(np.float32), np.ascontiguousarray(vectors[:, :rank], dtype=np.float32), values, self.count
        )
