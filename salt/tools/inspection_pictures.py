"""`salt inspect --pictures`: a cache drawn for people — per sample, the frames, the targets'
top three principal components as colours and the token norms; the statistics and the
spectrum as plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from salt.latents import LatentCache
from salt.tools.cache_statistics import STATS_SAMPLES, evenly_spaced_keys, load_samples, sample_statistics, targets_of

PICTURE_SAMPLES = 4
DPI = 100
SUMMARY_FIGSIZE = (11.0, 7.0)  # inches


def _pca_rgb(target_list: list[torch.Tensor]) -> list[np.ndarray]:
    """Each sample's tokens projected on the top 3 principal components of all of them, scaled
    to [0, 1] with shared percentiles so a colour means the same thing in every figure."""
    centred = torch.cat(target_list).double().numpy()
    centred -= centred.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    projected = centred @ vectors[:, :-4:-1]  # eigh sorts ascending: the last columns explain the most
    low, high = np.percentile(projected, 1, axis=0), np.percentile(projected, 99, axis=0)
    colours = np.clip((projected - low) / np.maximum(high - low, 1e-12), 0, 1)
    return np.split(colours, len(target_list))


def _norm_range(norms: list[np.ndarray]) -> tuple[tuple[float, float], str]:
    """Colour range of the token norms. Norms that differ by less than 1 % of their mean are
    flat (a final LayerNorm does that): a range of ±1 % shows them as one colour rather than
    drawing noise in the 4th digit as structure, and the label says so."""
    low, high = float(min(n.min() for n in norms)), float(max(n.max() for n in norms))
    mean = float(np.mean([n.mean() for n in norms]))
    if high - low >= 0.01 * abs(mean):
        return (low, high), "L2 norm"
    return (mean * 0.99, mean * 1.01), "L2 norm: flat\n(scale ±1 %)"


def sample_figsize(steps: int) -> tuple[float, float]:
    """Inches of one sample's figure: a column per time step, three rows, room for labels."""
    return 1.5 * steps + 1.2, 5.2


