"""`salt inspect`: what a latent cache holds, whether it is intact, and whether its targets look sane.

Everything here reads the cache through `salt.latents` only, so it works on WebDataset and Zarr
caches alike and never needs the teacher. Statistics are computed on the student's targets (the
manifest's normalisation applied) and on the raw stored latents: the targets are what training
sees, the raw latents show what the normalisation hides (token norms, outlier channels). For a
low-rank cache the targets are the stored coefficients reconstructed to D channels and "raw"
are the coefficients; its spectrum (explained variance per component) comes from its basis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt.latents import CacheError, LatentCache, open_cache, student_targets, verify
from salt.latents.codecs import STORED_NUMPY_DTYPE
from salt.tools.cache_statistics import (
    STATS_SAMPLES,
    evenly_spaced_keys,
    sample_statistics,
)


def arch_name(arch: dict[str, Any]) -> str:
    """The size's name in the registry (vit_base, ...), else "custom": the manifest stores numbers."""
    from salt.models import ARCHS

    shape = (arch.get("embed_dim"), arch.get("depth"), arch.get("num_heads"))
    return next((name for name, a in ARCHS.items() if (a["embed_dim"], a["depth"], a["num_heads"]) == shape), "custom")


def summarise(cache: LatentCache) -> dict[str, Any]:
    """The manifest, flattened into what a person wants to know first."""
    m = cache.manifest
    latent_per_view, frame_per_view = m.bytes_per_view()
    # Bytes the latents would take uncompressed in their stored dtype (+ int8's float32 scales).
    stored = m.stored_dim
    raw_per_view = m.tokens * stored * STORED_NUMPY_DTYPE[m.latent_dtype].itemsize + (
        4 * stored if m.latent_dtype == "int8" else 0
    )
    arch = m.teacher.get("arch", {})
    return {
        "path": str(cache.path),
        "teacher": {
            "fingerprint": m.teacher.get("fingerprint", ""),
            "arch_name": arch_name(arch),
            "arch": arch,
            "source": m.teacher.get("source", ""),
        },
        "geometry": dict(m.geometry),
        "grid": list(m.grid),
        "tokens": m.tokens,
        "dim": m.dim,
        "target_rank": m.target_rank,
        "latent_dtype": m.latent_dtype,
        "compressor": m.compressor,
        "target_norm": m.target_norm,
        "frames_codec": m.frames_codec,
        "jpeg_quality": m.jpeg_quality,
        "frames_decoder": m.frames_decoder,
        # Caches made before the decoder was recorded were decoded by decord (version unknown).
        "video_decoder": m.view_config.get("video_decoder", "decord (not recorded)"),
        "formats": list(m.formats),
        "samples": len(cache),
        "videos": m.num_videos - len(m.skipped_videos),
        "planned_videos": m.num_videos,
        "views_per_video": m.views,
        "shards": len(m.shards),
        "skipped": list(m.skipped),
        "latent_bytes_per_view": latent_per_view,
        "raw_latent_bytes_per_view": raw_per_view,
        "frame_bytes_per_view": frame_per_view,
        "compression_ratio": raw_per_view / latent_per_view if latent_per_view else None,
        "created": m.created,
        "command": m.command,
    }


