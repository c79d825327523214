"""Stage 2, process 2: train a student from a latent cache. It never opens the teacher.

`deepspeed salt/train_student.py --config …` and `python salt/train_student.py …` land in
`run_student`. With `targets: cache` only the cache's manifest and samples are read; with
`targets: teacher` the teacher runs online on the same frames (to check the cache and to
measure what it saves); with `targets: ema` the V-JEPA baseline trains on the same data.
"""

from __future__ import annotations

import torch

from salt.config import ConfigError, load_config
from salt.latents import CacheError, first_views, reader_manifest
from salt.models import Predictor, build_encoder, load_encoder, resolve_arch, token_grid
from salt.precision import resolve_precision
from salt.training.config import StudentConfig, with_cache_geometry
from salt.training.data import CacheBatches, ReaderShare, clip_loader
from salt.training.errors import TrainingError
from salt.training.loop import Stage, TrainResult, init_distributed, launcher_main, train
from salt.training.objectives import StudentObjective
from salt.training.schedules import Linear

# The config key of each manifest geometry value (the token grid follows from them).
MANIFEST_KEYS = {
    "frames": "geometry.frames",
    "frame_step": "geometry.frame_step",
    "size": "geometry.size",
    "patch": "encoder.overrides.patch_size",
    "tubelet": "encoder.overrides.tubelet_size",
}


def check_against_manifest(cfg: StudentConfig, manifest, source: str) -> tuple[int, int, int]:
    """Refuse, before step 1, a student whose clips or tokens differ from the cache's, or a cache
    with nothing in it (its loader could never fill a batch)."""
    if manifest.sample_count == 0:
        raise TrainingError(
            f"{cfg.cache.path} holds no samples (all {len(manifest.skipped)} videos were skipped, reasons in "
            "its manifest.json) — cache data that decodes (salt check-data DATA) and point cache.path at it"
        )
    try:
        arch = resolve_arch(
            cfg.encoder.arch,
            **{"img_size": cfg.geometry.size, "num_frames": cfg.geometry.frames, **cfg.encoder.overrides},
        )
        grid = token_grid(arch, cfg.geometry.frames, cfg.geometry.size, cfg.geometry.size)
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None
    ours = {
        "frames": cfg.geometry.frames,
        "frame_step": cfg.geometry.frame_step,
        "size": cfg.geometry.size,
        "patch": arch["patch_size"],
        "tubelet": arch["tubelet_size"],
        "grid": list(grid),
    }
    theirs = {
        **{k: manifest.geometry.get(k) for k in ("frames", "frame_step", "size", "patch", "tubelet")},
        "grid": list(manifest.grid),
    }
    mismatched = [
        f"{k}: config {ours[k]}, cache {theirs[k]}"
        + (f" (--set {MANIFEST_KEYS[k]}={theirs[k]})" if k in MANIFEST_KEYS else "")
        for k in ours
        if ours[k] != theirs[k]
    ]
    if mismatched:
        raise ConfigError(
            f"{source}: the student does not fit the cache {cfg.cache.path}: "
            + "; ".join(mismatched)
            + " — leave those keys out (the cache's values are the default) or set them to the cache's, "
            "or cache the data again for this geometry"
        )
    return grid


def check_target_rank(cfg: StudentConfig, manifest, source: str):
    """Refuse, before step 1, a rank or coefficient request the cache cannot serve; the basis of
    a low-rank cache (None for a full-rank one)."""
    held = (
        f"rank {manifest.target_rank} of dim {manifest.dim}"
        if manifest.target_rank
        else f"full rank (dim {manifest.dim})"
    )
    if cfg.cache.rank and cfg.cache.rank != manifest.target_rank:
        raise ConfigError(
            f"{source}: cache.rank {cfg.cache.rank}, but {cfg.cache.path} holds {held} targets. Point cache.path at "
            f"a cache of that rank (salt compact-cache {cfg.cache.path} --rank {cfg.cache.rank}), or set cache.rank: 0"
        )
    if cfg.cache.low_rank == "coefficients" and not manifest.target_rank:
        raise ConfigError(
            f"{source}: cache.low_rank: coefficients, but {cfg.cache.path} holds {held} targets: there are no "
            "coefficients to read. Compact it (salt compact-cache --rank R) or set cache.low_rank: reconstructed"
        )
    if not manifest.target_rank:
        return None
    from salt.latents import load_basis

    try:
        return load_basis(cfg.cache.path, manifest)
    except CacheError as err:
        raise ConfigError(f"{source}: {err}") from None


def sample_of_targets(cache_path: str, cache_format: str = "auto", views: int = 0, count: int = 64) -> torch.Tensor:
    """Stored latents [S, N, D] of `count` samples spread evenly over the cache (the same on
    every rank and every run): what the trivial baseline's mean target vector is taken from."""
    from salt.latents import open_cache

    cache = open_cache(cache_path, cache_format, views)
    positions = sorted({round(i * (len(cache) - 1) / max(1, count - 1)) for i in range(min(count, len(cache)))})
    latents = []
    for position in positions:
        try:
            latents.append(cache.get(position).latents)
        except CacheError:  # a corrupt sample: the run itself raises or skips it, per cache.on_error
            continue
    if not latents:
        raise ConfigError(
            f"{cache_path}: none of {len(positions)} samples read for the "
            f"baseline is readable; run `salt inspect {cache_path} --verify`"
        )
    return torch.stack(latents)