def write_pictures(
    cache: LatentCache, out_dir: str | Path, samples: int = PICTURE_SAMPLES, stats: dict[str, Any] | None = None
) -> list[Path]:
    """One PNG per shown sample (frames, PCA colours, token norms per time step) and one of the
    statistics; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a training node
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = cache.manifest
    steps, height, width = manifest.grid
    tubelet = int(manifest.geometry.get("tubelet", 1))
    shown, _ = load_samples(cache, evenly_spaced_keys(cache, samples))
    written = []
    if shown:
        colours = _pca_rgb(targets_of(cache, shown))
        norms = [s.latents.norm(dim=-1).reshape(steps, height, width).numpy() for s in shown]
        norm_range, norm_label = _norm_range(norms)
        for sample, colour, norm in zip(shown, colours, norms):
            frame_h, frame_w = sample.frames.shape[1:3]
            colour = colour.reshape(steps, height, width, 3)
            fig, axes = plt.subplots(3, steps, figsize=sample_figsize(steps), squeeze=False, layout="constrained")
            for t in range(steps):
                axes[0, t].imshow(sample.frames[min(t * tubelet, len(sample.frames) - 1)])
                # Nearest upsampling to the frame's pixels: one flat square per token.
                axes[1, t].imshow(
                    colour[t].repeat(frame_h // height, 0).repeat(frame_w // width, 1), interpolation="nearest"
                )
                image = axes[2, t].imshow(
                    norm[t], cmap="magma", vmin=norm_range[0], vmax=norm_range[1], interpolation="nearest"
                )
                axes[0, t].set_title(f"t'={t} (frame {t * tubelet})", fontsize=8)
            for row, label in enumerate(("frames", "teacher PCA:\nPC1-3 as RGB", "token norm\n(raw)")):
                axes[row, 0].set_ylabel(label, fontsize=9)
            for ax in axes.flat:
                ax.set(xticks=[], yticks=[])
            colorbar = fig.colorbar(image, ax=axes[2, :].tolist(), shrink=0.9, pad=0.01, label=norm_label)
            colorbar.ax.ticklabel_format(useOffset=False)  # norms differ in the 3rd digit: show them whole
            params = sample.meta.get("view_params", {})
            fig.suptitle(
                f"{sample.key}: {Path(str(sample.meta.get('source', '?'))).name}, view {sample.view}, "
                f"label {sample.meta.get('label')}, flip {params.get('flip', '?')}",
                fontsize=10,
            )
            path = out_dir / f"sample_{sample.key}.png"
            fig.savefig(path, dpi=DPI)
            plt.close(fig)
            written.append(path)
    stats = stats if stats is not None else sample_statistics(cache, STATS_SAMPLES)
    if "targets" in stats:
        written.append(_summary_figure(plt, stats, out_dir / "statistics.png"))
    if "spectrum" in stats:
        written.append(_spectrum_figure(plt, stats["spectrum"], out_dir / "explained_variance.png"))
    return written


def _spectrum_figure(plt, spectrum: dict[str, Any], path: Path) -> Path:
    cumulative = np.cumsum(spectrum["ratio"])
    fig, ax = plt.subplots(figsize=(6.5, 4.0), layout="constrained")
    ax.plot(np.arange(1, len(cumulative) + 1), cumulative, marker=".", label="cumulative explained variance")
    by_rank: dict[int, list[str]] = {}
    for share, rank in spectrum["rank_for"].items():
        by_rank.setdefault(rank, []).append(share)
    for rank, shares in by_rank.items():  # one label per line, even where two shares need the same rank
        ax.axvline(rank, color="grey", linestyle=":", linewidth=0.8)
        ax.annotate(f"{' / '.join(shares)} at {rank}", (rank, 0.02), fontsize=8, rotation=90, va="bottom")
    if spectrum["rank"]:
        ax.axvline(
            spectrum["rank"], color="tab:red", label=f"stored rank {spectrum['rank']} ({spectrum['explained']:.1%})"
        )
    ax.set(
        xscale="log",
        ylim=(0, 1.01),
        xlabel="principal components of the targets",
        ylabel="share of variance",
        title=f"explained variance ({spectrum['source']})",
    )
    fig.legend(fontsize=8, loc="outside lower center", ncols=2)  # below the axes: never over the rank marks
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _summary_figure(plt, stats: dict[str, Any], path: Path) -> Path:
    raw, targets = stats["raw"], stats["targets"]
    fig, axes = plt.subplots(2, 2, figsize=SUMMARY_FIGSIZE, layout="constrained")
    edges, counts = np.array(raw["norm_histogram"]["edges"]), raw["norm_histogram"]["counts"]
    axes[0, 0].stairs(counts, edges, fill=True, alpha=0.7)
    axes[0, 0].set(
        title=f"raw token norm over {raw['tokens']} tokens (targets: all {targets['norm']['mean']:.2f})",
        xlabel="L2 norm",
        ylabel="tokens",
    )
    axes[0, 0].xaxis.set_major_locator(plt.MaxNLocator(4))  # long tick labels (narrow spreads) must not overlap
    axes[0, 0].ticklabel_format(axis="x", useOffset=False)
    plt.setp(axes[0, 0].get_xticklabels(), rotation=20, ha="right")
    # Dashed raw over solid targets: when the teacher's final norm already normalises its tokens
    # the two coincide, and both must stay visible.
    for name, s, style, marker in (("targets", targets, "-", "o"), ("raw", raw, "--", "x")):
        axes[0, 1].plot(sorted(s["channel"]["std"]), style, label=name)
        axes[1, 0].plot(s["rank_per_step"], style, marker=marker, label=f"{name} (pooled {s['effective_rank']:.1f})")
        axes[1, 1].plot(
            s["cosine_per_step"], style, marker=marker, label=f"{name} (per sample {s['cosine']['mean']:.3f})"
        )
    axes[0, 1].set(title="per-channel std (sorted)", xlabel="channel rank", ylabel="std", yscale="log")
    axes[1, 0].axhline(raw["max_rank"], color="grey", linestyle=":", label=f"max {raw['max_rank']}")
    axes[1, 0].set(title="effective rank (RankMe) per time step", xlabel="t'", ylabel="rank", ylim=(0, None))
    lowest = min(min(raw["cosine_per_step"]), min(targets["cosine_per_step"]), 0.0)
    axes[1, 1].set(
        title="mean token cosine within a sample (1 = collapsed)", xlabel="t'", ylabel="cosine", ylim=(lowest, 1.02)
    )  # the whole scale up to collapse, not a zoom on noise
    for ax in axes.flat[1:]:
        ax.legend(fontsize=8)
    fig.suptitle(f"statistics over {raw['samples']} samples")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
