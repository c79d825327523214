"""Decoders side by side (issue 42): views/s per core of every backend, beside the limit.

    python benchmarks/bench_decode.py [--repeats 12] [--rounds 3] [--decord2 DIR] [--clips DIR]

A view is what process 1 makes of a video: open, a random 16-frame window at step 4 decoded,
RGB, random resized crop to 224² (`salt.video.decode_views`, one view per open). Clips: 4 s at
30 fps with a keyframe every 60 frames, moving texture with film grain at web-like bit rates:
H.264 640x360 and 1920x1080, AV1 and VP9 1920x1080, made once with PyAV's encoders.

Backends, each in a child process pinned to one core, the same windows for all, interleaved
over `--rounds` so that a noisy moment hits all of them:
- `pyav`: SALT's default (salt/video/pyav_decoder.py);
- `pyav limit`: the same decoding of the window's frames, without colour conversion or resize;
- `decord 0.6.0`: the venv's decord where installed (what SALT used before);
- `decord2`: the maintained fork, from a `pip install --target` folder (`--decord2`; made with
  pip when missing, which needs a package index).
Prints a table and appends a JSON record to benchmarks/results/decode.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIPS = {  # name: (encoder, width, height, bit rate, options)
    "h264 640x360": ("libx264", 640, 360, 1_000_000, {"preset": "medium", "g": "60"}),
    "h264 1920x1080": ("libx264", 1920, 1080, 5_000_000, {"preset": "medium", "g": "60"}),
    "av1 1920x1080": ("libsvtav1", 1920, 1080, 3_000_000, {"preset": "8", "svtav1-params": "keyint=60"}),
    "vp9 1920x1080": ("libvpx-vp9", 1920, 1080, 4_000_000, {"deadline": "good", "cpu-used": "5", "g": "60"}),
}
DECORD2 = "decord2==3.4.0"


def clip_path(folder: Path, name: str) -> Path:
    return folder / (name.replace(" ", "_") + (".webm" if name.startswith("vp9") else ".mp4"))


def make_clips(folder: Path, seconds: int = 4, fps: int = 30) -> None:
    """Moving sinusoid texture plus film grain (smooth synthetic frames alone decode faster than video)."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (codec, width, height, bit_rate, options) in CLIPS.items():
        path = clip_path(folder, name)
        if path.exists():
            continue
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) / height
        partial = path.with_suffix(".partial" + path.suffix)
        with av.open(str(partial), mode="w", format="webm" if path.suffix == ".webm" else "mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt, stream.bit_rate = width, height, "yuv420p", bit_rate
            stream.options = options
            for t in range(seconds * fps):
                phase = t / fps
                base = [np.sin(9 * xs + 3 * phase + c) * np.cos(7 * ys - 2 * phase + 2 * c) for c in range(3)]
                image = 128 + 90 * np.stack(base, -1) + rng.normal(0, 6, (height, width, 1))
                frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        partial.rename(path)


def child(args) -> None:
    """One backend, pinned to one core: seconds per view for every clip, the same windows as the others."""
    os.sched_setaffinity(0, {args.core})
    from salt.video import ViewConfig, decode_views
    from salt.video.pyav_decoder import PyAVVideo
    from salt.video.views import view_frame_indices

    class WithoutConversion(PyAVVideo):  # the limit: the same decoding, frames left as decoded
        def _to_rgb(self, frame):
            return frame

    cfg = ViewConfig(frames=16, frame_step=4, size=224, decoder="decord" if args.child.startswith("decord") else "pyav")
    times, fallback = {}, []
    for name in CLIPS:
        path, spent = str(clip_path(args.clips, name)), []
        for video_id in [-1] + list(range(args.first_id, args.first_id + args.repeats)):  # -1: warm-up
            start = time.perf_counter()
            if args.child == "pyav limit":
                with WithoutConversion(path, path) as video:
                    video.read(view_frame_indices(video_id + 1, 0, video.num_frames, cfg))
            else:
                decode_views(path, video_id + 1, [0], cfg)
            spent.append(time.perf_counter() - start)
        times[name] = spent[1:]
    version = None
    if args.child.startswith("decord"):
        import decord

        from salt.video.decoders import open_video

        version = decord.__version__
        for name in CLIPS:  # the clips decord cannot open (AV1 in 0.6.0) were decoded by PyAV
            with open_video(clip_path(args.clips, name), decoder="decord") as video:
                fallback += [name] if video._fallback is not None else []
    print(json.dumps({"times": times, "version": version, "fallback": fallback}))


def backends(args) -> dict[str, str | None]:
    """Backend name -> a folder to put first on sys.path (None: the venv as it is)."""
    found: dict[str, str | None] = {"pyav": None, "pyav limit": None}
    probe = subprocess.run([sys.executable, "-c", "import decord; print(decord.__version__)"], capture_output=True)
    if probe.returncode == 0:
        found[f"decord {probe.stdout.decode().strip()}"] = None
    if not (args.decord2 / "decord").exists():
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(args.decord2), DECORD2]
        if subprocess.run(pip, capture_output=True).returncode != 0:
            print(f"(decord2 left out: pip could not install {DECORD2} into {args.decord2})")
            return found
    found["decord2"] = str(args.decord2)
    return found


