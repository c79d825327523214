"""`salt bench scale`: a cache's costs against the size of its work, from 10^4 samples to
Kinetics-710 × 8 views (5.3 M samples in 83 000 shards), each cost's growth fitted on log-log.

Caches are fabricated through the project's writer and merge (salt/tools/scale_caches.py: real
tars of tiny samples up to `--real-up-to`, commit marks only beyond), on a local folder and,
with `--s3`, on an S3-protocol server this command starts on 127.0.0.1 (moto's, from the dev
extras), whose request log counts LIST, GET, PUT and HEAD requests. Every measurement runs in
a fresh process (salt/tools/scale_probes.py) with a fresh node-index folder, so a "first open"
is a node's first. Each row is kept in WORK/rows.jsonl as it is measured, so a stopped run
goes on where it stopped (`--fresh` measures all again). Results: one JSON record in
benchmarks/results/scale.jsonl, a log-log picture, and the table printed (docs/scale.md holds
the committed one).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from salt.latents import storage
from salt.tools.scale_caches import VIEWS, fabricate

REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP')
# The costs fitted against the number of samples, and the work each should grow no faster than.
COSTS = (
    "write_s",
    "parse_s",
    "first_open_s",
    "open_and_order_s",
    "position_99_s",
    "resume_0_s",
    "resume_99_s",
    "merge_s",
    "merge_peak_mb",
    "inspect_s",
    "verify_16_shards_s",
    "verify_full_s",
    "basis_fit_s",
    "worker_private_mb",
)


@dataclass
class ScaleSettings:
    sizes: list[int]
    real_up_to: int = 1_000_000  # largest cache written with its tars (beyond: commit marks only)
    verify_up_to: int = 100_000  # largest cache verified in full
    epoch_samples: int = 100_000  # samples the loader-memory probe reads (an epoch, at most)
    workers: int = 8  # loader workers of the memory probe's rank
    s3: bool = False
    s3_up_to: int = 5_312_000
    work: str = "/tmp/salt-bench-scale"
    picture: str = "docs/scale_costs.png"
    results: str = "benchmarks/results"
    fresh: bool = False  # measure every row again (else rows in WORK/rows.jsonl are kept)


class RequestLog:
    """Requests an S3-protocol server logged, counted between two points of the run."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def counts(self) -> dict[str, int]:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            text = handle.read().decode(errors="replace")
        counts = dict.fromkeys(("LIST", "GET", "PUT", "HEAD", "POST", "DELETE"), 0)
        for method, target in REQUEST.findall(text):
            listing = method == "GET" and ("list-type" in target or target.rstrip("/").count("/") == 1)
            counts["LIST" if listing else method] += 1
        return counts


@contextlib.contextmanager
def s3_server(work: Path, bucket: str = "bench"):
    """moto's S3 server on a free 127.0.0.1 port, its requests logged; stopped by pid."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        raise SystemExit(f"error: {binary} not found — pip install 'moto[server]' s3fs (the dev extras), or drop --s3")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = work / "s3-requests.log"
    server = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stderr=open(log, "wb"))
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env, FSSPEC_S3_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    try:
        import fsspec

        fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = os.environ["FSSPEC_S3_ENDPOINT_URL"]
        for _ in range(600):  # a bound on start-up (60 s)
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            time.sleep(0.1)
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
        yield f"s3://{bucket}/scale", RequestLog(log)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def probe(name: str, cache: str, index_dir: Path, *options: str) -> dict:
    """One measurement in a fresh process (salt/tools/scale_probes.py), with this node-index folder."""
    env = {**os.environ, "SALT_INDEX_DIR": str(index_dir)}
    argv = [sys.executable, "-m", "salt.tools.scale_probes", name, cache, *options]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"scale probe {name} on {cache} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def killed_merge_reruns(cache: str, videos: int, index_dir: Path) -> dict:
    """A merge killed while it writes the manifest, then run again: the rerun's manifest is the
    one an unkilled merge writes (but for its creation time)."""
    from salt.latents import load_manifest

    before = load_manifest(cache).to_json()
    storage.remove(storage.join(cache, "manifest.json"))
    script = (
        "import os, signal, sys; import salt.cache_latents.merge as m\n"
        "real = m.write_json_atomic\n"
        "def write(path, obj):\n"
        "    if str(path).endswith('manifest.json'): os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(path, obj)\n"
        "m.write_json_atomic = write\n"
        "from salt.tools.scale_probes import main; main(['merge', sys.argv[1], '--videos', sys.argv[2]])\n"
    )
    env = {**os.environ, "SALT_INDEX_DIR": str(index_dir)}
    killed = subprocess.run([sys.executable, "-c", script, cache, str(videos)], capture_output=True, env=env).returncode
    left = storage.exists(storage.join(cache, "manifest.json"))
    rerun = probe("merge", cache, index_dir, "--videos", str(videos)) if not left else {}
    rerun = {f"rerun_{k}": v for k, v in rerun.items()}
    after = load_manifest(cache).to_json()
    same = {k: v for k, v in before.items() if k != "created"} == {k: v for k, v in after.items() if k != "created"}
    return {"killed_merge_status": killed, "killed_merge_left_manifest": left, "rerun_same_manifest": same, **rerun}


def measure_row(
    store: str, where: str, samples: int, real: bool, work: Path, log: RequestLog | None, args: ScaleSettings
) -> dict:
    """Every cost of one cache (made here first), with the requests each made on a store."""
    index_dir = work / f"index-{store}-{samples}"
    shutil.rmtree(index_dir, ignore_errors=True)
    index_dir.mkdir(parents=True)
    started = time.perf_counter()
    cache = fabricate(where, samples, real)
    row = {"store": store, "samples": cache.samples, "shards": cache.shards, "real": real}
    row["write_s"] = time.perf_counter() - started

    def counted(name: str, fn):
        if log is not None:
            log.mark()
        found = fn()
        if log is not None:
            found[f"{name}_requests"] = log.counts()
        return found

    row.update(counted("open", lambda: probe("open", cache.path, index_dir, *(["--read"] if real else []))))
    videos = cache.samples // VIEWS
    storage.remove(storage.join(cache.path, "manifest.json"))  # before counting: the merge writes it again
    row.update(counted("merge", lambda: probe("merge", cache.path, index_dir, "--videos", str(videos))))
    row.update(counted("killed_merge", lambda: killed_merge_reruns(cache.path, videos, index_dir)))
    if real:
        full = ["--full"] if samples <= args.verify_up_to else []
        row.update(counted("inspect", lambda: probe("inspect", cache.path, index_dir, *full)))
    if real and store == "local":
        epoch = str(min(samples, args.epoch_samples))
        memory = probe("memory", cache.path, index_dir, "--workers", str(args.workers), "--samples", epoch)
        workers = memory["after"]["workers"] or [{"private_mb": float("nan"), "pss_mb": float("nan")}]
        row.update(memory=memory, worker_private_mb=max(w["private_mb"] for w in workers))
        row["workers_pss_mb"] = sum(w["pss_mb"] for w in workers)
    if real and store == "s3" and samples <= args.verify_up_to:
        row.update(counted("epoch", lambda: probe("epoch", cache.path, index_dir, "--ranks", "2")))
    row["index_file_mb"] = sum(p.stat().st_size for p in index_dir.glob("*.idx")) / 2**20
    return row


def _read_rows(path: Path) -> list[dict]:
    """Rows an earlier run of these settings measured (a torn last line is measured again)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def _points(rows: list[dict], store: str, cost: str) -> list[tuple[int, float]]:
    """(samples, cost) of a store's rows; a write is compared only among caches written with tars."""
    return sorted(
        (r["samples"], r[cost])
        for r in rows
        if r["store"] == store and r.get(cost, 0) > 0 and (cost != "write_s" or r["real"])
    )


