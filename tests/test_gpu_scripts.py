"""The GPU scripts on a machine without the packages it lacks (issue 36).

The GPU machine has torch, timm, opencv, pillow and fsspec but none of deepspeed, decord, av,
zarr, numcodecs, simplejpeg, webdataset, ray or s3fs; the evidence carries wheels for some of
them (benchmarks/gpu_carry.py). Here an import hook (a sitecustomize on PYTHONPATH, so every
process a script starts has it too) hides each package a script claims not to need, exactly as
if it were not installed, while the script runs end to end in its CPU smoke mode.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from salt.video.synthetic import write_mp4
from tests.helpers import REPO


def _load(name: str):
    """A module of benchmarks/ (not a package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_carry = _load("gpu_carry")

HIDE = '''
"""Test hook (tests/test_gpu_scripts.py): the top-level packages in $SALT_HIDDEN_PACKAGES are
not found, exactly as if they were not installed."""
import os
import sys

_HIDDEN = frozenset(filter(None, os.environ.get("SALT_HIDDEN_PACKAGES", "").split(",")))


class _Hiding:
    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _HIDDEN:
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
'''
NOT_CARRIED = sorted(set(gpu_carry.MISSING_ON_GPU) - gpu_carry.carried_modules())


def hidden_env(tmp_path: Path, hidden) -> dict:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HIDE)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)]),
        "SALT_HIDDEN_PACKAGES": ",".join(hidden),
        "PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
    }


def test_the_hook_hides_what_it_names(tmp_path):
    probe = "import importlib.util as u; print(u.find_spec('av'), u.find_spec('numpy') is not None)"
    done = subprocess.run(
        [sys.executable, "-c", probe + "; import av"], env=hidden_env(tmp_path, ["av"]), capture_output=True, text=True
    )
    assert done.stdout.split() == ["None", "True"]
    assert "No module named 'av'" in done.stderr


