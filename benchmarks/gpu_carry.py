"""What the GPU evidence carries to a bare GPU machine, and its install there.

The machine (docs: the device notes, KINDS.md) has Python 3.12 with torch, timm, opencv, pillow,
fsspec, pyyaml, click, tqdm, safetensors, psutil, msgpack, ninja, einops, py-cpuinfo and
nvidia-ml-py, and no network. Processes 1 and 2 need more there; `make gpu-wheels` (this file's
`build`) puts it under gpu-carry/, which the device call names in `carry`:

    gpu-carry/wheels/   the wheels below, for CPython 3.12 on manylinux x86-64
    gpu-carry/clips/    real H.264 clips (640x360, 10 s, ~1 Mbit/s) and videos.csv, made here with PyAV

PyAV, not OpenCV, decodes there: `salt cache-latents` decodes with PyAV by default
(salt/video/decoders.py), so process 1 is measured as it runs; an OpenCV path would time a
decoder the project never uses. Its wheel is abi3 (cp311 and newer) with FFmpeg bundled, so the
py3.12 machine takes it; at ~34 MiB it is most of what is carried.

`install` (run by benchmarks/gpu_evidence.py) installs, with `pip install --no-deps --no-index`,
only the carried wheels whose distribution the machine lacks, or has at an older version (the
one case: typing-extensions, whose floor pydantic raises), into a folder put first on PYTHONPATH.

    python benchmarks/gpu_carry.py build [--out gpu-carry]    # here, with a package index and PyAV
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CARRY = REPO / "gpu-carry"

# (distribution, version, top-level module): tested together on the development machine.
WHEELS = (
    ("av", "18.1.0", "av"),  # video decoding, process 1 (salt/video/pyav_decoder.py)
    ("numcodecs", "0.16.6", "numcodecs"),  # latent compression (salt/latents/codecs.py)
    ("simplejpeg", "1.9.0", "simplejpeg"),  # stored frames (salt/latents/codecs.py)
    ("zarr", "3.1.6", "zarr"),  # imported by the cache's reader and writer (salt/latents/zarr_store.py)
    ("donfig", "0.8.1.post1", "donfig"),  # zarr's
    ("google-crc32c", "1.9.0", "google_crc32c"),  # zarr's
    ("deepspeed", "0.19.8", "deepspeed"),  # process 2's engine (a pure-Python wheel built here)
    ("hjson", "3.1.0", "hjson"),  # deepspeed's
    ("pydantic", "2.14.4", "pydantic"),  # deepspeed's
    ("pydantic-core", "2.50.5", "pydantic_core"),  # pydantic's
    ("annotated-types", "0.8.0", "annotated_types"),  # pydantic's
    ("typing-inspection", "0.4.5", "typing_inspection"),  # pydantic's
    ("typing-extensions", "4.16.0", "typing_extensions"),  # pydantic's floor
)
# Packages the GPU machine lacks that the project uses somewhere; none of the GPU scripts may
# import those not carried (tests/test_gpu_scripts.py refuses them while running the scripts).
MISSING_ON_GPU = ("deepspeed", "decord", "av", "zarr", "numcodecs", "simplejpeg", "webdataset", "ray", "s3fs")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64", "manylinux2010_x86_64")
CLIPS = {"count": 8, "seconds": 10, "width": 640, "height": 360, "bit_rate": 1_000_000, "grain": 4.0}


def carried_modules() -> set[str]:
    return {module for _, _, module in WHEELS}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_distribution(path: Path) -> tuple[str, str]:
    """(normalised distribution name, version) from a wheel's file name."""
    name, version = path.name.split("-")[:2]
    return _normal(name), version


def _older(installed: str, carried: str) -> bool:
    def key(version: str) -> tuple:
        return tuple(int(p) if p.isdigit() else 0 for p in re.split(r"[.+-]", version)[:4])

    return key(installed) < key(carried)


