"""`salt score-student RUN --cache CACHE`: how much of a cache's target variance a trained
student explains, on samples it never trained on.

The student (encoder and predictor, from the run's newest committed checkpoint) predicts the
targets of CACHE at masked tokens exactly as it trained (the run's masks, drawn from a fixed
seed); the score is the share of the targets' variance about their mean vector that the
predictions explain, and the loss beside the trivial predictor's. Scoring the students of
compacted caches against the *full-rank fp16* targets of held-out videos measures what a
smaller cache costs the distillation itself, free of probe noise (issue 44).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path

import torch

from salt.training.errors import TrainingError


def score_student(run: str | Path, cache: str | Path, batches: int = 16, batch_size: int = 32, seed: int = 0) -> dict:
    from salt.latents import load_manifest
    from salt.training.config import StudentConfig
    from salt.training.data import CacheBatches, ReaderShare
    from salt.training.run_encoder import find_run_checkpoint, run_config
    from salt.training.student import build_objective, check_against_manifest, sample_of_targets

    checkpoint = find_run_checkpoint(run)
    if checkpoint is None:
        raise TrainingError(f"{run}: no committed checkpoint of a training run — give a folder of salt train-student")
    trained = run_config(checkpoint.run_dir)
    if not isinstance(trained, StudentConfig):
        raise TrainingError(f"{run} is a stage-1 run; score-student scores students")
    cfg = dataclasses.replace(
        trained, cache=dataclasses.replace(trained.cache, path=str(cache), rank=0, views=0, low_rank="reconstructed")
    )
    manifest = load_manifest(cache)
    grid = check_against_manifest(cfg, manifest, str(cache))
    if manifest.target_rank:
        raise TrainingError(f"{cache} holds low-rank targets: score against a full-rank cache")
    objective = build_objective(cfg, manifest, None, "fp32")
    _load_trained(objective, checkpoint)
    objective.set_target_mean(sample_of_targets(str(cache)))
    loader = CacheBatches(
        cache_path=str(cache),
        cache_format="auto",
        batch_size=batch_size,
        seed=seed,
        share=ReaderShare(0, 1, 1),
        mask_configs=cfg.masks,
        token_grid=grid,
    )
    records = []
    objective.eval()
    with torch.no_grad():
        for batch, _ in zip(loader, range(batches)):
            loss, metrics = objective(batch)
            records.append((float(loss), float(metrics["baseline_loss"]), float(metrics["explained_variance"])))
    count = len(records)
    return {
        "run": str(checkpoint.run_dir),
        "checkpoint": checkpoint.step_dir.name,
        "cache": str(cache),
        "samples": count * batch_size,
        "loss": sum(r[0] for r in records) / count,
        "baseline_loss": sum(r[1] for r in records) / count,
        "explained_variance": sum(r[2] for r in records) / count,
        "explained_variance_per_batch": [r[2] for r in records],
    }


def _load_trained(objective: torch.nn.Module, checkpoint) -> None:
    """The encoder's and predictor's weights of the checkpoint, every key named if one is missing."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from salt.models.checkpoint import load_state_dict_strict

    # DeepSpeed prints "Processing zero checkpoint …" and draws a "Loading checkpoint shards" bar.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.step_dir.parent), tag=checkpoint.step_dir.name)
    for part in ("encoder", "predictor"):
        weights = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
        load_state_dict_strict(getattr(objective, part), weights, str(checkpoint.step_dir))
    objective.float()
