"""GPU check: teacher forward, a student step and JPEG decoding at the paper's geometry (16×224²).

Needs only torch, timm and this repository's salt/models and salt/masks (no deepspeed, decord,
av, webdataset, zarr, numcodecs, simplejpeg): it runs on a bare CUDA machine, and
tests/test_gpu_scripts.py runs it with those packages refused. Prints a table; the JSON ($OUT/gpu.json,
else benchmarks/results/gpu.json, or --json PATH) is rewritten after every row, so a run cut
off by a time limit keeps what finished, and a row that fails is kept with its error.

    python benchmarks/gpu_bench.py [--quick] [--only teacher] [--teachers vit_base:64,...] [--json PATH]

- Teacher forward: views/s of `VideoViT` in bf16 autocast with SDPA, vit_base, vit_large and
  the RoPE vit_large (V-JEPA 2's backbone), and MFU = measured FLOP/s ÷ the GPU's dense bf16
  peak. The eager rows of every teacher come first, the compiled ones after (each compilation
  costs tens of seconds).
- Student step (vit_large student, predictor 384×12 → 1024-d targets, L1 on masked tokens, the
  two default mask configurations at micro-batch B, AdamW): targets arrive as tensors (the
  `targets: cache` case), in plain torch; eager and with the encoder and predictor compiled in
  place, as `run.compile` does. The student under DeepSpeed is benchmarks/gpu_evidence.sh's.
- Frames: nvJPEG (`torchvision.io.decode_jpeg(..., device="cuda")`, `data.decode_frames: device`)
  vs. torchvision's CPU decoder on one core, for a batch of 16-frame 224² views.

FLOPs come from torch's counter on the eager modules, counted before any timing; each row
starts from a reset peak-memory counter. How long the whole run takes on a GPU was not measured
since the compiled rows were added: give it a 10-minute limit (benchmarks/gpu_evidence.sh runs
only its teacher rows, within its own cap).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from salt.masks import MultiBlockMasker, apply_masks  # noqa: E402
from salt.models.predictor import Predictor  # noqa: E402
from salt.models.vit import build_encoder  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 tensor-core FLOP/s, datasheets
TEACHERS = (("vit_base", 64), ("vit_large", 32), ("vit_large_rope", 32))
STUDENTS = (("vit_large", 16), ("vit_large", 32))


def peak_bf16_flops(device: str) -> float | None:
    """The GPU's dense bf16 peak from its name; None on a CPU or an unlisted GPU."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@dataclass
class Bench:
    """Where and at what geometry the rows run."""

    device: str
    frames: int
    size: int
    iters: int

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn, warmup: int) -> float:
        """Seconds per call of `fn`, after `warmup` calls."""
        for _ in range(warmup):
            fn()
        self.sync()
        start = time.perf_counter()
        for _ in range(self.iters):
            fn()
        self.sync()
        return (time.perf_counter() - start) / self.iters

    def fresh_row(self) -> None:
        """Free the last row's tensors and restart the peak-memory counter."""
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_memory_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else None

    def mfu(self, flops_per_s: float) -> float | None:
        peak = peak_bf16_flops(self.device)
        return flops_per_s / peak if peak else None


def teacher_forward(bench: Bench, arch: str, batch: int, compiled: bool) -> dict:
    f, s, device = bench.frames, bench.size, bench.device
    encoder = build_encoder(arch, num_frames=f, img_size=s).to(device).eval().requires_grad_(False)
    clip = torch.randn(batch, 3, f, s, s, device=device)
    with torch.no_grad():
        flops = count_flops(lambda: encoder(clip[:1])) * batch  # eager, before timing
    model = torch.compile(encoder) if compiled else encoder

    def forward():
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            return model(clip)

    seconds = bench.timed(forward, warmup=3 if compiled else 2)
    return {
        "arch": arch,
        "batch": batch,
        "compiled": compiled,
        "s_per_batch": seconds,
        "views_per_s": batch / seconds,
        "tflop_per_view": flops / batch / 1e12,
        "mfu": bench.mfu(flops / seconds),
        "peak_memory_gib": bench.peak_memory_gib(),
    }


