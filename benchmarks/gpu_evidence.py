"""GPU evidence in one call: both processes measured at scale on one lent GPU machine, within
one command's time (issue 36). Run through benchmarks/gpu_evidence.sh:

    bash benchmarks/gpu_evidence.sh [--smoke] [--budget 540] [--only SECTION ...]

First the carried wheels the machine lacks are installed (benchmarks/gpu_carry.py), then the
sections run in order of value, each its own process (session) with its own time cap:

    process1         `salt cache-latents` end to end over the carried clips, beside its stages alone
    process2         students under DeepSpeed ZeRO-2 in bf16 streaming process1's cache
    teacher_forward  benchmarks/gpu_bench.py's teacher rows, kept short

A section's cap is its own share of the budget plus whatever earlier sections left unused; a
section whose packages are missing is skipped with their names; one that runs past its cap is
stopped (its whole session) and keeps the rows it finished. `$OUT/gpu-evidence.json` is
rewritten after every section and, while one runs, every few seconds from the section's own
JSON (which it rewrites after every row), so a call stopped at its limit keeps what finished.
`$OUT/gpu-evidence-logs.tar.gz` holds every log and `$OUT/gpu-evidence.txt` the summary (3 of
the 8 files a call may bring back). `--smoke` runs every section on the CPU at tiny sizes with
nothing compiled (tests/test_gpu_scripts.py, in CI). Every field: docs/results.md, "GPU evidence".
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import gpu_carry
from evidence_common import REPO, tail, write_json

POLL_S = 3.0
MARK = ".salt-gpu-evidence"  # in --work: the folder is this script's to empty
GOALS = {"process1_ratio_to_slowest": 0.9, "student_mfu_vit_large": 0.35, "cache_vs_in_memory": 1.05}
TEACHER_ROWS = "vit_base:64,vit_large:32,vit_large_rope:32"


@dataclass(frozen=True)
class Section:
    name: str
    script: str
    cap_s: float
    needs: tuple[str, ...]  # modules beyond the machine's own (carried as wheels)
    needs_clips: bool = False  # reads --clips/videos.csv

    def argv(self, args, work: Path, cap: float) -> list[str]:
        head = [sys.executable, str(REPO / "benchmarks" / self.script), "--json", str(work / f"{self.name}.json")]
        smoke = (["--smoke"] if args.smoke else []) + (["--smoke-compile"] if args.smoke_compile else [])
        if self.name == "teacher_forward":
            return head + ["--only", "teacher", "--teachers", TEACHER_ROWS, "--iters", "5"] + smoke
        paths = ["--work", str(work), "--clips", str(args.clips), "--deadline", f"{time.time() + cap:.0f}"]
        return head + paths + smoke

    def cap(self, args) -> float:
        """This section's own share of the budget (a smoke run shares its budget evenly)."""
        return args.budget / len(SECTIONS) if args.smoke else self.cap_s


SECTIONS = (
    Section("process1", "evidence_process1.py", 240, ("av", "numcodecs", "simplejpeg", "zarr"), needs_clips=True),
    Section("process2", "evidence_process2.py", 200, ("deepspeed", "numcodecs", "simplejpeg", "zarr")),
    Section("teacher_forward", "gpu_bench.py", 45, ()),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, nothing compiled: checks the script")
    parser.add_argument("--smoke-compile", action="store_true", help="with --smoke: the compiled rows too (not CI)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for everything (default 540; smoke 3600)")
    parser.add_argument("--started", type=float, default=None, help="epoch s the call started (gpu_evidence.sh's)")
    parser.add_argument("--only", action="append", choices=[s.name for s in SECTIONS], help="these sections only")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "benchmarks/results/gpu-evidence")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/salt-gpu-evidence"), help="scratch (emptied first)")
    parser.add_argument("--carry", type=Path, default=REPO / "gpu-carry", help="make gpu-wheels' output")
    parser.add_argument("--clips", type=Path, default=None, help="clips and videos.csv (default CARRY/clips)")
    args = parser.parse_args(argv)
    args.clips = args.clips or args.carry / "clips"
    args.budget = args.budget or (3600.0 if args.smoke else 540.0)
    args.started = args.started or time.time()
    return args


