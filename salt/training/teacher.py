"""Stage 1: train the teacher (pixel reconstruction under multi-block masks) or, for probe
calibration, the supervised objective. `salt train-teacher` and `salt/train_teacher.py`
(the `deepspeed` launcher's target) both land in `run_teacher`.
"""

from __future__ import annotations

import torch

from salt.config import ConfigError, load_config
from salt.models import build_encoder, resolve_arch, token_grid
from salt.training.config import TeacherConfig
from salt.training.data import ClipBatches, ReaderShare, clip_loader
from salt.training.loop import Stage, TrainResult, init_distributed, launcher_main, train
from salt.training.objectives import Objective, PixelObjective, SupervisedObjective
from salt.video.sources import load_records


def build_objective(cfg: TeacherConfig) -> Objective:
    view = cfg.data.view
    encoder = build_encoder(
        cfg.encoder.arch,
        checkpoint_activations=cfg.encoder.checkpoint_activations,
        **{"img_size": view.size, "num_frames": view.frames, **cfg.encoder.overrides},
    )
    if cfg.objective == "pixels":
        return PixelObjective(
            encoder,
            cfg.decoder.width,
            cfg.decoder.depth,
            cfg.decoder.num_heads,
            len(cfg.masks),
            cfg.pixels.norm,
            pos_embed=cfg.decoder.pos_embed,
        )
    return SupervisedObjective(encoder, cfg.supervised.num_classes, cfg.supervised.head, cfg.supervised.head_depth)


def check_geometry(cfg: TeacherConfig, source: str) -> tuple[int, int, int]:
    """Refuse, before step 1, a clip that does not divide into tubelets and patches."""
    view = cfg.data.view
    try:
        arch = resolve_arch(
            cfg.encoder.arch, **{"img_size": view.size, "num_frames": view.frames, **cfg.encoder.overrides}
        )
        return token_grid(arch, view.frames, view.size, view.size)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{source}: {err}") from None


def compatible_keys(config: dict) -> dict:
    """What a resumed run must share with its checkpoint: model, geometry, masks, data order."""
    data = config["data"]
    return {
        "objective": config["objective"],
        "encoder": config["encoder"],
        "decoder": config["decoder"],
        "masks": config["masks"],
        "pixels": config["pixels"],
        "supervised": config["supervised"],
        "view": data["view"],
        "train": data["train"],
        "seed": config["run"]["seed"],
    }  # the global batch (micro-batch × grad_accum × ranks) is checked on its own: its split may change


def run_teacher(config_path: str | None, overrides: list[str], resume: bool = False) -> TrainResult:
    cfg = load_config(TeacherConfig, config_path, overrides)
    grid = check_geometry(cfg, config_path or "<defaults>")
    records = load_records(cfg.data.train)
    dist_info = init_distributed(cfg.engine.timeout_s)
    torch.manual_seed(cfg.run.seed)  # the same initial weights on every rank and every run
    objective = build_objective(cfg)

    def make_batches(start_micro_step: int):
        dataset = ClipBatches(
            records=records,
            view=cfg.data.view,
            batch_size=cfg.data.batch_size,
            seed=cfg.run.seed,
            share=ReaderShare(dist_info.rank, dist_info.world_size, cfg.data.workers),
            mask_configs=cfg.masks if cfg.objective == "pixels" else None,
            token_grid=grid,
            start_micro_step=start_micro_step,
            decode_timeout=cfg.data.decode_timeout,
        )
        return clip_loader(dataset, cfg.data.workers, pin_memory=dist_info.device.type == "cuda")

    stage = Stage(
        config=cfg,
        objective=objective,
        make_batches=make_batches,
        export_name="teacher.pt" if cfg.objective == "pixels" else "supervised.pt",
        compatible_keys=compatible_keys,
        command="salt train-teacher",
        max_bad_videos=cfg.data.max_bad_videos,
    )
    return train(stage, dist_info, resume=resume)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `deepspeed salt/train_teacher.py` (accepts the launcher's --local_rank)."""
    launcher_main("Stage 1: train the pixel-reconstruction teacher.", run_teacher, argv)