def install(wheels: Path, target: Path, python: str = sys.executable) -> dict:
    """Install the carried wheels this interpreter lacks into `target`; what was done, timed."""
    start = time.perf_counter()
    chosen, present = [], {}
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel_distribution(wheel)
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or _older(installed, version):
            chosen.append(wheel)
        else:
            present[name] = installed
    report = {
        "wheels_dir": str(wheels),
        "carried_mib": sum(w.stat().st_size for w in wheels.glob("*.whl")) / 2**20,
        "installed": [wheel_distribution(w)[0] + "==" + wheel_distribution(w)[1] for w in chosen],
        "already_present": present,
        "target": str(target),
    }
    if chosen:
        argv = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        argv += ["--no-cache-dir", "--upgrade", "--target", str(target), *map(str, chosen)]
        done = subprocess.run(argv, capture_output=True, text=True)
        report["pip_rc"] = done.returncode
        report["pip_output"] = (done.stdout + done.stderr)[-3000:]
    report["seconds"] = time.perf_counter() - start
    return report


def build_wheels(folder: Path) -> None:
    """Download (or, for deepspeed, which PyPI has as an sdist only, build) the carried wheels."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    built = [f"{name}=={version}" for name, version, _ in WHEELS if name == "deepspeed"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(folder), *built], check=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)] + ["--platform", "any"]
    wanted = [f"{name}=={version}" for name, version, _ in WHEELS if name != "deepspeed"]
    subprocess.run(
        [*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12"]
        + ["--implementation", "cp", *platforms, "-d", str(folder), *wanted],
        check=True,
    )


def make_clips(folder: Path, count: int, seconds: int, width: int, height: int, bit_rate: int, grain: float) -> Path:
    """Real H.264 clips of moving texture with film grain, encoded at a bit rate like web video's
    (smooth synthetic frames alone encode to ~0.1 Mbit/s, which decodes faster than real video);
    returns their CSV. Needs PyAV (here, not on the GPU machine)."""
    import av
    import numpy as np

    sys.path.insert(0, str(REPO))
    from salt.video.synthetic import SyntheticSpec, render_video

    folder.mkdir(parents=True, exist_ok=True)
    spec = SyntheticSpec(videos=max(count, 8), size=height)
    rng = np.random.default_rng(0)
    lines = []
    for index in range(count):
        frames, label = render_video(spec, index)  # one clip window, square
        wide = np.concatenate([frames, frames[:, :, ::-1]], axis=2)[:, :, :width]
        length = seconds * spec.fps
        clip = np.concatenate([wide, wide[::-1]] * (length // (2 * len(wide)) + 1))[:length]
        with av.open(str(folder / f"{index:03d}.mp4"), mode="w") as container:
            stream = container.add_stream("libx264", rate=spec.fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.bit_rate, stream.options = bit_rate, {"preset": "medium"}
            for image in clip:
                noisy = np.clip(image + rng.normal(0, grain, (height, width, 1)), 0, 255).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        lines.append(f"{index:03d}.mp4 {label}")
    (folder / "videos.csv").write_text("\n".join(lines) + "\n")
    return folder / "videos.csv"


def sizes(carry: Path) -> dict:
    wheels = sum(p.stat().st_size for p in (carry / "wheels").glob("*.whl"))
    clips = sum(p.stat().st_size for p in (carry / "clips").glob("*.mp4"))
    return {"wheels_mib": wheels / 2**20, "clips_mib": clips / 2**20, "total_mib": (wheels + clips) / 2**20}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build what the GPU evidence carries (wheels and clips).")
    parser.add_argument("command", choices=("build", "sizes"))
    parser.add_argument("--out", type=Path, default=CARRY)
    parser.add_argument("--no-clips", action="store_true", help="wheels only")
    args = parser.parse_args(argv)
    if args.command == "build":
        build_wheels(args.out / "wheels")
        if not args.no_clips:
            make_clips(args.out / "clips", **CLIPS)
    report = sizes(args.out)
    print(
        f"{args.out}: wheels {report['wheels_mib']:.1f} MiB + clips {report['clips_mib']:.1f} MiB = "
        f"{report['total_mib']:.1f} MiB (goal <= 60 MiB; the device call carries at most 64 MiB with the tree)"
    )


if __name__ == "__main__":
    main()
