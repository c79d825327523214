"""`salt cache-latents --target-rank R`: store R PCA coefficients per token instead of D channels.

The basis must exist before the first shard is written, so it is fit first, on the teacher's
latents of the requested views of `--basis-videos` videos spread evenly over the data set, and
published once: the first writer to finish its fit creates `basis.npz` (create-if-absent), and
every writer, that one included, then uses the stored file. Ranks therefore share one basis
even where their fits differ at rounding level (GPUs), and a resumed run reuses it.
"""

from __future__ import annotations

import numpy as np

from salt.cache_latents.local import decode_views
from salt.cache_latents.teacher import TeacherForward
from salt.latents import BASIS_NAME, BasisFit, TargetBasis, normalise_targets, storage
from salt.latents.errors import CacheWriteError
from salt.latents.manifest import write_bytes_atomic
from salt.video.isolated import IsolatedDecoder
from salt.video.sources import VideoRecord
from salt.video.views import ViewConfig


def basis_for(out, job, records: list[VideoRecord], view: ViewConfig, encoder) -> TargetBasis:
    """The cache's basis: the stored one, else fit now and published (first writer wins)."""
    path = storage.join(out, BASIS_NAME)
    if not storage.is_file(path):
        # First writer wins: the others keep its file and use it below.
        write_bytes_atomic(path, fit_teacher_basis(job, records, view, encoder).to_bytes(), exclusive=True)
    basis = TargetBasis.from_bytes(storage.read_bytes(path), str(path))
    if (basis.dim, basis.rank) != (encoder.embed_dim, job.target_rank):
        raise CacheWriteError(
            f"{path}: a basis of dim {basis.dim} and rank {basis.rank}, this run asks for dim "
            f"{encoder.embed_dim} and rank {job.target_rank}; use another --out or --overwrite"
        )
    return basis


def fit_teacher_basis(job, records: list[VideoRecord], view: ViewConfig, encoder) -> TargetBasis:
    count = min(job.basis_videos, len(records))
    chosen = np.unique(np.linspace(0, len(records) - 1, count).round().astype(int))
    decoder = IsolatedDecoder(timeout=job.decode_timeout)
    teacher = TeacherForward(encoder, job.precision, job.batch_size, compile=job.compile)
    fit = BasisFit(encoder.embed_dim)
    try:
        for index in chosen:
            views = decode_views(decoder, records[index], 0, job.views, view, job.frames_codec, job.jpeg_quality)
            if isinstance(views, str):
                continue  # a broken video: the main pass records it; the fit uses the others
            latents = teacher(np.stack([item["frames"] for item in views]))
            fit.add(normalise_targets(latents, "layer_norm"))
    finally:
        decoder.close()
    if fit.count == 0:
        raise CacheWriteError(
            f"--target-rank: none of the {len(chosen)} videos chosen for the basis fit decoded; "
            "check the data (salt inspect on a few of them) or raise --basis-videos"
        )
    return fit.finish(job.target_rank)
