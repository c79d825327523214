"""The student's targets from stored latents: the manifest's normalisation, then, for a
low-rank cache, the reconstruction from its basis.

Light on purpose (torch and the basis only, not the codecs or zarr): the student's objective
calls `student_targets` on batched tensors on its device, and the inspection tools on samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from salt.latents import storage
from salt.latents.basis import BASIS_NAME, TargetBasis
from salt.latents.errors import CacheError

if TYPE_CHECKING:
    from salt.latents.manifest import Manifest

TARGET_NORM_EPS = 1e-6


def normalise_targets(latents: torch.Tensor, kind: str = "layer_norm") -> torch.Tensor:
    """`layer_norm` (no affine, over the last dim D, in float32) or `none` (unchanged)."""
    if kind == "layer_norm":
        return F.layer_norm(latents.float(), (latents.shape[-1],), eps=TARGET_NORM_EPS)
    if kind == "none":
        return latents
    raise CacheError(f"unknown target_norm {kind!r}")


def apply_target_norm(latents: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """The normalisation the manifest names for the student's targets (over the last dim D)."""
    return normalise_targets(latents, manifest.target_norm)


def student_targets(
    latents: torch.Tensor, target_norm: str = "layer_norm", basis: TargetBasis | None = None
) -> torch.Tensor:
    """What the student predicts, [..., D]: the latents as read (`[..., D]`, or `[..., R]`
    coefficients of a low-rank cache) normalised by `target_norm`, then reconstructed from
    `basis` when there is one (on the latents' device)."""
    targets = normalise_targets(latents, target_norm)
    return targets if basis is None else basis.reconstruct(targets)


def load_basis(path: str | Path, manifest: Manifest) -> TargetBasis:
    """The basis a low-rank cache names, checked against the manifest's checksum and rank."""
    location = storage.join(path, BASIS_NAME)
    try:
        data = storage.read_bytes(location)
    except FileNotFoundError:
        raise CacheError(
            f"{location}: missing; the manifest says this cache has low-rank targets and needs it. "
            "Copy the cache whole, or compact it again (salt compact-cache)"
        ) from None
    basis = TargetBasis.from_bytes(data, str(location), manifest.basis["sha256"])
    if (basis.dim, basis.rank) != (manifest.dim, manifest.target_rank):
        raise CacheError(
            f"{location}: basis of dim {basis.dim} and rank {basis.rank}, the "
            f"manifest says dim {manifest.dim} and rank {manifest.target_rank}"
        )
    return basis
