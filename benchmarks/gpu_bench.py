"""GPU check: teacher forward throughput and a student step, at the paper's geometry (16×224²).

Needs only torch, timm and this repository (no deepspeed, decord, webdataset, zarr): it runs
on a bare CUDA machine. Prints a table and writes JSON to $OUT (or ./benchmarks/results).

    python benchmarks/gpu_bench.py [--quick]

- Teacher forward: views/s of `VideoViT` in bf16 autocast with SDPA, vit_base, vit_large and
  the RoPE vit_large (V-JEPA 2's backbone), and MFU = measured FLOP/s ÷ the GPU's dense bf16
  peak (FLOPs from torch's FLOP counter).
- Student step (vit_large student, predictor 384×12 → 1024-d targets, L1 on masked tokens, the
  two default mask configurations at micro-batch B, AdamW): the `targets: cache` case, where
  targets arrive as tensors, in plain torch (DeepSpeed is not on the machine); eager and with the
  encoder and predictor compiled in place, as `run.compile` does.
- Frames: nvJPEG (`torchvision.io.decode_jpeg(..., device="cuda")`, `data.decode_frames: device`)
  vs. torchvision's CPU decoder on one core, for a batch of 16-frame 224² views.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from salt.masks import MultiBlockMasker, apply_masks  # noqa: E402
from salt.models.predictor import Predictor  # noqa: E402
from salt.models.vit import build_encoder  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core FLOP/s


DEVICE = "cuda"
GEOMETRY = {"frames": 16, "size": 224}


def peak_flops() -> float:
    if DEVICE != "cuda":
        return float("nan")
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def timed(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def teacher_forward(arch: str, batch: int, iters: int, compile_model: bool) -> dict:
    f, s = GEOMETRY["frames"], GEOMETRY["size"]
    encoder = build_encoder(arch, num_frames=f, img_size=s).to(DEVICE).eval().requires_grad_(False)
    model = torch.compile(encoder) if compile_model else encoder
    clip = torch.randn(batch, 3, f, s, s, device=DEVICE)

    def forward():
        with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
            return model(clip)

    seconds = timed(forward, warmup=3 if compile_model else 2, iters=iters)
    with torch.no_grad():
        flops = count_flops(lambda: encoder(clip[:1])) * batch  # forward FLOPs of one batch
    result = {
        "arch": arch,
        "batch": batch,
        "compiled": compile_model,
        "s_per_batch": seconds,
        "views_per_s": batch / seconds,
        "tflop_per_view": flops / batch / 1e12,
        "mfu": flops / seconds / peak_flops(),
    }
    return result


def student_step(arch: str, batch: int, iters: int, teacher_dim: int = 1024, compile_model: bool = False) -> dict:
    f, s = GEOMETRY["frames"], GEOMETRY["size"]
    student = build_encoder(arch, num_frames=f, img_size=s).to(DEVICE)
    predictor = Predictor(student.embed_dim, teacher_dim, width=384, depth=12, num_heads=12, num_mask_tokens=2).to(
        DEVICE
    )
    if compile_model:  # what run.compile does: in place, the parameter names unchanged
        student.compile()
        predictor.compile()
    params = list(student.parameters()) + list(predictor.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=DEVICE == "cuda")
    grid = student.grid(f, s, s)
    masker = MultiBlockMasker(grid, seed=0)
    masks = [m.to(DEVICE) for m in masker(batch, 0)]
    clip = torch.randn(batch, 3, f, s, s, device=DEVICE)
    tokens = grid[0] * grid[1] * grid[2]
    targets = F.layer_norm(torch.randn(batch, tokens, teacher_dim, device=DEVICE), (teacher_dim,))

    def loss_fn():
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            losses = []
            for index, mask in enumerate(masks):
                context = student(clip, keep=mask.context_idx)
                predicted = predictor(context, mask.context_idx, mask.target_idx, grid, mask_index=index)
                losses.append((predicted.float() - apply_masks(targets, mask.target_idx)).abs().mean())
            return torch.stack(losses).mean()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    seconds = timed(step, warmup=3 if compile_model else 2, iters=iters)
    forward_flops = count_flops(loss_fn)
    train_flops = 3 * forward_flops  # backward ≈ 2× forward
    memory = torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")
    return {
        "student": arch,
        "batch": batch,
        "compiled": compile_model,
        "s_per_step": seconds,
        "clips_per_s": batch / seconds,
        "context_ratio": [m.context_ratio for m in masks],
        "target_ratio": [m.target_ratio for m in masks],
        "tflop_per_step": train_flops / 1e12,
        "mfu": train_flops / seconds / peak_flops(),
        "peak_memory_gib": memory,
        "framework": "plain torch (deepspeed not installed on this machine)",
    }


def jpeg_decode(views: int, iters: int) -> dict:
    """ms per 16-frame view: nvJPEG on the GPU (one batched call) vs. torchvision on one CPU core."""
    from torchvision.io import decode_jpeg, encode_jpeg

    f, s = GEOMETRY["frames"], GEOMETRY["size"]
    y, x = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    files = []
    for i in range(views * f):  # textured frames, q90 as the cache stores them
        image = torch.stack([(x * 3 + i * 5) % 256, (y * 2 + x) % 256, (x * y // 7 + i) % 256]).to(torch.uint8)
        files.append(encode_jpeg(image, quality=90))
    torch.set_num_threads(1)
    cpu_s = timed(lambda: decode_jpeg(files), warmup=1, iters=iters)
    result = {"views": views, "frames_per_view": f, "size": s, "cpu_ms_per_view": cpu_s / views * 1000}
    if DEVICE == "cuda":
        gpu_s = timed(lambda: decode_jpeg(files, device=DEVICE), warmup=2, iters=iters)
        result["gpu_ms_per_view"] = gpu_s / views * 1000
        result["gpu_vs_cpu_core"] = cpu_s / gpu_s
    torch.set_num_threads(os.cpu_count() or 1)
    return result


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--smoke", action="store_true", help="CPU, vit_tiny at 8x32²: checks the script, measures nothing useful"
    )
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    iters = 3 if args.quick else 10
    teachers = (("vit_base", 64), ("vit_large", 32), ("vit_large_rope", 32))
    students = (("vit_large", 16), ("vit_large", 32))
    if args.smoke:
        DEVICE = "cpu"
        GEOMETRY.update(frames=8, size=32)
        teachers, students, iters = (("vit_tiny", 4), ("vit_tiny_rope", 4)), (("vit_tiny", 4),), 1
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (smoke)"
    report = {
        "gpu": gpu,
        "torch": torch.__version__,
        "peak_bf16_flops": peak_flops(),
        "teacher": [],
        "student": [],
        "jpeg": None,
    }
    print(f"device: {gpu}, torch {torch.__version__}, geometry {GEOMETRY}")
    for arch, batch in teachers:
        for compiled in (False,) if (args.no_compile or args.smoke) else (False, True):
            try:
                row = teacher_forward(arch, batch, iters, compiled)
            except Exception as err:  # keep the other measurements of a short lease
                print(f"teacher {arch} compiled={compiled}: FAILED {type(err).__name__}: {err}", flush=True)
                continue
            report["teacher"].append(row)
            print(
                f"teacher {arch:<10} batch {batch:>3} {'compiled' if compiled else 'eager   '}: "
                f"{row['views_per_s']:8.1f} views/s, {row['tflop_per_view']:.3f} TFLOP/view, MFU {row['mfu']:.1%}",
                flush=True,
            )
    for (arch, batch), compiled in [
        (s, c) for s in students for c in ((False,) if (args.no_compile or args.smoke) else (False, True))
    ]:
        try:
            row = student_step(arch, batch, iters, compile_model=compiled)
        except Exception as err:
            print(f"student {arch} batch {batch} compiled={compiled}: FAILED {type(err).__name__}: {err}", flush=True)
            continue
        report["student"].append(row)
        print(
            f"student {arch} batch {batch} {'compiled' if compiled else 'eager   '}: {row['s_per_step'] * 1000:7.1f} "
            f"ms/step ({row['clips_per_s']:.1f} clips/s), {row['tflop_per_step']:.2f} TFLOP/step, MFU "
            f"{row['mfu']:.1%}, peak {row['peak_memory_gib']:.1f} GiB, context ratios "
            f"{[round(r, 3) for r in row['context_ratio']]}",
            flush=True,
        )
    try:
        report["jpeg"] = row = jpeg_decode(views=4 if args.smoke else 32, iters=iters)
        print(
            f"JPEG decode, 16-frame {GEOMETRY['size']}² views: CPU core {row['cpu_ms_per_view']:.2f} ms/view"
            + (
                f", nvJPEG {row['gpu_ms_per_view']:.3f} ms/view ({row['gpu_vs_cpu_core']:.1f}x a core)"
                if "gpu_ms_per_view" in row
                else ""
            ),
            flush=True,
        )
    except Exception as err:
        print(f"JPEG decode: FAILED {type(err).__name__}: {err}", flush=True)
    out = Path(os.environ.get("OUT", "benchmarks/results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / ("gpu-smoke.json" if args.smoke else "gpu.json")).write_text(
        json.dumps(report, indent=1)
    )  # a smoke run measures nothing


if __name__ == "__main__":
    main()
