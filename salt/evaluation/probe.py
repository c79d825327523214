"""`salt probe`: frozen probe of any encoder, by one of two protocols.

- `attentive` (the paper's, V-JEPA 2's): self-attention blocks, cross-attention from one
  learnable query, a linear layer, over all of the encoder's tokens.
- `linear` (MAE / VideoMAE's linear protocol): the tokens mean-pooled, standardised without
  affine parameters, one linear layer. The attentive head can compare tokens across time, so it
  reads motion even off a random-init encoder (its floor is high); a linear layer on the pooled
  tokens sees only what the encoder itself made linearly readable, which keeps a random-init
  encoder near chance (docs/results.md, "Calibration").

The encoder is frozen, so its token maps are computed once per fixed clip and view and stored
through `salt/latents` (the cache format: `salt cache-latents` with the encoder as the
"teacher"); the heads then train on the stored tokens, and a second probe with the same
`--work-dir` (the other protocol, say) reuses them. Training views are K random augmented
views per video; evaluation views are `clips × spatial` fixed crops whose predictions are
averaged per video. Several heads (an lr × weight-decay grid, as V-JEPA 2 does) train at once;
the best by validation accuracy is reported and all are listed.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from salt.models.heads import AttentiveClassifier


@dataclass
class LinearProbeConfig:
    """Head training of the linear protocol (a linear layer is cheap: many epochs, larger lrs)."""

    epochs: int = 100
    batch_size: int = 64
    lrs: list[float] = field(default_factory=lambda: [1e-2, 1e-3])
    weight_decays: list[float] = field(default_factory=lambda: [1e-4, 1e-2])
    warmup_epochs: float = 5.0


@dataclass
class ProbeConfig:
    protocol: Literal["attentive", "linear"] = "attentive"
    frames: int = 0  # 0: the encoder's
    frame_step: int = 4
    size: int = 0  # 0: the encoder's
    train_views: int = 4  # augmented views per training video, computed once
    eval_clips: int = 2
    eval_spatial: int = 3
    # Head training of the attentive protocol (the linear one reads `linear` below).
    epochs: int = 20
    batch_size: int = 32
    head_depth: int = 1  # self-attention blocks before the cross-attention pooler
    head_heads: int = 4
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-4])
    weight_decays: list[float] = field(default_factory=lambda: [0.01, 0.1])
    warmup_epochs: float = 1.0
    seed: int = 0
    workers: int = 2  # decoding workers for feature extraction
    decoder: str = "pyav"  # which decoder reads the videos (salt/video/decoders.py)
    feature_dtype: str = "fp16"
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)

    def validate(self) -> None:
        for name, grid in (
            ("lrs", self.lrs),
            ("weight_decays", self.weight_decays),
            ("linear.lrs", self.linear.lrs),
            ("linear.weight_decays", self.linear.weight_decays),
        ):
            if not grid:
                raise ValueError(f"probe: {name} needs at least one value")
        if min(self.epochs, self.batch_size, self.linear.epochs, self.linear.batch_size, self.train_views) < 1:
            raise ValueError("probe: epochs, batch_size (both protocols) and train_views must be >= 1")


class LinearClassifier(torch.nn.Module):
    """Mean-pooled tokens, standardised by fixed training-set statistics (MAE's BatchNorm
    without affine parameters, with the statistics of the whole frozen training set instead of
    running batch estimates), then one linear layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = torch.nn.Linear(mean.numel(), num_classes)
        torch.nn.init.trunc_normal_(self.linear.weight, std=0.01)  # MAE's linear-probe init
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [B, D] (tokens already averaged: see `pool_tokens`) → logits [B, num_classes]."""
        return self.linear((pooled - self.mean) / self.std)


def pool_tokens(features: dict) -> dict:
    """The linear protocol's input: each view's tokens averaged, once, in fp32."""
    return {**features, "tokens": features["tokens"].float().mean(dim=1)}


@dataclass(frozen=True)
class ProbeData:
    """Which videos a probe reads: a missing or undecodable one refuses the probe (its accuracy
    would be over another set than asked) unless `allow_missing`, which records it instead."""

    allow_missing: bool = False
    max_videos: int = 0  # the first N videos of each split (0: all)
    progress: bool = False


def extract_features(
    encoder_path: Path,
    data: str,
    out: Path,
    cfg: ProbeConfig,
    evaluation: bool,
    arch: dict | None = None,
    checkpoint_key: str = "",
    which: ProbeData = ProbeData(),
) -> tuple[dict, float]:
    """Token maps of every (video, view) through the cache writer; returns arrays and seconds."""
    from salt.cache_latents import CacheJob, run_cache
    from salt.cache_latents.merge import TooManySkipped, forget_shards_with_skips, name_skipped
    from salt.latents import load_manifest, open_cache, storage
    from salt.video import VideoSourceError

    start = time.perf_counter()
    views = cfg.eval_clips * cfg.eval_spatial if evaluation else cfg.train_views
    split = "val" if evaluation else "train"
    job = CacheJob(
        teacher=str(encoder_path),
        data=data,
        out=str(out),
        views=views,
        dtype=cfg.feature_dtype,
        workers=cfg.workers,
        decoder=cfg.decoder,
        frames=cfg.frames,
        size=cfg.size,
        frame_step=cfg.frame_step,
        seed=cfg.seed,
        progress=which.progress,
        eval_clips=cfg.eval_clips if evaluation else 0,
        eval_spatial=cfg.eval_spatial if evaluation else 0,
        arch=arch,
        checkpoint_key=checkpoint_key,
        max_videos=which.max_videos,
        max_skipped=1.0,
    )
    try:
        run_cache(job)
    except TooManySkipped as err:  # not one video decoded
        raise VideoSourceError(
            f"probe {split} data {data}: none of its {err.num_videos} videos decode "
            f"({name_skipped(err.skipped)}) — fix the list (`salt check-data {data}` names every failure)"
        ) from None
    skipped = load_manifest(out).skipped
    if skipped and not which.allow_missing:
        forget_shards_with_skips(out)  # a --work-dir rerun after the fix redoes them
        storage.remove(storage.join(out, "manifest.json"))
        raise VideoSourceError(
            f"probe {split} data {data}: {len(skipped)} videos are missing or do not decode "
            f"({name_skipped(skipped)}), so the accuracy would be over another set than asked — fix the list (`salt "
            f"check-data {data}` names every failure) or pass --allow-missing to probe the rest and record them"
        )
    seconds = time.perf_counter() - start
    return _read_features(open_cache(out), data), seconds


def _read_features(cache, data: str) -> dict:
    """Tokens, labels and video numbers of every sample of a features cache, in key order."""
    from salt.video import VideoSourceError

    # One sequential pass (no shard seek per key); key order keeps the head training identical.
    # Only the tokens are wanted: the JPEG frames are checked (CRC) but not decoded.
    samples = sorted(cache.stream(seed=0, epoch=0, frames="none"), key=lambda sample: sample.key)
    labels = [s.meta["label"] for s in samples]
    if any(label is None for label in labels):
        raise VideoSourceError(f"{data}: every video needs a label for probing — write 'path label' lines")
    return {
        "tokens": torch.stack([s.latents for s in samples]),  # [S, N, D], the encoder's output
        "labels": torch.tensor(labels),
        "videos": torch.tensor([s.video for s in samples]),
        "skipped": cache.manifest.skipped,
    }


def train_heads(train: dict, val: dict, num_classes: int, cfg: ProbeConfig, progress: bool = False) -> dict:
    """Train one head of `cfg.protocol` per (lr, wd) on frozen tokens; evaluate with view averaging."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    train, val, schedule, make_head = _protocol(train, val, num_classes, cfg)
    grid = [(lr, wd) for lr in schedule.lrs for wd in schedule.weight_decays]
    heads = torch.nn.ModuleList(make_head() for _ in grid)
    groups = [
        {"params": head.parameters(), "lr": lr, "weight_decay": wd, "peak": lr} for head, (lr, wd) in zip(heads, grid)
    ]
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    samples = train["tokens"].shape[0]
    steps_per_epoch = max(1, math.ceil(samples / schedule.batch_size))
    total, warmup = schedule.epochs * steps_per_epoch, int(schedule.warmup_epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    start = time.perf_counter()
    bar = dict(
        desc=f"probe heads ({len(grid)})", unit="epoch", disable=not progress, dynamic_ncols=True, mininterval=1.0
    )
    for _ in tqdm(range(schedule.epochs), **bar):
        for batch in torch.randperm(samples, generator=generator).split(schedule.batch_size):
            scale = _warmup_cosine(step, warmup, total)
            for group in optimizer.param_groups:
                group["lr"] = group["peak"] * scale
            tokens, labels = train["tokens"][batch], train["labels"][batch]
            loss = sum(F.cross_entropy(head(tokens), labels) for head in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    train_seconds = time.perf_counter() - start
    results = _evaluate_heads(heads, grid, val)
    best = max(range(len(results)), key=lambda i: results[i]["top1"])
    return {
        "heads": results,
        "best": results[best],
        "head_train_seconds": train_seconds,
        "steps": total,
        "epochs": schedule.epochs,
    }


def _protocol(train: dict, val: dict, num_classes: int, cfg: ProbeConfig):
    """The features each protocol reads (linear: pooled), its schedule, and how to make one head."""
    if cfg.protocol == "linear":
        train, val = pool_tokens(train), pool_tokens(val)
        mean, std = train["tokens"].mean(0), train["tokens"].std(0) + 1e-6
        return train, val, cfg.linear, lambda: LinearClassifier(mean, std, num_classes)
    dim = train["tokens"].shape[-1]
    return (
        train,
        val,
        cfg,
        lambda: AttentiveClassifier(dim, num_classes, num_heads=cfg.head_heads, depth=cfg.head_depth),
    )


def _warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning-rate factor: linear warm-up, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def _evaluate_heads(heads: torch.nn.ModuleList, grid: list[tuple[float, float]], val: dict) -> list[dict]:
    results = []
    for head, (lr, wd) in zip(heads, grid):
        head.eval()
        probabilities = torch.cat([head(chunk).softmax(-1) for chunk in val["tokens"].split(256)])
        scores = view_averaged_accuracy(probabilities, val["labels"], val["videos"])
        results.append(
            {"lr": lr, "weight_decay": wd, **scores, "top1_se": binomial_se(scores["top1"], scores["videos"])}
        )
    return results


def binomial_se(accuracy: float, count: int) -> float:
    """Standard error of an accuracy measured on `count` independent videos."""
    return math.sqrt(accuracy * (1 - accuracy) / max(1, count))


def view_averaged_accuracy(probabilities: torch.Tensor, labels: torch.Tensor, videos: torch.Tensor) -> dict:
    """Average the class probabilities of all views of a video, then score per video."""
    unique, inverse = torch.unique(videos, return_inverse=True)
    summed = torch.zeros(len(unique), probabilities.shape[1]).index_add_(0, inverse, probabilities)
    video_labels = torch.zeros(len(unique), dtype=torch.long).index_copy_(0, inverse, labels)
    ranked = summed.argsort(dim=1, descending=True)
    correct = ranked[:, 0] == video_labels
    result = {"top1": correct.float().mean().item(), "videos": len(unique)}
    # Per val video (in `val_video_ids` order), 1 where the head is right: what a paired comparison
    # of two encoders on the same videos reads (salt/tools/claims.py).
    result["correct"] = "".join("1" if c else "0" for c in correct.tolist())
    # confusion[true][predicted], video counts: which classes a head tells apart.
    classes = probabilities.shape[1]
    result["confusion"] = (
        torch.bincount(video_labels * classes + ranked[:, 0], minlength=classes * classes)
        .view(classes, classes)
        .tolist()
    )
    if probabilities.shape[1] > 5:
        result["top5"] = (ranked[:, :5] == video_labels[:, None]).any(1).float().mean().item()
    return result


def run_probe(
    *,
    encoder: str | None,
    random_init: str | None,
    train_data: str,
    val_data: str,
    cfg: ProbeConfig,
    work_dir: str | None = None,
    arch: dict | None = None,
    checkpoint_key: str = "",
    which: ProbeData = ProbeData(),
) -> dict:
    from salt.models import build_encoder, fingerprint, load_encoder, save_encoder

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(work_dir) if work_dir else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if random_init:
            torch.manual_seed(cfg.seed)
            model = build_encoder(random_init, **{k: v for k, v in (arch or {}).items()})
            encoder_path = work / f"random_{random_init}_seed{cfg.seed}.pt"
            save_encoder(encoder_path, model, kind="random-init")
            arch, checkpoint_key = None, ""  # the saved file carries its arch
        else:
            encoder_path = Path(encoder)
            model, _ = load_encoder(encoder_path, arch, checkpoint_key or None)
        encoder_fingerprint = fingerprint(model.state_dict())
        train, train_seconds = extract_features(
            encoder_path, train_data, work / "features_train", cfg, False, arch, checkpoint_key, which
        )
        val, val_seconds = extract_features(
            encoder_path, val_data, work / "features_val", cfg, True, arch, checkpoint_key, which
        )
        num_classes = int(max(train["labels"].max(), val["labels"].max()).item()) + 1
        heads = train_heads(train, val, num_classes, cfg, which.progress)
    # Without the stored tokens, every epoch would decode and run the encoder over the training
    # views again: that is what the feature cache saves.
    per_epoch_heads = heads["head_train_seconds"] / heads["epochs"]
    cached_total = train_seconds + val_seconds + heads["head_train_seconds"]
    online_total = heads["epochs"] * (train_seconds + per_epoch_heads) + val_seconds
    return {
        "encoder": str(encoder) if encoder else f"random-init {random_init}",
        "protocol": cfg.protocol,
        "fingerprint": encoder_fingerprint,
        "config": asdict(cfg),
        "classes": num_classes,
        "train_samples": int(train["tokens"].shape[0]),
        "val_videos": heads["best"]["videos"],
        "val_video_ids": torch.unique(val["videos"]).tolist(),  # the order of each head's `correct`
        "skipped": {"train": train["skipped"], "val": val["skipped"]},  # only with --allow-missing
        **heads,
        "seconds": {"train_features": train_seconds, "val_features": val_seconds, "heads": heads["head_train_seconds"]},
        "feature_cache_speedup": online_total / cached_total,
    }


def format_probe(report: dict) -> str:
    lines = [
        f"{report['protocol']} probe of {report['encoder']} (fingerprint {report['fingerprint'][:12]}), "
        f"{report['classes']} classes, {report['train_samples']} training views, {report['val_videos']} val videos × "
        f"{report['config']['eval_clips']}×{report['config']['eval_spatial']} views, seed {report['config']['seed']}",
        f"{'lr':>9}{'wd':>9}{'top-1':>8}{'± s.e.':>8}{'top-5':>8}",
    ]
    for head in report["heads"]:
        top5 = f"{head['top5']:.1%}" if "top5" in head else "-"
        marker = "  <- best" if head is report["best"] or head == report["best"] else ""
        lines.append(
            f"{head['lr']:>9.0e}{head['weight_decay']:>9.0e}{head['top1']:>8.1%}{head['top1_se']:>8.1%}{top5:>8}{marker}"
        )
    for split, skipped in report.get("skipped", {}).items():
        if skipped:
            lines.append(
                f"skipped {len(skipped)} {split} videos (--allow-missing): "
                + "; ".join(f"{e['path']}: {e['reason']}" for e in skipped[:3])
                + ("; …" if len(skipped) > 3 else "")
            )
    s = report["seconds"]
    lines.append(
        f"features: train {s['train_features']:.1f} s, val {s['val_features']:.1f} s; heads {s['heads']:.1f} s; "
        f"feature cache speed-up vs. encoding every epoch: {report['feature_cache_speedup']:.1f}x"
    )
    return "\n".join(lines)


def save_report(report: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1))
