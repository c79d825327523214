"""What `salt bench scale` measures of one cache, each probe in a fresh process so that its time
and memory are that process's alone:

    python -m salt.tools.scale_probes PROBE CACHE [--workers W] [--samples N]

Probes print one JSON object: `open` (manifest parse; first open on the node, which writes the
node's index; another open; the epoch order; resume at 0, 50 and 99 % of an epoch, and at 50 %
on 8 ranks, through the training loader), `memory` (a rank with W loader workers: RSS, PSS and
private bytes of each at the first batch and after N samples), `merge` (the manifest written
again from the commit marks), `inspect` (summary and statistics, sampled and full
verification, compact-cache's basis fit), `epoch` (one rank's share of an epoch through the
training loader). A benchmark's own mode: nothing here is a setting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BATCH = 64


def memory_of(pid: int | str = "self") -> dict:
    """RSS, PSS and private (USS) MB of a process, from /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return {
        "rss_mb": fields["Rss"],
        "pss_mb": fields["Pss"],
        "private_mb": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
    }


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def first_batch_seconds(cache: str, fraction: float, world_size: int = 1, rank: int = 0) -> float:
    """The training loader's time to its first batch after a resume at `fraction` of an epoch."""
    from salt.latents import open_cache
    from salt.training.data import CacheBatches, ReaderShare

    samples = len(open_cache(cache))
    step = int(fraction * samples) // (BATCH * world_size)
    loader = CacheBatches(
        cache_path=cache,
        cache_format="auto",
        batch_size=BATCH,
        seed=0,
        share=ReaderShare(rank, world_size, 1),
        mask_configs=[],
        token_grid=(1, 1, 1),
        start_micro_step=step,
    )
    _, seconds = timed(lambda: next(iter(loader)))
    return seconds


def probe_open(args) -> dict:
    from salt.latents import EpochOrder, load_manifest, open_cache, storage

    before = memory_of()
    size = storage.size(storage.join(args.cache, "manifest.json"))
    _, parse = timed(lambda: load_manifest(args.cache))
    cache, first = timed(lambda: open_cache(args.cache))
    again, second = timed(lambda: open_cache(args.cache))
    order, build = timed(lambda: EpochOrder(again, 0))
    _, late = timed(lambda: order(int(len(again) * 0.99)))
    result = {
        "samples": len(cache),
        "shards": len(cache.manifest.shards),
        "manifest_mb": size / 2**20,
        "parse_s": parse,
        "first_open_s": first,
        "open_s": second,
        "order_s": build,
        "position_99_s": late,
        "open_and_order_s": second + build,
        "memory_after_open": {k: v - before[k] for k, v in memory_of().items()},
    }
    if args.read:
        for fraction in (0.0, 0.5, 0.99):
            result[f"resume_{round(fraction * 100)}_s"] = first_batch_seconds(args.cache, fraction)
        result["resume_50_on_8_ranks_s"] = first_batch_seconds(args.cache, 0.5, world_size=8, rank=3)
    return result


def probe_memory(args) -> dict:
    """A rank with `workers` loader workers: each one's memory at the first batch and after
    `samples` samples (the rank's and the workers' own figures)."""
    import psutil

    from salt.training.data import CacheBatches, ReaderShare, clip_loader

    dataset = CacheBatches(
        cache_path=args.cache,
        cache_format="auto",
        batch_size=BATCH,
        seed=0,
        share=ReaderShare(0, 1, args.workers),
        mask_configs=[],
        token_grid=(1, 1, 1),
    )
    batches = iter(clip_loader(dataset, args.workers))

    def snapshot() -> dict:
        children = psutil.Process().children(recursive=True)
        readers = [memory_of(c.pid) for c in children if c.name() == "pt_data_worker"]  # torch names its workers
        return {"rank": memory_of(), "workers": readers}

    next(batches)
    start, read = snapshot(), BATCH
    while read < args.samples:
        next(batches)
        read += BATCH
    return {"workers": args.workers, "samples_read": read, "at_first_batch": start, "after": snapshot()}


def status_mb(field: str) -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def probe_merge(args) -> dict:
    """The manifest written from the commit marks (the caller removed the old one): time, and
    the memory the merge adds at its peak (the process's peak RSS reset just before it)."""
    from salt.cache_latents.merge import merge
    from salt.latents import load_manifest
    from salt.tools.scale_caches import merge_inputs

    job, settings, view, arch = merge_inputs(args.cache, args.videos)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS
    before = status_mb("VmRSS")
    _, seconds = timed(lambda: merge(job, args.cache, settings, args.videos, (1, 1, 1), 8, view, arch))
    peak = status_mb("VmHWM") - before
    return {"merge_s": seconds, "merge_peak_mb": peak, "shards": len(load_manifest(args.cache).shards)}


def probe_inspect(args) -> dict:
    from salt.cache_latents.compact import _basis
    from salt.latents import open_cache, verify
    from salt.tools.inspection import inspect_cache

    cache = open_cache(args.cache)
    _, summary = timed(lambda: inspect_cache(args.cache, samples=64))
    _, sampled = timed(lambda: verify(cache, shards=16))
    result = {"inspect_s": summary, "verify_16_shards_s": sampled}
    if args.full:
        _, result["verify_full_s"] = timed(lambda: verify(cache))
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "basis.npz").unlink(missing_ok=True)
    _, result["basis_fit_s"] = timed(lambda: _basis(cache, scratch, rank=4, fit_samples=64))
    return result


def probe_epoch(args) -> dict:
    """Rank 0 of `--ranks` reads its share of one epoch through the training loader."""
    from salt.latents import open_cache
    from salt.training.data import CacheBatches, ReaderShare

    batches = -(-len(open_cache(args.cache)) // (BATCH * args.ranks))
    loader = CacheBatches(
        cache_path=args.cache,
        cache_format="auto",
        batch_size=BATCH,
        seed=0,
        share=ReaderShare(0, args.ranks, 1),
        mask_configs=[],
        token_grid=(1, 1, 1),
    )
    stream = iter(loader)
    _, seconds = timed(lambda: [next(stream) for _ in range(batches)])
    return {"epoch_ranks": args.ranks, "epoch_samples_per_rank": batches * BATCH, "epoch_s": seconds}


PROBES = {
    "epoch": probe_epoch,
    "open": probe_open,
    "memory": probe_memory,
    "merge": probe_merge,
    "inspect": probe_inspect,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=sorted(PROBES))
    parser.add_argument("cache")
    parser.add_argument("--read", action="store_true", help="open: also resume through the loader (needs tars)")
    parser.add_argument("--full", action="store_true", help="inspect: also verify every shard")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--videos", type=int, default=0, help="merge: the cache's videos")
    parser.add_argument("--ranks", type=int, default=1, help="epoch: ranks sharing the epoch")
    parser.add_argument("--scratch", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "salt-scale-basis"))
    args = parser.parse_args(argv)
    print(json.dumps(PROBES[args.probe](args)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