def test_gpu_bench_needs_none_of_the_missing_packages(tmp_path):
    out = tmp_path / "gpu-smoke.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_bench.py", "--smoke", "--json", str(out)],
        cwd=REPO,
        env=hidden_env(tmp_path, gpu_carry.MISSING_ON_GPU),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["teacher"] + report["student"] + [report["jpeg"]]
    assert [r["status"] for r in rows] == ["ok"] * 4, rows
    assert {r["arch"] for r in report["teacher"]} == {"vit_tiny", "vit_tiny_rope"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`bash benchmarks/gpu_evidence.sh --smoke` over two tiny clips, with every package the GPU
    machine lacks and the evidence does not carry hidden (one run shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("evidence")
    clips = tmp / "clips"
    t, y, x = np.arange(40)[:, None, None], np.arange(48)[None, :, None], np.arange(64)[None, None, :]
    for index in range(2):
        channels = [(x * 4 + t * 9 + 50 * index) % 256, (y * 5 + t * 3) % 256, (x + y + t * 17) % 256]
        frames = np.stack([np.broadcast_to(c, (40, 48, 64)) for c in channels], -1).astype(np.uint8)
        write_mp4(clips / f"{index}.mp4", frames)
    (clips / "videos.csv").write_text("0.mp4 0\n1.mp4 1\n")
    argv = ["bash", "benchmarks/gpu_evidence.sh", "--smoke", "--work", str(tmp / "work"), "--out", str(tmp / "out")]
    argv += ["--clips", str(clips), "--carry", str(tmp / "no-carry")]
    env = hidden_env(tmp, NOT_CARRIED)
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=540)  # < pytest's 600
    return done, tmp / "out"


@pytest.mark.slow
def test_gpu_evidence_smoke_runs_every_section(smoke):
    done, out = smoke
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    evidence = json.loads((out / "gpu-evidence.json").read_text())
    assert evidence["mode"] == "smoke" and evidence["finished"]
    sections = evidence["sections"]
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(
        ("process1", "process2", "teacher_forward"), "ok"
    ), json.dumps(sections, indent=1)[-4000:]
    results = {name: s["results"] for name, s in sections.items()}
    expected = {
        "process1": {"decode_alone", "teacher_alone", "whole_command", "jpeg"},
        "process2": {"student"},
        "teacher_forward": {"teacher"},
    }
    assert {name: set(r) for name, r in results.items()} == expected
    for name, parts in results.items():
        for part, rows in parts.items():
            for row in rows:
                # Only the compiled rows are skipped (nothing compiles in CI), each saying why.
                assert row["status"] == ("skipped" if row.get("compiled") else "ok"), (name, part, row)
                assert row["status"] == "ok" or "nothing compiles" in row["reason"]
    whole = [r for r in results["process1"]["whole_command"] if r["status"] == "ok"]
    assert [r["views"] for r in whole] == [16, 16]  # 8 listings of 2 clips x 2 views, in both teachers' caches
    with tarfile.open(out / "gpu-evidence-logs.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"process1.log", "process2.log", "teacher_forward.log", "cache-latents-vit_tiny-eager.log"} <= names
    assert (out / "gpu-evidence.txt").exists() and len(list(out.iterdir())) <= 8  # a device call brings back 8


@pytest.mark.slow
def test_every_number_of_the_evidence_is_documented(smoke):
    """docs/results.md names every field a row of the evidence can hold."""
    _, out = smoke
    evidence = json.loads((out / "gpu-evidence.json").read_text())
    fields = {"status", "reason", "error"}
    for section in evidence["sections"].values():
        for rows in section["results"].values():
            for row in rows:
                fields |= set(row)
        fields |= set(section["settings"])
    fields |= set(evidence["summary"]) | set(evidence["machine"]) | set(evidence["install"])
    documented = set(re.findall(r"`([a-z_0-9]+)`", (REPO / "docs" / "results.md").read_text()))
    assert not sorted(fields - documented), (
        f"add these to docs/results.md's GPU evidence fields: {sorted(fields - documented)}"
    )


def test_a_section_whose_packages_are_missing_is_skipped_naming_them(tmp_path):
    argv = ["bash", "benchmarks/gpu_evidence.sh", "--smoke", "--only", "process2", "--work", str(tmp_path / "work")]
    argv += ["--out", str(tmp_path / "out"), "--clips", str(tmp_path), "--carry", str(tmp_path / "no-carry")]
    env = hidden_env(tmp_path, [*NOT_CARRIED, "deepspeed"])
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    section = json.loads((tmp_path / "out" / "gpu-evidence.json").read_text())["sections"]["process2"]
    assert section["status"] == "skipped" and "missing deepspeed" in section["reason"]


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal wheel of one module (what pip needs: the module, METADATA, WHEEL, RECORD)."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", "VALUE = 1\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_only_the_wheels_the_machine_lacks_are_installed(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "salt_carried_probe", "1.0")  # not installed here: installed
    _wheel(wheels, "numpy", "0.1")  # installed here at a newer version: left alone
    report = gpu_carry.install(wheels, tmp_path / "site")
    assert report["installed"] == ["salt-carried-probe==1.0"], report
    assert "numpy" in report["already_present"] and report["pip_rc"] == 0
    assert (tmp_path / "site" / "salt_carried_probe.py").exists()
    assert not (tmp_path / "site" / "numpy").exists()


def evidence_call(tmp_path: Path, clips: Path, *only: str) -> tuple[subprocess.CompletedProcess, dict]:
    argv = ["bash", "benchmarks/gpu_evidence.sh", "--smoke", "--work", str(tmp_path / "work")]
    argv += ["--out", str(tmp_path / "out"), "--clips", str(clips), "--carry", str(tmp_path / "no-carry")]
    argv += [a for section in only for a in ("--only", section)]
    env = hidden_env(tmp_path, NOT_CARRIED)
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return done, json.loads((tmp_path / "out" / "gpu-evidence.json").read_text())["sections"]


def test_without_clips_the_call_says_what_to_run_and_no_section_is_ok(tmp_path):
    """A checkout without gpu-carry/: one line naming `make gpu-wheels` or --clips, no traceback,
    and process 2, whose rows all skip without process 1's cache, is not reported ok."""
    done, sections = evidence_call(tmp_path, tmp_path / "no-clips", "process1", "process2")
    output = done.stdout + done.stderr
    assert "Traceback" not in output and done.returncode == 0, output[-3000:]
    assert sections["process1"]["status"] == "skipped"
    assert "run `make gpu-wheels` or pass --clips DIR" in sections["process1"]["reason"]
    assert output.count("make gpu-wheels` or pass --clips DIR") == 1
    assert sections["process2"]["status"] == "skipped"
    assert sections["process2"]["reason"] == "every row skipped: no cache: section process1 wrote none"


@pytest.mark.slow
def test_a_section_that_fails_fails_the_call(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "0.mp4").write_text("not a video\n")
    (clips / "videos.csv").write_text("0.mp4 0\n")
    done, sections = evidence_call(tmp_path, clips, "process1")
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert sections["process1"]["status"] == "failed" and "rows failed" in sections["process1"]["error"]
    assert "error: section(s) process1 failed" in done.stderr