def exponents(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per store and cost: the slope of log(cost) against log(samples) (least squares)."""
    fitted: dict[str, dict[str, float]] = {}
    for store in sorted({r["store"] for r in rows}):
        for cost in COSTS:
            points = _points(rows, store, cost)
            if len({n for n, _ in points}) >= 2:
                x, y = np.log([n for n, _ in points]), np.log([c for _, c in points])
                fitted.setdefault(store, {})[cost] = float(np.polyfit(x, y, 1)[0])
    return fitted


def picture(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for store, axis in zip(("local", "s3"), axes):
        for i, cost in enumerate(COSTS):
            points = _points(rows, store, cost)
            if len(points) >= 2 and not cost.endswith("_mb"):
                style = {"marker": "os^"[i // 10], "linestyle": "-" if i < 10 else "--"}  # 10 colours repeat
                axis.loglog(*zip(*points), label=cost.removesuffix("_s"), **style)
        axis.set(title=f"{store}: seconds against samples", xlabel="samples in the cache", ylabel="seconds")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def table(rows: list[dict], fitted: dict) -> list[str]:
    shown = ("samples", "shards", *COSTS)
    lines = ["| store | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for r in rows:
        cells = [_cell(r.get(name)) for name in shown]
        lines.append(f"| {r['store']} | " + " | ".join(cells) + " |")
    for store, slopes in fitted.items():
        cells = ["", ""] + [f"{slopes[c]:.2f}" if c in slopes else "" for c in COSTS]
        lines.append(f"| {store}: exponent | " + " | ".join(cells) + " |")
    return lines


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3g}"


def bench_scale(args: ScaleSettings) -> dict:
    """Every size on every store; the record, the picture and the table."""
    from salt.tools.bench import save_record

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [(n, n <= args.real_up_to) for n in args.sizes]
    measured = work / "rows.jsonl"  # each row as it is measured: a stopped run goes on from here
    if args.fresh:
        measured.unlink(missing_ok=True)
    earlier = {(r["store"], r["samples"]): r for r in _read_rows(measured)}
    rows = []
    with contextlib.ExitStack() as stack:
        stores = [("local", str(work / "local"), None)]
        if args.s3:
            url, log = stack.enter_context(s3_server(work))
            stores.append(("s3", url, log))
        for store, base, log in stores:
            for samples, real in sizes:
                if store == "s3" and samples > args.s3_up_to:
                    continue
                if (store, samples) in earlier:
                    rows.append(earlier[store, samples])
                    print(f"{store} {samples:,}: measured earlier ({measured})", flush=True)
                    continue
                where = f"{base}/{'real' if real else 'marks'}-{samples}"
                rows.append(measure_row(store, where, samples, real, work, log, args))
                with measured.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "memory"}), flush=True)
    fitted = exponents(rows)
    settings = asdict(args)
    path = save_record("scale", settings, {"rows": rows, "exponents": fitted}, args.results)
    picture(rows, Path(args.picture))
    print("\n".join(table(rows, fitted)))
    print(f"record: {path}; picture: {args.picture}")
    return {"rows": rows, "exponents": fitted}