def machine() -> dict:
    """The machine, read without importing torch (the driver holds no GPU context)."""
    info = {"python": platform.python_version(), "cores": os.cpu_count(), "cpu": platform.machine()}
    for dist in ("torch", "timm", "triton"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = None
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
        info["cpu"] = line.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        pass
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        name, driver, memory = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.split(",")[:3]
        info.update(gpu=name.strip(), driver=driver.strip(), gpu_memory=memory.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        info.update(gpu=None, driver=None, gpu_memory=None)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    info["commit"] = commit.stdout.strip() or None
    return info


def missing_modules(modules: tuple[str, ...], env: dict) -> list[str]:
    """Which of `modules` the sections' interpreter cannot import (checked in a child, with their PYTHONPATH)."""
    if not modules:
        return []
    probe = (
        "import importlib.util, sys\n"
        "def absent(m):\n"
        "    try:\n        return importlib.util.find_spec(m) is None\n"
        "    except ImportError:\n        return True\n"
        "print(' '.join(m for m in sys.argv[1:] if absent(m)))"
    )
    done = subprocess.run([sys.executable, "-c", probe, *modules], capture_output=True, text=True, env=env)
    return done.stdout.split()


def kill_session(session: int) -> None:
    """SIGKILL every process of a section's session (its children run in process groups of their own)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, IndexError, ValueError):
            continue


class Evidence:
    """$OUT/gpu-evidence.json and its logs, rewritten as the run goes."""

    def __init__(self, args, work: Path):
        self.args, self.work, self.logs = args, work, work / "logs"
        self.data = {
            "schema": "salt-gpu-evidence/1",
            "mode": "smoke" if args.smoke else "gpu",
            "started": datetime.datetime.fromtimestamp(args.started).isoformat(timespec="seconds"),
            "budget_s": args.budget,
            "elapsed_s": 0.0,
            "finished": False,
            "goals": GOALS,
            "machine": machine(),
            "install": None,
            "sections": {},
            "summary": {},
        }

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {"status": "pending"})

    def write(self) -> None:
        self.data["elapsed_s"] = time.time() - self.args.started
        self.data["summary"] = summary(self.data)
        write_json(self.args.out / "gpu-evidence.json", self.data)

    def pack_logs(self) -> None:
        partial = self.args.out / "gpu-evidence-logs.tar.gz.partial"
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(self.logs, arcname="gpu-evidence-logs")
        os.replace(partial, self.args.out / "gpu-evidence-logs.tar.gz")


def install(evidence: Evidence, env: dict) -> None:
    wheels = evidence.args.carry / "wheels"
    if not any(wheels.glob("*.whl")):
        evidence.data["install"] = {"status": "skipped", "reason": f"no carried wheels in {wheels}"}
        return
    target = evidence.work / "site"
    report = gpu_carry.install(wheels, target)
    (evidence.logs / "install.log").write_text(json.dumps(report, indent=1))
    report["status"] = "ok" if report.get("pip_rc", 0) == 0 else "failed"
    evidence.data["install"] = report
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), env.get("PYTHONPATH")]))


def run_section(evidence: Evidence, section: Section, env: dict, later: list[Section]) -> None:
    """Run one section, capped at what the budget leaves once the later sections' own caps are set
    aside: its own cap, plus whatever earlier sections did not use."""
    args, entry = evidence.args, evidence.section(section.name)
    left = args.budget - (time.time() - args.started) - 5
    cap = left - sum(s.cap(args) for s in later)
    entry.update(cap_s=cap, needs=list(section.needs), log=f"gpu-evidence-logs/{section.name}.log")
    missing = missing_modules(section.needs, env)
    no_clips = section.needs_clips and not (args.clips / "videos.csv").is_file()
    if missing or no_clips or cap < 20:
        if missing:
            reason = f"missing {', '.join(missing)} (bring gpu-carry: make gpu-wheels)"
        elif no_clips:
            reason = f"no clips: {args.clips / 'videos.csv'} does not exist — run `make gpu-wheels` or pass --clips DIR"
        else:
            reason = "no time left"
        entry.update(status="skipped", reason=reason)
        return
    partial, log = evidence.work / f"{section.name}.json", evidence.logs / f"{section.name}.log"
    started, status = time.time(), None
    with open(log, "ab") as handle:
        argv = section.argv(args, evidence.work, cap)
        child = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        entry["status"] = "running"
        while status is None:
            try:
                rc = child.wait(timeout=POLL_S)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                if time.time() - started > cap:
                    kill_session(child.pid)
                    child.wait()
                    status = "timeout"
            _merge(entry, partial)
            evidence.write()
    kill_session(child.pid)  # anything it left running
    entry.update(status=status, seconds=time.time() - started)
    if status != "ok":
        entry["error"] = f"stopped at its cap of {cap:.0f} s" if status == "timeout" else tail(log, 25)
    if status != "failed":
        entry.update(judge_rows(entry.get("results", {}), status))


def judge_rows(results: dict, status: str) -> dict:
    """A section that ran (to its end or its cap) is ok only if no row failed and some row
    finished: any failed row makes it failed (the finished rows are kept), rows all skipped a skip."""
    rows = [row for part in results.values() for row in part]
    statuses = [row.get("status") for row in rows]
    if "failed" in statuses:
        first = next(row["error"] for row in rows if row.get("status") == "failed")
        return {"status": "failed", "error": f"{statuses.count('failed')} of {len(rows)} rows failed; first: {first}"}
    if "ok" in statuses or (status == "timeout" and not rows):
        return {}
    reasons = sorted({row.get("reason", "") for row in rows}) or ["the section wrote no rows"]
    return {"status": "skipped", "reason": "every row skipped: " + "; ".join(reasons)}


def _merge(entry: dict, partial: Path) -> None:
    try:
        data = json.loads(partial.read_text())
    except (OSError, ValueError):
        return
    if "results" not in data:  # benchmarks/gpu_bench.py's report: its head, then its rows
        rows = {k: data.pop(k) for k in ("teacher", "student", "jpeg") if k in data}
        data = {"settings": data, "results": {k: v for k, v in rows.items() if v}}
    entry.update(data)


def summary(data: dict) -> dict:
    """The numbers the goals are about, from whatever rows finished."""
    sections, out = data["sections"], {"sections": {k: v.get("status") for k, v in data["sections"].items()}}

    def finished(section: str, part: str) -> list[dict]:
        rows = sections.get(section, {}).get("results", {}).get(part, [])
        return [r for r in rows if r.get("status") == "ok"]

    def keyed(rows: list[dict], field: str) -> dict:
        return {f"{r['arch']}{' compiled' if r['compiled'] else ''}": r[field] for r in rows}

    whole, students = finished("process1", "whole_command"), finished("process2", "student")
    out["process1_ratio_to_slowest"] = keyed(whole, "ratio_to_slowest")
    out["student_mfu_in_memory"] = keyed(students, "mfu_in_memory")
    out["student_mfu_cache"] = keyed(students, "mfu_cache")
    out["student_cache_vs_in_memory"] = keyed(students, "cache_vs_in_memory")
    return out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.work
    if work.exists() and any(work.iterdir()) and not (work / MARK).exists():
        sys.exit(f"error: --work {work} holds other files — name an empty folder (it is emptied at every run)")
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    (work / MARK).touch()
    args.out.mkdir(parents=True, exist_ok=True)
    evidence = Evidence(args, work)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_CACHE_DIR": str(work.parent / "salt-inductor-cache")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if evidence.data["machine"]["gpu"]:
        env["DS_ACCELERATOR"] = "cuda"
    install(evidence, env)
    evidence.write()
    chosen = [s for s in SECTIONS if not args.only or s.name in args.only]
    for index, section in enumerate(chosen):
        print(f"== {section.name}", flush=True)
        run_section(evidence, section, env, chosen[index + 1 :])
        entry = evidence.section(section.name)
        print(f"== {section.name}: {entry['status']} {entry.get('reason') or entry.get('error') or ''}", flush=True)
        evidence.write()
        evidence.pack_logs()
    evidence.data["finished"] = True
    evidence.write()
    evidence.pack_logs()
    text = json.dumps(evidence.data["summary"], indent=1)
    (args.out / "gpu-evidence.txt").write_text(text + "\n")
    print(text)
    failed = [name for name, entry in evidence.data["sections"].items() if entry["status"] == "failed"]
    if failed:
        sys.exit(f"error: section(s) {', '.join(failed)} failed — their logs: {args.out / 'gpu-evidence-logs.tar.gz'}")


if __name__ == "__main__":
    main()
