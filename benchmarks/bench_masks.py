"""Benchmark of salt.masks: time per call, and mask ratios after equalisation per micro-batch.

Run: python benchmarks/bench_masks.py [--calls 200] [--steps 50]

The ratios after equalisation shrink as the micro-batch grows (the batch minimum of more
samples is smaller); FLOP counts must use them rather than the nominal block scales.
"""

import argparse
import platform
import statistics
import time

import torch

from salt.masks import DEFAULT_MASKS, MultiBlockMasker

GRID = (8, 14, 14)  # 16 frames at 224², tubelet 2, patch 16


def time_per_call_us(masker: MultiBlockMasker, batch_size: int, calls: int, warmup: int = 20) -> float:
    """Median wall time of one masker(batch_size, step) call, in microseconds."""
    for step in range(warmup):
        masker(batch_size, step)
    durations = []
    for step in range(warmup, warmup + calls):
        start = time.perf_counter()
        masker(batch_size, step)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations) * 1e6


def mean_ratios(masker: MultiBlockMasker, batch_size: int, steps: int) -> list[tuple[float, float, float]]:
    """Per config: (masked fraction before, target ratio after, context ratio after), mean over steps."""
    sums = [[0.0, 0.0, 0.0] for _ in masker.configs]
    for step in range(steps):
        for config_sums, pair in zip(sums, masker(batch_size, step)):
            config_sums[0] += pair.masked_fraction_before.mean().item()
            config_sums[1] += pair.target_ratio
            config_sums[2] += pair.context_ratio
    return [tuple(total / steps for total in config_sums) for config_sums in sums]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per setting")
    parser.add_argument("--steps", type=int, default=50, help="steps averaged per micro-batch size")
    args = parser.parse_args()

    masker = MultiBlockMasker(GRID, DEFAULT_MASKS, seed=0)
    print(
        f"grid {GRID}, {masker.num_tokens} tokens; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}"
    )

    # DataLoader workers run with one torch thread; the main process with all cores.
    default_threads = torch.get_num_threads()
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        us = time_per_call_us(masker, 64, args.calls)
        print(
            f"masker(64, step), {threads} torch thread(s): median {us:8.0f} µs per call "
            f"({us / 64:.1f} µs per sample, {len(masker.configs)} configs)"
        )
    torch.set_num_threads(default_threads)

    print(f"\nmean over {args.steps} steps (masked before = union fraction per sample before equalisation)")
    print(f"{'config':<34} {'batch':>5} {'masked before':>13} {'target after':>12} {'context after':>13}")
    for batch_size in (8, 24, 64):
        for config, (before, target, context) in zip(masker.configs, mean_ratios(masker, batch_size, args.steps)):
            name = f"{config.num_blocks} blocks, spatial {config.spatial_scale[0]}"
            print(f"{name:<34} {batch_size:>5} {before:>13.3f} {target:>12.3f} {context:>13.3f}")


if __name__ == "__main__":
    main()