def student_step(bench: Bench, arch: str, batch: int, compiled: bool, teacher_dim: int = 1024) -> dict:
    f, s, device = bench.frames, bench.size, bench.device
    student = build_encoder(arch, num_frames=f, img_size=s).to(device)
    predictor = Predictor(student.embed_dim, teacher_dim, width=384, depth=12, num_heads=12, num_mask_tokens=2)
    predictor = predictor.to(device)
    params = list(student.parameters()) + list(predictor.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=device == "cuda")
    grid = student.grid(f, s, s)
    masks = [m.to(device) for m in MultiBlockMasker(grid, seed=0)(batch, 0)]
    clip = torch.randn(batch, 3, f, s, s, device=device)
    targets = F.layer_norm(torch.randn(batch, grid[0] * grid[1] * grid[2], teacher_dim, device=device), (teacher_dim,))

    def loss_fn():
        with torch.autocast(device, dtype=torch.bfloat16):
            losses = []
            for index, mask in enumerate(masks):
                context = student(clip, keep=mask.context_idx)
                predicted = predictor(context, mask.context_idx, mask.target_idx, grid, mask_index=index)
                losses.append((predicted.float() - apply_masks(targets, mask.target_idx)).abs().mean())
            return torch.stack(losses).mean()

    train_flops = 3 * count_flops(loss_fn)  # eager, before timing and compiling; backward ≈ 2× forward
    if compiled:  # what run.compile does: in place, the parameter names unchanged
        student.compile()
        predictor.compile()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()

    seconds = bench.timed(step, warmup=3 if compiled else 2)
    return {
        "student": arch,
        "batch": batch,
        "compiled": compiled,
        "s_per_step": seconds,
        "clips_per_s": batch / seconds,
        "context_ratio": [m.context_ratio for m in masks],
        "target_ratio": [m.target_ratio for m in masks],
        "tflop_per_step": train_flops / 1e12,
        "mfu": bench.mfu(train_flops / seconds),
        "peak_memory_gib": bench.peak_memory_gib(),
        "framework": "plain torch (the DeepSpeed student is benchmarks/gpu_evidence.sh's section process2)",
    }


