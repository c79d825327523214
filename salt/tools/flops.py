"""`salt flops`: how a compute budget splits between teacher and student.

Counted the paper's way: 6·N·D for trained parts (forward + backward) and 2·N·D for a frozen
forward, with N the part's parameters and D the tokens it processes, using the token shares
*after* mask equalisation at the configured micro-batch (the share falls as the micro-batch
grows). Each part is also counted by torch's FLOP counter on one clip on the meta device (no
memory, no compute), which includes attention's quadratic term that 6·N·D leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from salt.masks import MultiBlockMasker
from salt.models import Predictor, build_encoder, count_params, token_grid


@dataclass
class Part:
    stage: str
    name: str
    params: int
    tokens_per_clip: float  # tokens the part processes per clip, summed over mask configurations
    trained: bool
    clips: float  # clips over the whole stage
    counted_per_clip: float  # torch FLOP counter, forward, one clip

    @property
    def flops(self) -> float:
        return (6 if self.trained else 2) * self.params * self.tokens_per_clip * self.clips

    @property
    def counted(self) -> float:
        return (3 if self.trained else 1) * self.counted_per_clip * self.clips


def token_shares(grid, masks, micro_batch: int, steps: int = 16) -> list[tuple[float, float]]:
    """(context, target) share of the tokens per mask configuration after equalisation."""
    masker = MultiBlockMasker(tuple(grid), list(masks), seed=0)
    shares = [[0.0, 0.0] for _ in masks]
    for step in range(steps):
        for i, pair in enumerate(masker(micro_batch, step)):
            shares[i][0] += pair.context_ratio / steps
            shares[i][1] += pair.target_ratio / steps
    return [tuple(s) for s in shares]


def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # a fresh counter: entering one again resets it
        fn()
    return float(counter.get_total_flops())


def _counted(
    encoder_arch: dict, predictor: dict | None, shares, frames: int, size: int, full_clip: bool
) -> tuple[float, float]:
    """Forward FLOPs of one clip for (encoder, predictor) from torch's counter on the meta device."""
    with torch.device("meta"):
        encoder = build_encoder(encoder_arch)
        clip = torch.empty(1, 3, frames, size, size)
        if full_clip:
            return _count(lambda: encoder(clip)), 0.0
        grid = encoder.grid(frames, size, size)
        tokens = grid[0] * grid[1] * grid[2]
        model = Predictor(encoder.embed_dim, **predictor)
        encoder_flops = predictor_flops = 0.0
        for index, (context, target) in enumerate(shares):
            keep = torch.arange(max(1, round(context * tokens))).unsqueeze(0)
            wanted = torch.arange(max(1, round(target * tokens))).unsqueeze(0)
            context_tokens = encoder(clip, keep=keep)
            encoder_flops += _count(lambda: encoder(clip, keep=keep))
            predictor_flops += _count(lambda: model(context_tokens, keep, wanted, grid, mask_index=index))
    return encoder_flops, predictor_flops


def masked_training_parts(
    stage: str, encoder_arch: dict, predictor: dict, masks, micro_batch: int, frames: int, size: int, clips: float
) -> list[Part]:
    """Encoder on the context tokens + predictor on context and mask tokens, per configuration."""
    grid = token_grid(encoder_arch, frames, size, size)
    tokens = grid[0] * grid[1] * grid[2]
    shares = token_shares(grid, masks, micro_batch)
    encoder_count, predictor_count = _counted(encoder_arch, predictor, shares, frames, size, full_clip=False)
    predictor_params = sum(p.numel() for p in Predictor(encoder_arch["embed_dim"], **predictor).parameters())
    return [
        Part(
            stage,
            f"encoder {encoder_arch['embed_dim']}x{encoder_arch['depth']} on context",
            count_params(encoder_arch),
            tokens * sum(c for c, _ in shares),
            True,
            clips,
            encoder_count,
        ),
        Part(
            stage,
            f"predictor {predictor['width']}x{predictor['depth']} on context + masked",
            predictor_params,
            tokens * sum(c + t for c, t in shares),
            True,
            clips,
            predictor_count,
        ),
    ]


def frozen_forward_part(stage: str, name: str, arch: dict, frames: int, size: int, clips: float) -> Part:
    grid = token_grid(arch, frames, size, size)
    tokens = grid[0] * grid[1] * grid[2]
    counted, _ = _counted(arch, None, [], frames, size, full_clip=True)
    return Part(stage, name, count_params(arch), tokens, False, clips, counted)