def compatible_keys(config: dict) -> dict:
    kept = {
        key: config[key]
        for key in ("targets", "cache", "teacher", "geometry", "data", "encoder", "predictor", "masks", "ema", "loss")
        if key in config
    }
    # Where frames are decoded, and by how many workers, does not change what a step trains on;
    # the global batch (micro-batch × grad_accum × ranks) is checked on its own: its split may change.
    free = ("decode_frames", "workers", "batch_size")
    kept["data"] = {key: value for key, value in kept.get("data", {}).items() if key not in free}
    return kept | {"seed": config["run"]["seed"]}


def run_student(config_path: str | None, overrides: list[str], resume: bool = False) -> TrainResult:
    cfg, manifest, grid, basis = load_student_config(config_path, overrides)
    dist_info = init_distributed(cfg.engine.timeout_s)
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank and every run
    objective = build_objective(cfg, manifest, basis, resolve_precision(cfg.engine.precision))
    if cfg.targets == "cache":
        objective.set_target_mean(sample_of_targets(cfg.cache.path, cfg.cache.format, cfg.cache.views))

    def make_batches(start_micro_step: int):
        dataset = CacheBatches(
            cache_path=cfg.cache.path,
            cache_format=cfg.cache.format,
            batch_size=cfg.data.batch_size,
            seed=cfg.run.seed,
            share=ReaderShare(dist_info.rank, dist_info.world_size, cfg.data.workers),
            mask_configs=cfg.masks,
            token_grid=grid,
            start_micro_step=start_micro_step,
            on_error=cfg.cache.on_error,
            views=cfg.cache.views,
            decode_frames=cfg.data.decode_frames,
        )
        return clip_loader(dataset, cfg.data.workers, pin_memory=dist_info.device.type == "cuda")

    stage = Stage(
        config=cfg,
        objective=objective,
        make_batches=make_batches,
        export_name="student.pt",
        compatible_keys=compatible_keys,
        command="salt train-student",
        max_bad_videos=10**9 if cfg.cache.on_error == "skip" else 0,
        client_extra={"cache_teacher_fingerprint": manifest.teacher["fingerprint"]},
    )
    return train(stage, dist_info, resume=resume)


def load_student_config(config_path: str | None, overrides: list[str]):
    """(config, the manifest of the views it reads, token grid, low-rank basis or None), checked
    against each other before any process group or model exists."""
    cfg = load_config(StudentConfig, config_path, overrides)
    source = config_path or "<defaults>"
    manifest, _ = reader_manifest(cfg.cache.path)  # the node's index: no 83 000 shard records held
    try:
        manifest = first_views(manifest, cfg.cache.views, cfg.cache.path)
    except CacheError as err:
        raise ConfigError(f"{source}: cache.views: {err}") from None
    cfg = with_cache_geometry(cfg, manifest.geometry)
    grid = check_against_manifest(cfg, manifest, source)
    basis = check_target_rank(cfg, manifest, source)
    if cfg.targets == "ema" and cfg.engine.zero_stage == 3:
        raise ConfigError(
            f"{source}: targets: ema needs the whole student on every rank to update its EMA copy; "
            "ZeRO-3 partitions it. Use engine.zero_stage 1 or 2."
        )
    if cfg.targets == "teacher" and not cfg.teacher:
        raise ConfigError(f"{source}: targets: teacher needs `teacher:` (a checkpoint path)")
    return cfg, manifest, grid, basis


def build_objective(cfg: StudentConfig, manifest, basis, precision: str) -> StudentObjective:
    """Student encoder + predictor, and for `targets: teacher` the frozen teacher the cache names."""
    encoder = build_encoder(
        cfg.encoder.arch,
        checkpoint_activations=cfg.encoder.checkpoint_activations,
        **{"img_size": cfg.geometry.size, "num_frames": cfg.geometry.frames, **cfg.encoder.overrides},
    )
    coefficients = cfg.cache.low_rank == "coefficients"
    predictor = Predictor(
        encoder.embed_dim,
        manifest.target_rank if coefficients else manifest.dim,
        width=cfg.predictor.width,
        depth=cfg.predictor.depth,
        num_heads=cfg.predictor.num_heads,
        num_mask_tokens=len(cfg.masks),
        checkpoint_activations=cfg.encoder.checkpoint_activations,
        pos_embed=cfg.predictor.pos_embed,
    )
    frozen = None
    if cfg.targets == "teacher":
        # The arch and state-dict key the cache was made with: what the weights cannot tell.
        frozen, _ = load_encoder(
            cfg.teacher, manifest.teacher.get("arch"), manifest.teacher.get("checkpoint_key") or None
        )
        from salt.models import fingerprint

        if fingerprint(frozen.state_dict()) != manifest.teacher["fingerprint"]:
            raise TrainingError(f"{cfg.teacher} is not the teacher that made {cfg.cache.path} (fingerprints differ)")
    return StudentObjective(
        encoder,
        predictor,
        cfg.targets,
        target_norm=manifest.target_norm,
        frozen=frozen,
        loss=cfg.loss,
        basis=None if coefficients or cfg.targets != "cache" else basis,
        momentum=Linear(cfg.ema.momentum_start, cfg.ema.momentum_final, cfg.optim.steps),
        precision=precision,
        health_every=cfg.health_every,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of `deepspeed salt/train_student.py` (accepts the launcher's --local_rank)."""
    launcher_main("Process 2 (stage 2): train a student from a latent cache.", run_student, argv)