def compare_caches(a: LatentCache, b: LatentCache, samples: int | None = None) -> dict[str, Any]:
    """Targets of two caches of the same views, sample by sample (over `samples` evenly spaced
    keys of the intersection, or all of it)."""
    ma, mb = a.manifest, b.manifest
    for name, left, right in (
        ("geometry", ma.geometry, mb.geometry),
        ("grid", ma.grid, mb.grid),
        ("dim", ma.dim, mb.dim),
    ):
        if left != right:
            raise CacheError(f"cannot compare {a.path} and {b.path}: {name} differs ({left} vs {right})")
    keys_a, keys_b = set(a.keys()), set(b.keys())
    common = sorted(keys_a & keys_b)
    if not common:
        raise CacheError(f"cannot compare {a.path} and {b.path}: no sample key in common")
    chosen = common if samples is None else evenly_spaced_keys(common, samples)
    cosines, deltas, same_frames = [], [], 0
    squared_error, target_sum, target_square, tokens = 0.0, 0.0, 0.0, 0
    for key in chosen:
        sa, sb = a.get(key), b.get(key)
        ta = student_targets(sa.latents, ma.target_norm, a.basis).double()
        tb = student_targets(sb.latents, mb.target_norm, b.basis).double()
        squared_error += float((ta - tb).square().sum())
        target_sum, target_square, tokens = (
            target_sum + ta.sum(0),
            target_square + float(ta.square().sum()),
            tokens + len(ta),
        )
        ta, tb = ta.flatten(), tb.flatten()
        # Layer-normed tokens all have norm sqrt(D), so this flat cosine is also the mean token cosine.
        cosines.append(float(torch.nn.functional.cosine_similarity(ta, tb, dim=0)))
        deltas.append(float((ta - tb).abs().mean()))
        same_frames += bool(np.array_equal(sa.frames, sb.frames))
    return {
        "a": str(a.path),
        "b": str(b.path),
        "same_teacher": ma.teacher.get("fingerprint") == mb.teacher.get("fingerprint"),
        "matched": len(common),
        "only_in_a": len(keys_a - keys_b),
        "only_in_b": len(keys_b - keys_a),
        "compared": len(chosen),
        "identical_frames": same_frames,
        **{
            name: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
            for name, v in (("cosine", cosines), ("mean_abs_diff", deltas))
        },
        # B's squared error as a share of A's target variance over the compared tokens: the same
        # measure as a basis fit's dropped share (1 - explained variance).
        "relative_error": squared_error
        / max(target_square - float((target_sum / tokens).square().sum()) * tokens, 1e-12),
        "ranks": [ma.target_rank or ma.dim, mb.target_rank or mb.dim],
        "dtypes": [ma.latent_dtype, mb.latent_dtype],
        "worst_key": chosen[int(np.argmin(cosines))],
    }


def inspect_cache(
    path: str | Path,
    format: str = "auto",
    samples: int = STATS_SAMPLES,
    run_verify: bool = False,
    compare: str | Path | None = None,
    pictures: str | Path | None = None,
    verify_shards: int = 0,
) -> dict[str, Any]:
    """Everything `salt inspect` reports, as one JSON-able dict."""
    cache = open_cache(path, format)
    report: dict[str, Any] = {"summary": summarise(cache)}
    if run_verify:
        report["problems"] = [problem._asdict() for problem in verify(cache, verify_shards)]
    if samples > 0:
        report["statistics"] = sample_statistics(cache, samples)
    if compare is not None:
        report["compare"] = compare_caches(cache, open_cache(compare), samples if samples > 0 else None)
    if pictures is not None:
        from salt.tools.inspection_pictures import PICTURE_SAMPLES, write_pictures

        report["pictures"] = [
            str(p) for p in write_pictures(cache, pictures, PICTURE_SAMPLES, report.get("statistics"))
        ]
    return report


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e6 else f"{num_bytes / 1e3:.1f} kB"


def _format_summary(s: dict[str, Any]) -> list[str]:
    arch, g = s["teacher"]["arch"], s["geometry"]
    codec = "none" if not s["compressor"] else " ".join(f"{k}={v}" for k, v in s["compressor"].items())
    ratio = f"{s['compression_ratio']:.2f}x" if s["compression_ratio"] else "n/a"
    lines = [
        f"cache       {s['path']}  (formats: {', '.join(s['formats'])})",
        f"teacher     {s['teacher']['fingerprint'][:12]}  {s['teacher']['arch_name']} (dim {arch.get('embed_dim')}, "
        f"depth {arch.get('depth')}, heads {arch.get('num_heads')})  from {s['teacher']['source']}",
        f"geometry    {g.get('frames')} frames step {g.get('frame_step')}, "
        f"{g.get('size')}px, patch {g.get('patch')}, tubelet {g.get('tubelet')}",
        f"tokens      grid {'x'.join(map(str, s['grid']))} = {s['tokens']} tokens x dim {s['dim']}"
        + (f", stored as {s['target_rank']} PCA coefficients (salt/latents/basis.py)" if s["target_rank"] else ""),
        f"latents     {s['latent_dtype']}, codec {codec}; targets = {s['target_norm']}",
        f"videos      decoded by {s['video_decoder']}",
        f"frames      {s['frames_codec']} (quality {s['jpeg_quality']}), decoder {s['frames_decoder']}",
        f"samples     {s['samples']} = {s['videos']} videos x {s['views_per_video']} views, {s['shards']} shards, "
        f"{len(s['skipped'])} of {s['planned_videos']} videos skipped",
        f"per view    latents {_size(s['latent_bytes_per_view'])} (raw {_size(s['raw_latent_bytes_per_view'])}, "
        f"compression {ratio}), frames {_size(s['frame_bytes_per_view'])}",
        f"created     {s['created']}: {s['command']}",
    ]
    lines += [f"  skipped video {e.get('video')}: {e.get('path', '')}: {e.get('reason', '')}" for e in s["skipped"]]
    return lines