def run_backend(args, name: str, path: str | None, first_id: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, str(REPO), env.get("PYTHONPATH")]))
    argv = [sys.executable, __file__, "--child", "decord" if name.startswith("decord") else name]
    argv += ["--clips", str(args.clips), "--repeats", str(args.repeats), "--core", str(args.core)]
    argv += ["--first-id", str(first_id)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(args) -> dict:
    found = backends(args)
    spent: dict[str, dict[str, list[float]]] = {name: {clip: [] for clip in CLIPS} for name in found}
    versions, fallback = {}, {}
    for round_index in range(args.rounds):
        for name, path in found.items():
            report = run_backend(args, name, path, first_id=round_index * args.repeats)
            versions[name], fallback[name] = report["version"], report["fallback"]
            for clip, times in report["times"].items():
                spent[name][clip] += times
    return {"spent": spent, "versions": versions, "fallback": {k: v for k, v in fallback.items() if v}}


def table(spent: dict) -> tuple[dict, list[str]]:
    rates = {name: {clip: 1 / statistics.mean(t) for clip, t in clips.items()} for name, clips in spent.items()}
    decoders = [name for name in rates if name != "pyav limit"]
    lines = [f"{'views/s per core':<16}" + "".join(f"{name:>14}" for name in rates) + f"{'pyav/limit':>12}"]
    results = {}
    for clip in CLIPS:
        row = {name: rates[name][clip] for name in rates}
        fastest = max(row[name] for name in decoders)
        results[clip] = {
            "views_per_s": row,
            "ms_per_view": {name: 1000 * statistics.mean(spent[name][clip]) for name in rates},
            "pyav_to_fastest": row["pyav"] / fastest,
            "pyav_to_limit": row["pyav"] / row["pyav limit"],
            **{f"pyav_to_{name}": row["pyav"] / row[name] for name in decoders if name != "pyav"},
        }
        cells = "".join(f"{row[name]:>14.2f}" for name in rates)
        lines.append(f"{clip:<16}{cells}{results[clip]['pyav_to_limit']:>12.2f}")
    return results, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12, help="views per clip per backend per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=Path, default=Path.home() / ".cache" / "salt-bench" / "decode-clips")
    parser.add_argument("--decord2", type=Path, default=Path.home() / ".cache" / "salt-bench" / "decord2")
    parser.add_argument("--core", type=int, default=max(os.sched_getaffinity(0)))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--first-id", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    make_clips(args.clips)
    measured = measure(args)
    results, lines = table(measured["spent"])
    print("\n".join(lines))
    for name, clips in measured["fallback"].items():
        print(f"{name} cannot open {', '.join(clips)}: PyAV decoded those (its row measures PyAV there)")
    sys.path.insert(0, str(REPO))
    from salt.tools.bench import save_record
    from salt.video.decoders import decoder_version

    settings = {
        "clips": {name: {"codec": c, "size": f"{w}x{h}", "bit_rate": b} for name, (c, w, h, b, _) in CLIPS.items()},
        "view": "16 frames step 4, random resized crop to 224, 1 view per open",
        "repeats": args.repeats,
        "rounds": args.rounds,
        "core": args.core,
        "versions": {**measured["versions"], "pyav": decoder_version("pyav")},
        "decoded_by_pyav_instead": measured["fallback"],
    }
    print(f"record: {save_record('decode', settings, results, args.results)}")


if __name__ == "__main__":
    main()
