"""Fast in-memory runs with the project's own model pieces, to find what learns on a synthetic
set within a CPU budget (docs/results.md, "Calibration": every attempt there names its command).

The videos are decoded once into memory; training views are the project's replayable random
resized crops (`sample_view` + `render_view`); evaluation is one centre view per val video.
What is probed is the linear protocol of `salt probe` in miniature: mean-pooled tokens,
standardised by training-set statistics, one linear layer (best of a 2 × 2 lr × wd grid).

  python benchmarks/calibration_scan.py supervised --data DIR [--head mean_pool|attentive] …
  python benchmarks/calibration_scan.py floor|pixels|student --data DIR [--masks default|short|tframe] …

DIR is a `salt make-synthetic` folder. Not a test: it prints accuracies and losses.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from salt.masks import DEFAULT_MASKS, MaskConfig, MultiBlockMasker  # noqa: E402
from salt.models import Predictor, build_encoder  # noqa: E402
from salt.models.heads import AttentiveClassifier, MeanPoolClassifier  # noqa: E402
from salt.training.data import ClipBatch  # noqa: E402
from salt.training.objectives import PixelObjective, StudentObjective  # noqa: E402
from salt.video.decoders import decode_frames  # noqa: E402
from salt.video.sources import load_records  # noqa: E402
from salt.video.views import ViewConfig, render_view, sample_view, to_model_input  # noqa: E402

MASKS = {
    "default": list(DEFAULT_MASKS),
    "short": [MaskConfig(8, (0.15, 0.15))],  # the short-range configuration alone
    "tframe": [MaskConfig(1, (1.0, 1.0), (0.5, 0.5), (1.0, 1.0))],  # whole frames for half the clip
    "t05": [MaskConfig(8, (0.15, 0.15), (0.5, 0.5)), MaskConfig(2, (0.7, 0.7), (0.5, 0.5))],
}


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    records = load_records(folder / f"{split}.csv")
    frames = [decode_frames(r.path) for r in records]
    return np.stack(frames), np.array([r.label for r in records])


def views(videos: np.ndarray, cfg: ViewConfig, view_index: int, ids: np.ndarray | None = None) -> torch.Tensor:
    out = []
    for j, video in enumerate(videos):
        params = sample_view(
            int(ids[j]) if ids is not None else j, view_index, len(video), video.shape[1], video.shape[2], cfg
        )
        out.append(render_view(video[list(params.frame_indices)], params))
    return torch.from_numpy(np.stack(out))


def pooled_features(encoder, frames: torch.Tensor) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        out = torch.cat(
            [encoder(to_model_input(frames[i : i + 256])).float().mean(1) for i in range(0, len(frames), 256)]
        )
    encoder.train()
    return out


def linear_probe(encoder, train_views: list[torch.Tensor], train_labels, val_view: torch.Tensor, val_labels) -> dict:
    x = torch.cat([pooled_features(encoder, v) for v in train_views])
    y = torch.from_numpy(np.concatenate([train_labels] * len(train_views))).long()
    xv, yv = pooled_features(encoder, val_view), torch.from_numpy(val_labels).long()
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, xv = (x - mean) / std, (xv - mean) / std
    results = {}
    for lr in (1e-3, 1e-2):
        for wd in (1e-4, 1e-2):
            torch.manual_seed(0)
            head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
            optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=wd)
            generator, epochs, step = torch.Generator().manual_seed(0), 30, 0
            total = epochs * math.ceil(len(x) / 64)
            for _ in range(epochs):
                for batch in torch.randperm(len(x), generator=generator).split(64):
                    for group in optimizer.param_groups:
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                    loss = F.cross_entropy(head(x[batch]), y[batch])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    step += 1
            with torch.no_grad():
                results[f"lr {lr:g} wd {wd:g}"] = round((head(xv).argmax(1) == yv).float().mean().item(), 3)
    return {"best": max(results.values()), "grid": results}


def schedule(step: int, steps: int, lr: float, warmup: int, wd_start: float, wd_final: float) -> tuple[float, float]:
    rate = (
        lr * (step + 1) / warmup
        if step < warmup
        else lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    )
    return rate, wd_final + 0.5 * (wd_start - wd_final) * (1 + math.cos(math.pi * step / steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["supervised", "floor", "pixels", "student"])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--wd",
        type=float,
        nargs=2,
        default=None,
        help="start, final (default: 0.05 constant for supervised, V-JEPA's 0.04 -> 0.4 otherwise)",
    )
    parser.add_argument(
        "--betas", type=float, nargs=2, default=None, help="default: (0.9, 0.999) supervised, (0.9, 0.95) else"
    )
    parser.add_argument(
        "--clip", type=float, default=None, help="gradient clipping (default: none supervised, 1.0 else)"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bf16 autocast, as the training loop's precision 'auto' on this CPU"
    )
    parser.add_argument("--head", choices=["mean_pool", "attentive"], default="mean_pool")
    parser.add_argument(
        "--init", choices=["vjepa", "xavier"], default="vjepa", help="xavier: every Linear re-initialised"
    )
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--norm", choices=["patch", "channel", "none"], default="channel")
    parser.add_argument("--masks", choices=sorted(MASKS), default="default")
    parser.add_argument("--probe-every", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    supervised = args.mode == "supervised"
    wd_start, wd_final = args.wd or ((0.05, 0.05) if supervised else (0.04, 0.4))
    betas = tuple(args.betas or ((0.9, 0.999) if supervised else (0.9, 0.95)))
    clip = args.clip if args.clip is not None else (0.0 if supervised else 1.0)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x_train, y_train = load_split(args.data, "train")
    x_val, y_val = load_split(args.data, "val")
    train_cfg = ViewConfig(frames=8, frame_step=4, size=32)
    eval_cfg = ViewConfig(frames=8, frame_step=4, size=32, eval_clips=1, eval_spatial=1)
    probe_views, val_view = [views(x_train, train_cfg, k) for k in range(2)], views(x_val, eval_cfg, 0)
    encoder = build_encoder("vit_tiny", img_size=32, num_frames=8, patch_size=args.patch, embed_dim=args.dim)
    if args.mode == "floor":
        print("floor", args.seed, linear_probe(encoder, probe_views, y_train, val_view, y_val))
        return

    classes = int(y_train.max()) + 1
    if supervised:
        head = (
            MeanPoolClassifier(args.dim, classes)
            if args.head == "mean_pool"
            else AttentiveClassifier(args.dim, classes, num_heads=4, depth=0)
        )
        model = torch.nn.ModuleList([encoder, head])
    elif args.mode == "pixels":
        model = PixelObjective(encoder, 128, 2, 4, len(MASKS[args.masks]), args.norm)
    else:  # a student of a frozen random-init teacher
        teacher = build_encoder("vit_tiny", img_size=32, num_frames=8, patch_size=args.patch, embed_dim=args.dim)
        predictor = Predictor(
            args.dim, args.dim, width=128, depth=4, num_heads=4, num_mask_tokens=len(MASKS[args.masks])
        )
        model = StudentObjective(encoder, predictor, "teacher", frozen=teacher)
    if args.init == "xavier":
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                torch.nn.init.zeros_(module.bias)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim > 1], "decay": True},
            {"params": [p for p in params if p.ndim <= 1], "decay": False},
        ],
        lr=args.lr,
        betas=betas,
    )
    masker = None if supervised else MultiBlockMasker(encoder.grid(8, 32, 32), MASKS[args.masks], seed=args.seed)
    rng, warmup, history, started = np.random.default_rng(args.seed), max(1, args.steps // 15), [], time.time()
    for step in range(args.steps):
        rate, decay = schedule(step, args.steps, args.lr, warmup, wd_start, wd_final)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = rate, decay if group["decay"] else 0.0
        ids = rng.integers(0, len(x_train), args.batch)
        frames, labels = views(x_train[ids], train_cfg, step + 7, ids), torch.from_numpy(y_train[ids]).long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            if supervised:
                logits = model[1](model[0](to_model_input(frames))).float()
                loss, metric = F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean().item()
            else:
                batch = ClipBatch(
                    step=step,
                    frames=frames,
                    labels=labels,
                    video_ids=torch.from_numpy(ids),
                    masks=masker(args.batch, step),
                )
                batch.keys = [str(i) for i in ids]  # the student objective names bad samples by key
                loss, _ = model(batch)
                metric = loss.item()
        optimizer.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        history.append(metric)
        if (step + 1) % 100 == 0:
            print(
                f"step {step + 1}: {'train accuracy' if supervised else 'loss'} "
                f"{np.mean(history[-100:]):.4f} ({time.time() - started:.0f} s)",
                flush=True,
            )
        if args.probe_every and (step + 1) % args.probe_every == 0 and step + 1 < args.steps:
            print("linear probe", step + 1, linear_probe(encoder, probe_views, y_train, val_view, y_val), flush=True)
    print("linear probe", args.steps, linear_probe(encoder, probe_views, y_train, val_view, y_val), flush=True)


if __name__ == "__main__":
    main()
