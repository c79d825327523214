"""Section process1 of the GPU evidence (benchmarks/gpu_evidence.py): `salt cache-latents` end to
end over the carried H.264 clips, beside its two stages alone, on this machine.

Rows, in order of value (a row the section's remaining time cannot hold is skipped, saying so):
- decode_alone: decode + random resized crop + JPEG round trip in as many worker processes as
  cores, as the command's workers do (salt.tools.bench.decode_alone); steady views/s from the
  first video on.
- teacher_alone: the teacher forward as the command runs it (TeacherForward: bf16 on the GPU,
  the copies to and from it included) over those frames; views/s, MFU, peak memory.
- whole_command: `salt cache-latents` itself. Its steady views/s come from the done marks of the
  shards of its second half (the first half holds the start and the backlog the workers decoded
  ahead while the teacher loaded and, with --compile, compiled); the ratio to the slower stage
  alone; the GPU's utilisation meanwhile.
- jpeg: stored frames of that cache decoded on the device in one batched call (nvJPEG,
  `data.decode_frames: device`) vs. on one CPU core (the reader's simplejpeg).
vit_large, then the RoPE vit_large, eager, then both compiled. The first eager whole command's
cache (vit_large's, or the RoPE teacher's if that failed) is kept for section process2's students.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evidence_common import (
    GpuSampler,
    Rows,
    SectionFile,
    device,
    fresh_device_memory,
    mfu,
    peak_memory_gib,
    run_logged,
    section_args,
    tail,
)

STUDENT_CACHE = "student_cache.txt"  # in --work: the path of the cache section process2 reads


@dataclass(frozen=True)
class Sizes:
    archs: tuple[str, ...]
    frames: int
    size: int
    views: int  # per video
    videos: int  # the carried clips, listed again and again (each listing gets its own views)
    shard_videos: int
    batch: int  # views per teacher forward
    workers: int  # decode worker processes
    keep_videos: int  # decoded videos held for the teacher-alone rows
    repeats: int  # passes of the teacher over them
    jpeg_views: int


# 192 videos: while the teacher loads (and compiles), the workers decode ahead up to
# workers × prefetch 4 (+1 each) = 80 videos at 16 cores, all within the first half; the second
# half, where the steady rate is read, is past that backlog.
FULL = Sizes(("vit_large", "vit_large_rope"), 16, 224, 8, 192, 8, 32, os.cpu_count() or 1, 8, 4, 64)
SMOKE = Sizes(("vit_tiny", "vit_tiny_rope"), 8, 32, 2, 8, 2, 4, 2, 2, 1, 4)
# Seconds a row is expected to take on the H200 machine (a guess until measured): a row is
# skipped, not started, when less of the section's cap is left.
ESTIMATE_S = {"decode": 30, "teacher": 20, "teacher_compiled": 90, "whole": 40, "whole_compiled": 60, "jpeg": 10}


def video_list(clips: Path, work: Path, videos: int) -> Path:
    """A CSV listing the carried clips again and again, `videos` lines in all."""
    lines = [line.split() for line in (clips / "videos.csv").read_text().splitlines() if line.strip()]
    rows = [f"{(clips / lines[i % len(lines)][0]).resolve()} {lines[i % len(lines)][-1]}" for i in range(videos)]
    path = work / "videos.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def steady_rate(cache: Path) -> dict:
    """Views/s between the done marks of the shards of the cache's second half."""
    marks = sorted(
        (p.stat().st_mtime, json.loads(p.read_text())["record"]["samples"]) for p in (cache / "done").glob("*.json")
    )
    window = marks[max(0, len(marks) // 2 - 1) :]
    views, seconds = sum(n for _, n in window[1:]), (window[-1][0] - window[0][0]) if window else 0.0
    return {
        "views_per_s": views / seconds if seconds > 0 else None,
        "steady_views": views,
        "steady_s": seconds,
        "shards": len(marks),
        "from": window[0][0] if window else 0.0,
        "to": window[-1][0] if window else 0.0,
    }


class Process1:
    def __init__(self, args, sizes: Sizes, rows: Rows, sampler: GpuSampler):
        self.args, self.sizes, self.rows, self.sampler = args, sizes, rows, sampler
        self.work = args.work / "process1"
        self.logs = args.work / "logs"
        self.work.mkdir(parents=True, exist_ok=True)
        self.data = video_list(args.clips, self.work, sizes.videos)
        self.decoding = None
        self.decode_rate: float | None = None
        self.teacher_rates: dict[tuple[str, bool], float] = {}
        self.student_cache: Path | None = None

    def teacher(self, arch: str) -> Path:
        """A random-init teacher checkpoint (speed does not depend on the weights)."""
        import torch

        from salt.models import build_encoder, save_encoder

        path = self.work / f"teacher_{arch}.pt"
        if not path.exists():
            torch.manual_seed(0)
            encoder = build_encoder(arch, img_size=self.sizes.size, num_frames=self.sizes.frames)
            save_encoder(path, encoder, kind="teacher")
        return path

    def decode_alone(self) -> dict:
        from salt.cache_latents import CacheJob
        from salt.tools.bench import decode_alone

        s = self.sizes
        job = CacheJob(
            teacher="",
            data=str(self.data),
            out=str(self.work / "decode_only"),
            views=s.views,
            workers=s.workers,
            batch_size=s.batch,
            shard_videos=s.shard_videos,
            progress=False,
        )
        self.decoding = decode_alone(job, None, s.frames, s.size, keep=s.keep_videos)
        self.decode_rate = self.decoding.steady_views_per_s
        frame_bytes = [sum(len(b) for b in v["encoded"]) for item in self.decoding.items for v in item["views"]]
        return {
            "views": self.decoding.views,
            "seconds": self.decoding.seconds,
            "views_per_s_wall": self.decoding.views / self.decoding.seconds,
            "views_per_s": self.decode_rate,
            "views_per_s_per_worker": self.decode_rate / s.workers if self.decode_rate else None,
            "jpeg_bytes_per_view": sum(frame_bytes) / len(frame_bytes),
        }

    def teacher_alone(self, arch: str, compiled: bool) -> dict:
        from salt.models import load_encoder
        from salt.precision import resolve_precision
        from salt.tools.bench import forward_alone
        from salt.tools.flops import frozen_forward_part

        if self.decoding is None:
            raise RuntimeError("no decoded frames: the decode_alone row did not finish")
        s = self.sizes
        encoder, arch_dict = load_encoder(self.teacher(arch))
        flops = frozen_forward_part("1", arch, arch_dict, s.frames, s.size, 1).counted_per_clip  # meta device
        fresh_device_memory()
        started = time.perf_counter()
        latents, seconds = forward_alone(encoder, self.decoding.items, s.batch, "auto", compiled, s.repeats)
        rate = len(latents) / seconds
        self.teacher_rates[(arch, compiled)] = rate
        return {
            "views": len(latents),
            "batch": s.batch,
            "seconds": seconds,
            "views_per_s": rate,
            "warmup_s": time.perf_counter() - started - seconds,  # with --compile: the compilation
            "tflop_per_view": flops / 1e12,
            "mfu": mfu(flops * rate),
            "peak_memory_gib": peak_memory_gib(),
            "precision": resolve_precision("auto"),
            "device": device(),
            **self.sampler.window(time.time() - seconds, time.time()),
        }

    def whole_command(self, arch: str, compiled: bool) -> dict:
        s, mode = self.sizes, "compiled" if compiled else "eager"
        out, log = self.work / f"cache_{arch}_{mode}", self.logs / f"cache-latents-{arch}-{mode}.log"
        shutil.rmtree(out, ignore_errors=True)
        argv = [sys.executable, "-m", "salt.cli", "cache-latents", "--teacher", self.teacher(arch)]
        argv += ["--data", self.data, "--out", out, "--views", s.views, "--workers", s.workers]
        argv += ["--batch-size", s.batch, "--shard-videos", s.shard_videos, "--no-progress"]
        argv += ["--compile"] if compiled else []
        started = time.time()
        rc = run_logged(argv, log, timeout=self.rows.left())
        wall = time.time() - started
        if rc != 0:
            raise RuntimeError(f"salt cache-latents exited with {rc}:\n{tail(log)}")
        manifest = json.loads((out / "manifest.json").read_text())
        steady = steady_rate(out)
        stages = {"decode": self.decode_rate, "teacher": self.teacher_rates.get((arch, compiled))}
        measured = {k: v for k, v in stages.items() if v}
        slowest = min(measured, key=measured.get) if measured else None
        rate = steady["views_per_s"]
        if self.student_cache is None and not compiled:  # the first eager cache: vit_large's, or else RoPE's
            self.student_cache = out
            (self.args.work / STUDENT_CACHE).write_text(str(out))
        elif out != self.student_cache:
            shutil.rmtree(out, ignore_errors=True)  # GBs at full size: keep only the students' cache
        views = manifest["sample_count"]
        return {
            "views": views,
            "wall_s": wall,
            "views_per_s_wall": views / wall,
            "views_per_s": rate,
            "steady_views": steady["steady_views"],
            "steady_s": steady["steady_s"],
            "shards": steady["shards"],
            "slowest_stage": slowest,
            "slowest_stage_views_per_s": measured.get(slowest),
            "ratio_to_slowest": rate / measured[slowest] if rate and slowest else None,
            "latent_bytes_per_view": manifest["latent_bytes"] / max(1, views),
            "frame_bytes_per_view": manifest["frame_bytes"] / max(1, views),
            **self.sampler.window(steady["from"], steady["to"]),
        }

    def jpeg(self) -> dict:
        import torch

        from salt.latents import open_cache
        from salt.latents.codecs import decode_frames, decode_jpeg_batch

        if self.student_cache is None:
            raise RuntimeError("no cache: the first whole_command row did not finish")
        shards = open_cache(self.student_cache, "wds")
        samples = (frames for shard in range(len(shards.manifest.shards)) for *_, frames, _ in shards.raw_shard(shard))
        stored = list(itertools.islice(samples, self.sizes.jpeg_views))
        on = device()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            cpu_s = _timed(lambda: [decode_frames(frames) for frames in stored], rounds=3)
        finally:
            torch.set_num_threads(threads)
        device_s = _timed(lambda: decode_jpeg_batch(stored, on), rounds=5, cuda=on == "cuda")
        return {
            "views": len(stored),
            "frames_per_view": len(stored[0]),
            "bytes_per_view": sum(len(b) for frames in stored for b in frames) / len(stored),
            "cpu_ms_per_view": cpu_s / len(stored) * 1000,
            "device": on,
            "device_ms_per_view": device_s / len(stored) * 1000,
            "device_vs_cpu_core": cpu_s / device_s,
        }


def _timed(fn, rounds: int, cuda: bool = False) -> float:
    """Seconds per call, after one warm-up call."""
    import torch

    fn()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / rounds


def main() -> None:
    args = section_args(__doc__.splitlines()[0])
    sizes = SMOKE if args.smoke else FULL
    estimate = dict.fromkeys(ESTIMATE_S, 0) if args.smoke else ESTIMATE_S  # a smoke run skips nothing for time
    clips = sorted(args.clips.glob("*.mp4"))
    settings = {
        **asdict(sizes),
        "frame_step": 4,
        "clips": len(clips),
        "clip_mib": sum(p.stat().st_size for p in clips) / 2**20,
        "precision": "auto (bf16 where supported)",
    }
    file = SectionFile(args.json, settings)
    rows = Rows(file, args.deadline)
    with GpuSampler() as sampler:
        p = Process1(args, sizes, rows, sampler)
        rows.run("decode_alone", {"workers": sizes.workers}, estimate["decode"], p.decode_alone)
        for compiled in (False, True):
            for arch in sizes.archs:
                what = {"arch": arch, "compiled": compiled}
                if compiled and args.smoke and not args.smoke_compile:
                    rows.skip("teacher_alone", what, "smoke run: nothing compiles in CI")
                    rows.skip("whole_command", what, "smoke run: nothing compiles in CI")
                    continue
                suffix = "_compiled" if compiled else ""
                rows.run("teacher_alone", what, estimate["teacher" + suffix], p.teacher_alone, arch, compiled)
                fresh_device_memory()
                rows.run("whole_command", what, estimate["whole" + suffix], p.whole_command, arch, compiled)
                if "jpeg" not in file.data["results"] and p.student_cache is not None:
                    rows.run("jpeg", {"views": sizes.jpeg_views}, estimate["jpeg"], p.jpeg)


if __name__ == "__main__":
    main()
