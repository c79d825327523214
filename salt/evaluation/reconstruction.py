"""`salt reconstruct`: what a stage-1 teacher predicts at masked tubelets, as MAE/VideoMAE users
expect to see it: for a few clips, the masked input, the prediction (visible patches as they
are, masked ones predicted and un-normalised with each patch's own statistics) and the truth,
frame by frame, in one PNG.

The decoder is not part of the exported `teacher.pt` (only the encoder is), so the picture is
made from the run folder: its `config.yaml` and its newest committed DeepSpeed checkpoint.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from salt.masks import MultiBlockMasker, apply_masks


def load_pixel_objective(run_dir: str | Path):
    """The run's config and its PixelObjective with the newest committed checkpoint's weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from salt.config import ConfigError, load_config
    from salt.models.checkpoint import load_state_dict_strict
    from salt.training.checkpointing import complete_checkpoints
    from salt.training.config import TeacherConfig
    from salt.training.teacher import build_objective

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: no config.yaml; pass the folder of a `salt train-teacher` run (its run.out_dir)")
    cfg = load_config(TeacherConfig, str(run_dir / "config.yaml"), [])
    if cfg.objective != "pixels":
        raise ConfigError(
            f"{run_dir} is a run of objective '{cfg.objective}': only a pixel teacher reconstructs pixels"
        )
    committed = complete_checkpoints(run_dir / "checkpoints")
    if not committed:
        raise ConfigError(f"{run_dir}/checkpoints holds no committed checkpoint yet; train longer (or --resume) first")
    # DeepSpeed prints "Processing zero checkpoint …" and draws a "Loading checkpoint shards" bar.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        state = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=committed[-1].name)
    objective = build_objective(cfg).float().eval()
    load_state_dict_strict(objective, state, str(committed[-1]))
    return cfg, objective, committed[-1].name


def unnormalise(predicted: torch.Tensor, truth: torch.Tensor, norm: str, values: int) -> torch.Tensor:
    """Predicted targets [M, P] back to pixels in [0, 1], with the statistics of the true
    patches [M, P] (raw pixels) over the groups `norm` standardised (see `pixel_targets`)."""
    if norm == "none":
        return predicted
    shape = (-1, values * 3, 1) if norm == "patch" else (-1, values, 3)
    groups = truth.reshape(shape)
    mean, std = groups.mean(dim=1, keepdim=True), groups.var(dim=1, unbiased=True, keepdim=True).sqrt() + 1e-6
    return (predicted.reshape(shape) * std + mean).reshape(predicted.shape)


def tokens_to_frames(tokens: torch.Tensor, grid: tuple[int, int, int], tubelet: int, patch: int) -> np.ndarray:
    """Per-token pixels [N, tubelet·patch²·3] (pixel_targets' order) → uint8 frames [T, H, W, 3]."""
    t, h, w = grid
    x = tokens.reshape(t, h, w, tubelet, patch, patch, 3).permute(0, 3, 1, 4, 2, 5, 6)
    x = x.reshape(t * tubelet, h * patch, w * patch, 3)
    return (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()


@torch.no_grad()
def reconstruct(objective, frames: torch.Tensor, masks, mask_index: int, norm: str) -> dict[str, np.ndarray | float]:
    """Masked input, prediction and truth [B, T, H, W, 3] of uint8 clips [B, T, H, W, 3], and
    the normalised loss at the masked tokens beside predicting zeros."""
    from salt.training.objectives import pixel_targets
    from salt.video.views import to_model_input

    encoder, mask = objective.encoder, masks[mask_index]
    tubelet, patch = encoder.tubelet_size, encoder.patch_size
    clip = to_model_input(frames)
    grid = encoder.grid(*clip.shape[2:])
    predicted = objective.decoder(
        encoder(clip, keep=mask.context_idx), mask.context_idx, mask.target_idx, grid, mask_index=mask_index
    )
    targets = apply_masks(pixel_targets(frames, tubelet, patch, norm), mask.target_idx)
    raw = pixel_targets(frames, tubelet, patch, "none")
    masked_raw = apply_masks(raw, mask.target_idx)
    pixels = unnormalise(predicted.flatten(0, 1), masked_raw.flatten(0, 1), norm, tubelet * patch * patch)
    index = mask.target_idx[..., None].expand(-1, -1, raw.shape[-1])
    shown, blanked = raw.clone().scatter_(1, index, pixels.reshape(masked_raw.shape)), raw.clone()
    blanked.scatter_(1, index, torch.full_like(masked_raw, 0.5))  # masked tubelets drawn grey
    to_frames = lambda tokens: np.stack([tokens_to_frames(row, grid, tubelet, patch) for row in tokens])  # noqa: E731
    return {
        "masked": to_frames(blanked),
        "predicted": to_frames(shown),
        "truth": frames.numpy(),
        "loss": float((predicted - targets).square().mean()),
        "baseline_loss": float(targets.square().mean()),
    }


def reconstruction_picture(
    run_dir: str, data: str, out: str, clips: int = 4, mask_index: int = 0, seed: int = 0
) -> dict:
    """Write the PNG for the first `clips` videos of `data` (evaluation views: centre crop, no
    flip); return the numbers it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from salt.config import ConfigError
    from salt.video import load_records
    from salt.video.decode import decode_record_views

    cfg, objective, tag = load_pixel_objective(run_dir)
    if not 0 <= mask_index < len(cfg.masks):
        raise ConfigError(
            f"--mask-index {mask_index}: the run has {len(cfg.masks)} mask configurations (0…{len(cfg.masks) - 1})"
        )
    view = replace(cfg.data.view, eval_clips=1, eval_spatial=1)
    records = load_records(data)[:clips]
    frames = torch.from_numpy(np.stack([decode_record_views(record, [0], view)[0][0] for record in records]))
    grid = objective.encoder.grid(frames.shape[1], frames.shape[2], frames.shape[3])
    masks = MultiBlockMasker(grid, tuple(cfg.masks), seed=seed)(len(records), 0)
    result = reconstruct(objective, frames, masks, mask_index, cfg.pixels.norm)

    rows = [
        (f"{Path(r.path).name}\n{name}", result[name][i])
        for i, r in enumerate(records)
        for name in ("masked", "predicted", "truth")
    ]
    figure, axes = plt.subplots(len(rows), 1, figsize=(1.1 * frames.shape[1] + 1.5, 1.25 * len(rows)), squeeze=False)
    for ax, (label, clip) in zip(axes[:, 0], rows):
        ax.imshow(np.concatenate(list(clip), axis=1), interpolation="nearest")
        ax.set_xticks(
            [(i + 0.5) * clip.shape[2] for i in range(clip.shape[0])], [f"f{i}" for i in range(clip.shape[0])]
        )
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    figure.suptitle(
        f"{run_dir} ({tag}), mask configuration {mask_index}, pixels.norm {cfg.pixels.norm}: masked-token "
        f"loss {result['loss']:.3f} vs {result['baseline_loss']:.3f} predicting zeros",
        fontsize=8,
    )
    figure.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return {"checkpoint": tag, "clips": len(records), "loss": result["loss"], "baseline_loss": result["baseline_loss"]}