# Compression of stored latents by blosc-zstd, measured at 1568 tokens x 384 (docs/results.md,
# "salt bench cache"); int8 coefficients of low-rank caches measured 1.00 too ("Smaller caches").
COMPRESSION = {"fp16": 1.09, "bf16": 1.41, "int8": 1.00}
FRAME_BYTES_PER_VIEW = 150e3  # JPEG q90 frames of a 16x224² view of real video, about


def latent_bytes_per_view(tokens: int, channels: int, dtype: str) -> float:
    """Stored latent bytes of one view: `channels` per token (D, or a low-rank cache's R)."""
    itemsize = 1 if dtype == "int8" else 2
    return tokens * channels * itemsize / COMPRESSION[dtype] + (4 * channels if dtype == "int8" else 0)


def plan(
    teacher_cfg,
    student_cfg,
    teacher_steps: int,
    student_steps: int,
    teacher_batch: int,
    student_batch: int,
    cache_views: int = 0,
    cache_videos: int = 0,
    bytes_per_view: float = 0.0,
) -> dict:
    """Every part of a SALT (or V-JEPA, with student targets 'ema') run, with FLOPs."""
    parts: list[Part] = []
    teacher_arch = None
    student_cfg = planned_geometry(student_cfg, teacher_cfg)
    if teacher_cfg is not None and teacher_steps > 0:
        teacher_arch, teacher_parts = _teacher_parts(teacher_cfg, teacher_steps * teacher_batch)
        parts += teacher_parts
    clips = student_steps * student_batch
    student_arch, target_arch, student_parts = _student_parts(
        student_cfg, teacher_arch, clips, cache_views, cache_videos
    )
    parts += student_parts
    total = sum(p.flops for p in parts)
    cache = None
    if student_cfg.targets == "cache":
        frames, size = student_cfg.geometry.frames, student_cfg.geometry.size
        grid = token_grid(student_arch, frames, size, size)
        tokens = grid[0] * grid[1] * grid[2]
        cache = _cache_plan(
            tokens, target_arch["embed_dim"], cache_views * cache_videos, clips, student_batch, bytes_per_view
        )
    return {
        "parts": parts,
        "total": total,
        "teacher_share": sum(p.flops for p in parts if not p.stage.startswith("2")) / total,
        "cache": cache,
        "counted_total": sum(p.counted for p in parts),
    }


def _student_parts(student_cfg, teacher_arch: dict | None, clips: int, cache_views: int, cache_videos: int):
    """Stage 2's arch, its targets' arch (the teacher's, else its own) and parts: the encoder and
    predictor, and the forward that makes the targets (online, EMA, or once into the cache)."""
    from salt.models import resolve_arch

    geometry = student_cfg.geometry
    frames, size = geometry.frames, geometry.size
    student_arch = resolve_arch(
        student_cfg.encoder.arch, img_size=size, num_frames=frames, **student_cfg.encoder.overrides
    )
    target_arch = teacher_arch or student_arch
    predictor = {
        "out_dim": target_arch["embed_dim"],
        "width": student_cfg.predictor.width,
        "depth": student_cfg.predictor.depth,
        "num_heads": student_cfg.predictor.num_heads,
        "num_mask_tokens": len(student_cfg.masks),
        "pos_embed": student_cfg.predictor.pos_embed,
    }
    batch = student_cfg.data.batch_size
    parts = masked_training_parts("2 student", student_arch, predictor, student_cfg.masks, batch, frames, size, clips)
    if student_cfg.targets == "teacher":
        parts.append(
            frozen_forward_part("2 student", "teacher forward, online (frozen)", target_arch, frames, size, clips)
        )
    elif student_cfg.targets == "ema":
        parts.append(frozen_forward_part("2 student", "EMA target encoder forward", student_arch, frames, size, clips))
    else:
        name = f"teacher forward, once ({cache_views} views x {cache_videos} videos)"
        parts.append(frozen_forward_part("1b cache", name, target_arch, frames, size, cache_views * cache_videos))
    return student_arch, target_arch, parts


def planned_geometry(student_cfg, teacher_cfg):
    """The student config with the clip geometry, patch and tubelet a run takes from its cache
    (salt.training.config.with_cache_geometry): the cache the plan's teacher writes (its view and
    patch), else the manifest at cache.path when the config leaves geometry to it; a complete
    geometry without a teacher is planned as configured."""
    from salt.config import ConfigError
    from salt.models import resolve_arch
    from salt.training.config import with_cache_geometry

    if teacher_cfg is not None:
        view = teacher_cfg.data.view
        arch = resolve_arch(teacher_cfg.encoder.arch, **teacher_cfg.encoder.overrides)
        geometry = {"frames": view.frames, "frame_step": view.frame_step, "size": view.size}
        geometry |= {"patch": arch["patch_size"], "tubelet": arch["tubelet_size"]}
        return with_cache_geometry(student_cfg, geometry)
    given = student_cfg.geometry
    if given.frames and given.frame_step and given.size:
        return student_cfg
    from salt.latents import CacheError, load_manifest

    try:
        return with_cache_geometry(student_cfg, load_manifest(student_cfg.cache.path).geometry)
    except CacheError as err:
        raise ConfigError(
            f"the student's clip geometry is its cache's, and {student_cfg.cache.path} cannot tell it ({err}) — "
            "plan with --teacher-config (the cache it writes), or --student-set geometry.frames=… geometry.size=… "
            "geometry.frame_step=… (and encoder.overrides.patch_size=…)"
        ) from None