def _format_statistics(st: dict[str, Any], dtype: str) -> list[str]:
    lines = [
        f"statistics over {st['read']} samples" + (f" ({len(st['unreadable'])} unreadable)" if st["unreadable"] else "")
    ]
    lines += [f"  unreadable {u['key']}: {u['reason']}" for u in st["unreadable"][:5]]
    if "targets" not in st:
        return lines
    t, r = st["targets"], st["raw"]
    rows = [
        ("token norm mean +- std", lambda s: f"{s['norm']['mean']:.3f} +- {s['norm']['std']:.3f}"),
        ("token norm p1/p50/p99", lambda s: f"{s['norm']['p1']:.2f} / {s['norm']['p50']:.2f} / {s['norm']['p99']:.2f}"),
        ("channel mean |mean|", lambda s: f"{s['channel']['mean_abs_mean']:.4f}"),
        ("channel std min/max", lambda s: f"{s['channel']['min_std']:.4f} / {s['channel']['max_std']:.4f}"),
        (f"effective rank (max {t['max_rank']})", lambda s: f"{s['effective_rank']:.1f}"),
        ("token cosine mean/max", lambda s: f"{s['cosine']['mean']:.4f} / {s['cosine']['max']:.4f}"),
    ]
    lines.append(f"  {'':28}{'targets':>24}{'raw ' + dtype:>24}")
    lines += [f"  {name:28}{show(t):>24}{show(r):>24}" for name, show in rows]
    lines.append("  per time step t'     " + "".join(f"{i:>8}" for i in range(len(t["rank_per_step"]))))
    for label, key, fmt in (("rank", "rank_per_step", "{:8.1f}"), ("cosine", "cosine_per_step", "{:8.3f}")):
        for name, s in (("targets", t), ("raw", r)):
            lines.append(f"  {label + ' ' + name:21}" + "".join(fmt.format(v) for v in s[key]))
    lines.append(
        f"  (rank over {t['rank_tokens']} of {t['tokens']} pooled tokens; cosine between tokens of one sample)"
    )
    sp = st["spectrum"]
    lines.append(
        f"  explained variance ({sp['source']}): " + ", ".join(f"{q} at rank {r}" for q, r in sp["rank_for"].items())
    )
    if sp["rank"]:
        lines.append(
            f"  stored rank {sp['rank']}: keeps {sp['explained']:.2%} of the target variance; reconstruction error "
            f"{sp['dropped']:.2%} of it (the fit's dropped share; --compare a full cache to measure it)"
        )
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report of `inspect_cache` as text for a terminal."""
    lines = _format_summary(report["summary"])
    if "problems" in report:
        problems, summary = report["problems"], report["summary"]
        if problems:
            lines.append(f"verify: {len(problems)} problems")
            for shard in dict.fromkeys(p["shard"] for p in problems):
                lines.append(f"  shard {shard}")
                for p in (p for p in problems if p["shard"] == shard):  # the reader's reasons repeat shard and key
                    reason = p["reason"].replace(f"shard {shard}: ", "").replace(f"sample {p['key']}: ", "")
                    lines.append(f"    {p['key'] or '(whole shard)'}: {reason}")
        else:
            lines.append(f"OK: {summary['samples']} samples in {summary['shards']} shards verified")
    if "statistics" in report:
        lines += _format_statistics(report["statistics"], report["summary"]["latent_dtype"])
    if "compare" in report:
        c = report["compare"]
        teachers = "the same teacher" if c["same_teacher"] else "different teachers"
        lines.append(
            f"compare with {c['b']} ({teachers}): {c['matched']} keys matched ({c['only_in_a']} only here, "
            f"{c['only_in_b']} only there); {c['compared']} compared, {c['identical_frames']} with identical frames"
        )
        lines.append(f"  channels per token {c['ranks'][0]} ({c['dtypes'][0]}) vs {c['ranks'][1]} ({c['dtypes'][1]})")
        lines.append(
            f"  target error: {c['relative_error']:.3%} of the target variance (squared, over the compared tokens)"
        )
        for name in ("cosine", "mean_abs_diff"):
            lines.append(
                f"  target {name:14} mean {c[name]['mean']:.5f}  min {c[name]['min']:.5f}  max {c[name]['max']:.5f}"
            )
        if c["cosine"]["min"] < c["cosine"]["max"]:
            lines.append(f"  lowest cosine: {c['worst_key']}")
    if report.get("pictures"):
        lines.append(f"pictures: {len(report['pictures'])} PNGs in {Path(report['pictures'][0]).parent}")
    return "\n".join(lines)