def jpeg_decode(bench: Bench, views: int) -> dict:
    """ms per 16-frame view: nvJPEG on the GPU (one batched call) vs. torchvision on one CPU core."""
    from torchvision.io import decode_jpeg, encode_jpeg

    f, s = bench.frames, bench.size
    y, x = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    files = []
    for i in range(views * f):  # textured frames, q90 as the cache stores them
        image = torch.stack([(x * 3 + i * 5) % 256, (y * 2 + x) % 256, (x * y // 7 + i) % 256]).to(torch.uint8)
        files.append(encode_jpeg(image, quality=90))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu_s = bench.timed(lambda: decode_jpeg(files), warmup=1)
    finally:
        torch.set_num_threads(threads)
    result = {"views": views, "frames_per_view": f, "size": s, "cpu_ms_per_view": cpu_s / views * 1000}
    if bench.device == "cuda":
        gpu_s = bench.timed(lambda: decode_jpeg(files, device=bench.device), warmup=2)
        result["gpu_ms_per_view"] = gpu_s / views * 1000
        result["gpu_vs_cpu_core"] = cpu_s / gpu_s
    return result


class Report:
    """The JSON, rewritten (atomically) after every row."""

    def __init__(self, path: Path, head: dict):
        self.path, self.data = path, {**head, "teacher": [], "student": [], "jpeg": None}
        self.write()

    def add(self, kind: str, row: dict) -> None:
        if kind == "jpeg":
            self.data["jpeg"] = row
        else:
            self.data[kind].append(row)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=1))
        os.replace(partial, self.path)


def measured(report: Report, bench: Bench, kind: str, what: dict, fn, *args) -> dict | None:
    """One row: run it, keep it (or its error) in the report."""
    bench.fresh_row()
    try:
        row = fn(bench, *args)
    except Exception as err:  # keep the other rows of a short lease
        print(f"{kind} {what}: FAILED {type(err).__name__}: {err}", flush=True)
        report.add(kind, {**what, "status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]})
        return None
    report.add(kind, {**row, "status": "ok"})
    return row


def run_teachers(report: Report, bench: Bench, teachers, modes) -> None:
    for compiled in modes:  # every eager row first: the compiled ones cost a compilation each
        for arch, batch in teachers:
            what = {"arch": arch, "batch": batch, "compiled": compiled}
            row = measured(report, bench, "teacher", what, teacher_forward, arch, batch, compiled)
            if row:
                print(
                    f"teacher {arch:<14} batch {batch:>3} {'compiled' if compiled else 'eager   '}: "
                    f"{row['views_per_s']:8.1f} views/s, {row['tflop_per_view']:.3f} TFLOP/view, "
                    f"MFU {_pct(row['mfu'])}",
                    flush=True,
                )


def run_students(report: Report, bench: Bench, students, modes) -> None:
    for compiled in modes:
        for arch, batch in students:
            what = {"student": arch, "batch": batch, "compiled": compiled}
            row = measured(report, bench, "student", what, student_step, arch, batch, compiled)
            if row:
                print(
                    f"student {arch} batch {batch} {'compiled' if compiled else 'eager   '}: "
                    f"{row['s_per_step'] * 1000:7.1f} ms/step ({row['clips_per_s']:.1f} clips/s), "
                    f"{row['tflop_per_step']:.2f} TFLOP/step, MFU {_pct(row['mfu'])}, "
                    f"peak {_gib(row['peak_memory_gib'])}",
                    flush=True,
                )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} GiB"


def parse_sizes(text: str) -> tuple[tuple[str, int], ...]:
    """'vit_base:64,vit_large:32' -> (('vit_base', 64), ('vit_large', 32))."""
    pairs = []
    for item in filter(None, text.split(",")):
        arch, _, batch = item.partition(":")
        pairs.append((arch.strip(), int(batch)))
    return tuple(pairs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed iterations instead of 10")
    parser.add_argument("--iters", type=int, default=0, help="timed iterations per row (0: 10, or 3 with --quick)")
    parser.add_argument("--smoke", action="store_true", help="CPU, vit_tiny at 8x32²: checks the script only")
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--smoke-compile", action="store_true", help="with --smoke: the compiled rows too (minutes)")
    parser.add_argument("--only", action="append", choices=("teacher", "student", "jpeg"), help="these parts only")
    parser.add_argument("--teachers", type=parse_sizes, default=TEACHERS, help="ARCH:BATCH,... of the teacher rows")
    parser.add_argument("--students", type=parse_sizes, default=STUDENTS, help="ARCH:BATCH,... of the student rows")
    parser.add_argument("--json", type=Path, default=None, help="where the JSON goes (default $OUT/gpu.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parts = set(args.only or ("teacher", "student", "jpeg"))
    bench = Bench("cuda", frames=16, size=224, iters=args.iters or (3 if args.quick else 10))
    teachers, students, views = args.teachers, args.students, 32
    if args.smoke:  # a smoke run measures nothing: it shows the script works
        bench = Bench("cpu", frames=8, size=32, iters=1)
        teachers, students, views = (("vit_tiny", 4), ("vit_tiny_rope", 4)), (("vit_tiny", 4),), 4
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    # Nothing compiles in a smoke run (CI), unless asked to (a check of the compiled rows on a CPU).
    modes = (False,) if (args.no_compile or (args.smoke and not args.smoke_compile)) else (False, True)
    gpu = torch.cuda.get_device_name(0) if bench.device == "cuda" else "cpu (smoke)"
    out = Path(os.environ.get("OUT", "benchmarks/results"))
    path = args.json or out / ("gpu-smoke.json" if args.smoke else "gpu.json")
    head = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_bf16_flops": peak_bf16_flops(bench.device),
        "geometry": {"frames": bench.frames, "size": bench.size},
        "iters": bench.iters,
    }
    report = Report(path, head)
    print(f"device: {gpu}, torch {torch.__version__}, geometry {head['geometry']}; JSON: {path}", flush=True)
    if "teacher" in parts:
        run_teachers(report, bench, teachers, modes)
    if "student" in parts:
        run_students(report, bench, students, modes)
    if "jpeg" in parts:
        row = measured(report, bench, "jpeg", {"views": views}, jpeg_decode, views)
        if row:
            gpu_part = f", nvJPEG {row['gpu_ms_per_view']:.3f} ms/view" if "gpu_ms_per_view" in row else ""
            print(
                f"JPEG decode, {bench.frames}-frame {bench.size}² views: "
                f"CPU core {row['cpu_ms_per_view']:.2f} ms/view{gpu_part}"
            )


if __name__ == "__main__":
    main()