def _teacher_parts(teacher_cfg, clips: int) -> tuple[dict, list[Part]]:
    """Stage 1's arch and parts: the encoder on the context and the pixel decoder."""
    from salt.models import resolve_arch

    view = teacher_cfg.data.view
    overrides = teacher_cfg.encoder.overrides
    arch = resolve_arch(teacher_cfg.encoder.arch, img_size=view.size, num_frames=view.frames, **overrides)
    decoder = {
        "out_dim": arch["tubelet_size"] * arch["patch_size"] ** 2 * 3,  # pixels of a tubelet patch
        "width": teacher_cfg.decoder.width,
        "depth": teacher_cfg.decoder.depth,
        "num_heads": teacher_cfg.decoder.num_heads,
        "num_mask_tokens": len(teacher_cfg.masks),
        "pos_embed": teacher_cfg.decoder.pos_embed,
    }
    batch = teacher_cfg.data.batch_size
    return arch, masked_training_parts(
        "1 teacher", arch, decoder, teacher_cfg.masks, batch, view.frames, view.size, clips
    )


def _cache_plan(tokens: int, dim: int, views: int, clips: int, batch: int, bytes_per_view: float) -> dict:
    """A cache's size and read bandwidth, as made (fp16 unless measured) and per stored dtype and rank."""
    per_view = bytes_per_view or latent_bytes_per_view(tokens, dim, "fp16") + FRAME_BYTES_PER_VIEW
    return {
        "views": views,
        "bytes_per_view": per_view,
        "bytes": per_view * views,
        "bytes_per_step": per_view * batch,
        "epochs_over_views": clips / max(1, views),
        "by_format": [
            {"dtype": dtype, "rank": rank, "bytes_per_view": b, "bytes": b * views, "bytes_per_step": b * batch}
            for dtype in COMPRESSION
            for rank in (dim, dim // 2, dim // 4, dim // 8)
            if rank >= 1
            for b in [latent_bytes_per_view(tokens, rank, dtype) + FRAME_BYTES_PER_VIEW]
        ],
    }


def format_plan(result: dict) -> str:
    lines = [f"{'stage':<10}{'part':<62}{'params':>9}{'tokens/clip':>12}{'clips':>10}{'6ND/2ND':>11}{'counter':>11}"]
    for p in result["parts"]:
        lines.append(
            f"{p.stage:<10}{p.name:<62}{p.params / 1e6:>8.1f}M{p.tokens_per_clip:>12.0f}{p.clips:>10.3g}"
            f"{p.flops:>11.3g}{p.counted:>11.3g}"
        )
    lines.append(
        f"total: {result['total']:.3g} FLOPs the paper's way (6ND/2ND), {result['counted_total']:.3g} by torch's "
        f"counter (with attention); teacher side (stage 1 + caching or online teacher): {result['teacher_share']:.1%}"
    )
    cache = result["cache"]
    if cache:
        lines.append(
            f"cache: {cache['views']:.3g} views x {cache['bytes_per_view'] / 1e6:.2f} MB = "
            f"{cache['bytes'] / 1e12:.2f} TB; reads {cache['bytes_per_step'] / 1e9:.2f} GB per "
            f"student step; the student sees each view {cache['epochs_over_views']:.1f} times"
        )
        full = cache["by_format"][0]["bytes"]
        lines.append(
            "cache by stored dtype and target rank (salt compact-cache; "
            f"+{FRAME_BYTES_PER_VIEW / 1e3:.0f} kB of frames a view):"
        )
        lines.append(f"  {'dtype':<6}{'rank':>6}{'MB/view':>10}{'total TB':>10}{'GB/step':>10}{'vs fp16 full':>14}")
        for row in cache["by_format"]:
            lines.append(
                f"  {row['dtype']:<6}{row['rank']:>6}{row['bytes_per_view'] / 1e6:>10.3f}{row['bytes'] / 1e12:>10.2f}"
                f"{row['bytes_per_step'] / 1e9:>10.2f}{row['bytes'] / full:>13.2f}x"
            )
    return "\n".join(lines)
