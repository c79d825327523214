"""Decode cost per clip: decord on a 640x360 H.264 video, in process and isolated.

    python benchmarks/bench_decode.py [--seconds 10] [--repeats 20]

Prints ms per clip for: a random 16-frame window (step 4) decoded; the same rendered to
224² (crop, uint8 resize, flip); K views of one video decoded in one pass vs K passes;
and the same through IsolatedDecoder (the child-process wrapper loaders use).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from salt.video import IsolatedDecoder, ViewConfig, decode_views, open_reader, read_frames
from salt.video.synthetic import SyntheticSpec, render_video, write_mp4


def make_video(path: Path, seconds: int) -> Path:
    spec = SyntheticSpec(videos=8, size=360, frames=16, frame_step=4)
    frames, _ = render_video(spec, 1)  # 61 frames of smooth moving texture at 360x360
    wide = np.concatenate([frames, frames[:, :, ::-1], frames[:, :, :-80]], axis=2)[:, :, :640]
    clip = np.concatenate([wide] * (seconds * 30 // len(wide) + 1))[: seconds * 30]
    write_mp4(path, clip, fps=30)
    return path


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--views", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(make_video(Path(tmp) / "bench.mp4", args.seconds))
        cfg = ViewConfig(frames=16, frame_step=4, size=224)
        rng = np.random.default_rng(0)
        num_frames = len(open_reader(path))

        def window():
            start = int(rng.integers(0, num_frames - cfg.window))
            read_frames(open_reader(path), range(start, start + cfg.window, cfg.frame_step))

        counter = iter(range(10**9))
        rows = [
            ("open + decode random 16-frame window", timed(window, args.repeats), 1),
            (
                "decode_views, 1 view (decode + crop + resize 224)",
                timed(lambda: decode_views(path, next(counter), [0], cfg), args.repeats),
                1,
            ),
            (
                f"decode_views, {args.views} views in one pass",
                timed(lambda: decode_views(path, next(counter), range(args.views), cfg), args.repeats),
                args.views,
            ),
            (
                f"{args.views} separate decode_views calls",
                timed(lambda: [decode_views(path, next(counter), [v], cfg) for v in range(args.views)], args.repeats),
                args.views,
            ),
        ]
        with IsolatedDecoder() as decoder:
            rows.append(
                (
                    "IsolatedDecoder, 1 view",
                    timed(lambda: decoder(path, path, next(counter), [0], cfg), args.repeats),
                    1,
                )
            )
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{platform.node()}; video 640x360 H.264, {args.seconds} s at 30 fps"
    )
    print(f"{'what':<52} {'ms/call':>9} {'ms/view':>9}")
    for name, ms, views in rows:
        print(f"{name:<52} {ms:>9.1f} {ms / views:>9.1f}")


if __name__ == "__main__":
    main()
