"""`salt check-data`: decode every listed video once, before any teacher or student sees it.

A data list is where a first run goes wrong (paths relative to another folder, text labels,
a comma-separated file, files that are not videos); caching would only skip those videos one by
one. This decodes each video once in a contained decoder (`IsolatedDecoder`: a hang or a crash
is a failure, not a dead check), several at a time, and reports counts, frames, sizes,
durations, labels per class, and every failure by file (or CSV line) and reason.
"""

from __future__ import annotations

import concurrent.futures
import os
import statistics
import threading
from collections import Counter
from pathlib import Path

from salt.latents.storage import is_url
from salt.video.decoders import DEFAULT_DECODER
from salt.video.errors import VideoDecodeError, check_file
from salt.video.isolated import IsolatedDecoder
from salt.video.sources import VideoRecord, load_records, read_csv

DESCRIBE = "salt.video.decode:describe_record"
CHUNK = 64  # frames decoded at a time: a long video is checked whole without being held whole


def usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a scheduler's allocation), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def list_videos(data: str) -> tuple[list[VideoRecord], list[dict]]:
    """The records, and the CSV lines that name no video (all of them, not only the first)."""
    problems: list[dict] = []
    path = Path(data)
    if path.is_file() and path.suffix.lower() in (".csv", ".txt"):
        return read_csv(path, problems), problems
    return load_records(data), problems


def check_data(
    data: str, workers: int = 0, timeout: float = 60.0, progress: bool = True, decoder: str = DEFAULT_DECODER
) -> dict:
    """Describe every video of `data` (a CSV, a folder, or make-shards output) by decoding it
    with `decoder`, `workers` at a time (0: one per usable core)."""
    records, bad_lines = list_videos(data)
    workers = workers or usable_cores()
    local = threading.local()  # one decoder child per thread: the threads only wait on them
    decoders: list[IsolatedDecoder] = []

    def describe(record: VideoRecord) -> dict:
        try:
            if record.offset is None and not is_url(record.path):  # missing or empty: said without a decoder
                check_file(record.path, record.name)
            if not hasattr(local, "decoder"):
                local.decoder = IsolatedDecoder(DESCRIBE, timeout, preload=())  # describing renders no views
                decoders.append(local.decoder)
            return {"ok": True, **local.decoder(record.name, record, CHUNK, decoder)}
        except VideoDecodeError as err:
            return {"ok": False, "reason": err.reason}

    from tqdm import tqdm

    results: dict[int, dict] = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(min(workers, max(1, len(records)))) as pool:
            futures = {pool.submit(describe, record): i for i, record in enumerate(records)}
            for future in tqdm(
                concurrent.futures.as_completed(futures),
                total=len(futures),
                desc="check-data",
                unit="video",
                disable=not progress,
                dynamic_ncols=True,
                mininterval=1.0,
            ):
                results[futures[future]] = future.result()
    finally:
        for decoder in decoders:
            decoder.close()
    return {**summarise(data, records, [results[i] for i in range(len(records))], bad_lines), "workers": workers}


def summarise(data: str, records: list[VideoRecord], results: list[dict], bad_lines: list[dict]) -> dict:
    good = [r for r in results if r["ok"]]
    labels = Counter(record.label for record, result in zip(records, results) if result["ok"])
    return {
        "data": str(data),
        "listed": len(records) + len(bad_lines),
        "decoded": len(good),
        "failed": [
            {"path": record.name, "reason": result["reason"]}
            for record, result in zip(records, results)
            if not result["ok"]
        ],
        "bad_lines": bad_lines,
        "frames": _spread([r["frames"] for r in good]),
        "seconds": _spread([r["seconds"] for r in good if r["seconds"] is not None]),
        "fps": _spread([r["fps"] for r in good if r["fps"]]),
        "sizes": Counter(f"{r['width']}x{r['height']}" for r in good).most_common(),
        "codecs": Counter(r.get("codec") or "unknown" for r in good).most_common(),
        "bytes": sum(r["bytes"] for r in good),
        "labels": {
            str(label): count for label, count in sorted(labels.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
        },
    }


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def format_check(report: dict) -> str:
    unusable = len(report["failed"]) + len(report["bad_lines"])
    lines = [f"{report['data']}: {report['listed']} videos listed, {report['decoded']} decode, {unusable} unusable"]
    for name, unit in (("frames", ""), ("seconds", " s"), ("fps", "")):
        if report[name]:
            s = report[name]
            lines.append(f"  {name:9} min {s['min']:g}{unit}  median {s['median']:g}{unit}  max {s['max']:g}{unit}")
    if report["sizes"]:
        shown = ", ".join(f"{size} ({count})" for size, count in report["sizes"][:5])
        more = f", and {len(report['sizes']) - 5} more sizes" if len(report["sizes"]) > 5 else ""
        lines.append(f"  {'size':9} {shown}{more}   (width x height: videos)")
        lines.append(f"  {'bytes':9} {report['bytes'] / 1e6:.3g} MB in all")
    if report.get("codecs"):
        lines.append(f"  {'codecs':9} " + ", ".join(f"{codec} ({count})" for codec, count in report["codecs"]))
    if report["labels"]:
        per_class = ", ".join(f"{label}: {count}" for label, count in report["labels"].items())
        lines.append(f"  {'labels':9} {len(report['labels'])} classes (label: videos) {per_class}")
    for bad in report["bad_lines"]:
        lines.append(f"  line {bad['line']}: {bad['reason']}")
    for failed in report["failed"]:
        lines.append(f"  {failed['path']}: {failed['reason']}")
    if unusable:
        lines.append(f"{unusable} unusable: fix or remove those lines, then run salt check-data again")
    return "\n".join(lines)
