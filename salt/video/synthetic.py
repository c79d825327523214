"""The embedded synthetic data set: real H.264 mp4 files whose labels need motion.

Built to be a fair probe benchmark (docs/results.md, "Calibration"):
- Smooth textures: a periodic sum of `waves` low-frequency sinusoids plus `blobs` soft blobs,
  evaluated analytically at transformed coordinates (no resampling blur, no high-frequency
  detail that per-patch-normalised pixel targets cannot learn). Fewer waves and no blobs (the
  calibrated benchmark: 2 and 0) leave a random-init encoder less to read motion from.
- The label is a global motion pattern of the whole scene, so any crop shows it, and a
  single frame is (close to) uninformative: every class draws rotation, position and scale
  from the same marginal distribution.
- The scene holds still for `frame_step × tubelet` source frames and moves between such
  periods. Each video is exactly one clip window long (`(frames − 1) × frame_step + 1`
  frames), so every clip starts at frame 0 and the periods line up with tubelets. With
  `tubelet` equal to the models' (2) the motion is invisible inside one token, which a ViT
  could not learn within CPU budgets; with `tubelet 1` (the calibrated benchmark) the scene
  moves between every two clip frames, so the motion shows inside each tubelet of 2.
- Flip-safe labels: a horizontal flip maps every class to itself (no left/right classes;
  clockwise and anticlockwise rotation are one class).
- Motion in screen space (generator version 2, the default): "up" moves the texture up the
  screen, "sideways" left or right, "shake" back and forth along the horizontal axis, whatever
  the texture's random orientation. Version 1 (sets made before it; `--generator-version 1`)
  applied the translation before the scene's random rotation, so "up", "down" and "sideways"
  were each a translation in a uniformly random screen direction: one distribution, three
  labels. A set's version is in its `synthetic.json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

CLASSES = ("static", "up", "down", "sideways", "zoom_in", "zoom_out", "rotate", "shake")
GENERATOR_VERSIONS = (1, 2)  # 2: motion in screen space (see the module docstring)


@dataclass
class SyntheticSpec:
    videos: int = 160
    seed: int = 0
    size: int = 96  # height = width, even (H.264 with yuv420p needs even sides)
    frames: int = 16  # frames per clip the set is made for
    frame_step: int = 4
    tubelet: int = 2
    fps: int = 30
    val_fraction: float = 0.25
    motion: float = 1.0  # scales every class's motion per hold period (shift, spin, zoom rate)
    waves: int = 6  # sinusoids in each scene's texture
    blobs: int = 3  # soft blobs on top of it
    version: int = GENERATOR_VERSIONS[-1]  # the generator's version; older ones stay reproducible

    def validate(self) -> None:
        if self.version not in GENERATOR_VERSIONS:
            raise ValueError(f"generator version {self.version} is unknown; choose one of {GENERATOR_VERSIONS}")
        if self.size % 2 or self.size < 16:
            raise ValueError(f"size must be even and >= 16, got {self.size}")
        if self.videos < len(CLASSES):
            raise ValueError(f"need at least {len(CLASSES)} videos (one per class), got {self.videos}")
        if self.frames % self.tubelet:
            raise ValueError(f"frames ({self.frames}) must be a multiple of tubelet ({self.tubelet})")
        if self.waves < 1 or self.blobs < 0:
            raise ValueError(f"a scene needs waves >= 1 and blobs >= 0, got {self.waves} and {self.blobs}")
        if self.motion <= 0:
            raise ValueError(f"motion must be > 0, got {self.motion}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def video_frames(self) -> int:
        return (self.frames - 1) * self.frame_step + 1

    @property
    def hold(self) -> int:
        """Source frames the scene holds still: one tubelet of the clip."""
        return self.frame_step * self.tubelet


def render_video(spec: SyntheticSpec, video_index: int) -> tuple[np.ndarray, int]:
    """Frames `[video_frames, size, size, 3]` uint8 and the class index of one video."""
    rng = np.random.default_rng([spec.seed, video_index])
    label = video_index % len(CLASSES)
    scene = _random_scene(rng, spec.waves, spec.blobs)
    periods = math.ceil(spec.video_frames / spec.hold)
    motion = _motion(CLASSES[label], periods, spec.size, rng, spec.motion, spec.version)
    grid = np.arange(spec.size, dtype=np.float64) + 0.5
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    centre = spec.size / 2
    frames = np.empty((spec.video_frames, spec.size, spec.size, 3), dtype=np.uint8)
    offset = rng.uniform(0, spec.size, size=2)  # where in the texture the screen centre starts
    for period in range(periods):
        angle, scale, shift_y, shift_x = motion[period]
        cos, sin = math.cos(angle), math.sin(angle)
        if spec.version == 1:
            # Rotate, scale about the centre, then translate in texture space (random direction).
            dy, dx = (ys - centre) / scale, (xs - centre) / scale
            u, v = centre + cos * dy - sin * dx - shift_y, centre + sin * dy + cos * dx - shift_x
        else:
            # Translate on the screen first: a texture point moves by (shift_y, shift_x) pixels.
            dy, dx = (ys - centre - shift_y) / scale, (xs - centre - shift_x) / scale
            u, v = centre + cos * dy - sin * dx + offset[0], centre + sin * dy + cos * dx + offset[1]
        image = _shade(scene, u / spec.size, v / spec.size)  # texture coordinates, period 1
        first, last = period * spec.hold, min((period + 1) * spec.hold, spec.video_frames)
        frames[first:last] = image
    return frames, label


def write_mp4(
    path: str | Path, frames: np.ndarray, fps: int = 30, codec: str = "libx264", pix_fmt: str = "yuv420p", crf: int = 18
) -> None:
    """Write uint8 `[T,H,W,3]` frames with PyAV (yuv420p needs even sides; yuv444p takes any)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            # The rendered frames are exact for a seed; the encoded bytes are not always: with
            # PyAV 18 / libx264 about one set of 16 videos in six differs in one file from a
            # rerun, even single-threaded, while the frames handed over are identical.
            stream.options = {"crf": str(crf), "preset": "medium"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_synthetic(out: str | Path, spec: SyntheticSpec) -> dict:
    """Write `videos/*.mp4`, `train.csv`, `val.csv` and `synthetic.json`; return a summary."""
    spec.validate()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rows = {"train": [], "val": []}
    counts = {"train": [0] * len(CLASSES), "val": [0] * len(CLASSES)}
    for index in range(spec.videos):
        frames, label = render_video(spec, index)
        name = f"videos/{index:06d}.mp4"
        write_mp4(out / name, frames, spec.fps)
        # Classes go round-robin; whole rounds go to val at the rate val_fraction (the second
        # round first, so even two rounds give both splits): balanced splits.
        split = "val" if _is_val_round(index // len(CLASSES), spec.val_fraction) else "train"
        rows[split].append(f"{name} {label}")
        counts[split][label] += 1
    for split, lines in rows.items():
        (out / f"{split}.csv").write_text("\n".join(lines) + "\n")
    summary = {
        "spec": asdict(spec),
        "classes": list(CLASSES),
        "counts": counts,
        "video_frames": spec.video_frames,
        "hold_frames": spec.hold,
        "bytes": sum(p.stat().st_size for p in (out / "videos").glob("*.mp4")),
    }
    (out / "synthetic.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def make_benchmark_videos(folder: str | Path, videos: int, seconds: int, width: int = 640, height: int = 360) -> Path:
    """Wide H.264 clips of smooth moving texture for decode benchmarks; returns their CSV."""
    folder = Path(folder)
    spec = SyntheticSpec(videos=max(videos, len(CLASSES)), size=height)
    lines = []
    for index in range(videos):
        frames, label = render_video(spec, index)  # one clip window, square
        wide = np.concatenate([frames, frames[:, :, ::-1]], axis=2)[:, :, :width]
        length = seconds * spec.fps
        clip = np.concatenate([wide, wide[::-1]] * (length // (2 * len(wide)) + 1))[:length]
        write_mp4(folder / f"{index:05d}.mp4", clip, spec.fps)
        lines.append(f"{index:05d}.mp4 {label}")
    (folder / "videos.csv").write_text("\n".join(lines) + "\n")
    return folder / "videos.csv"


def format_summary(summary: dict) -> str:
    spec = summary["spec"]
    lines = [
        f"synthetic set: {spec['videos']} videos, {spec['size']}x{spec['size']}, {summary['video_frames']} frames "
        f"at {spec['fps']} fps (one clip of {spec['frames']} frames every {spec['frame_step']}; scene holds "
        f"{summary['hold_frames']} frames = one tubelet), {summary['bytes'] / 1e6:.1f} MB",
        f"{'class':<10} {'train':>6} {'val':>6}",
    ]
    for index, name in enumerate(summary["classes"]):
        lines.append(f"{name:<10} {summary['counts']['train'][index]:>6} {summary['counts']['val'][index]:>6}")
    return "\n".join(lines)


def single_frame_baseline(train, val, frame_indices=(0, 28, 60), pool: int = 8) -> list[float]:
    """Val accuracy of logistic regression on one frame's pixels (pooled to pool×pool), per frame.

    The synthetic labels need motion, so this should sit near chance (1 / number of classes).
    """
    import torch

    from salt.video.decoders import decode_frames

    def features(records, frame_index):
        rows = []
        for record in records:
            frame = decode_frames(record.path, [frame_index])[0]
            image = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
            rows.append(torch.nn.functional.adaptive_avg_pool2d(image, pool).flatten())
        return torch.stack(rows), torch.tensor([record.label for record in records])

    accuracies = []
    for frame_index in frame_indices:
        x_train, y_train = features(train, frame_index)
        x_val, y_val = features(val, frame_index)
        mean, std = x_train.mean(0), x_train.std(0) + 1e-6
        x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
        linear = torch.nn.Linear(x_train.shape[1], len(CLASSES))
        optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=300)

        def closure():
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(linear(x_train), y_train) + 1e-3 * linear.weight.square().sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        with torch.no_grad():
            accuracies.append((linear(x_val).argmax(1) == y_val).float().mean().item())
    return accuracies


def _is_val_round(round_index: int, val_fraction: float) -> bool:
    return math.floor((round_index + 1) * val_fraction + 0.5) > math.floor(round_index * val_fraction + 0.5)


def _random_scene(rng: np.random.Generator, waves: int, blobs: int) -> dict:
    # Integer frequencies keep the texture periodic on the unit torus, so shifts wrap seamlessly.
    freqs = rng.integers(-3, 4, size=(waves, 2))
    freqs[np.all(freqs == 0, axis=1)] = (1, 0)
    return {
        "base": rng.uniform(0.25, 0.75, size=3),
        "freqs": freqs.astype(np.float64),
        "phases": rng.uniform(0, 2 * np.pi, size=(waves, 3)),
        "amps": rng.uniform(0.04, 0.12, size=(waves, 3)),
        "blob_centres": rng.uniform(0, 1, size=(blobs, 2)),
        "blob_radii": rng.uniform(0.07, 0.14, size=blobs),
        "blob_colours": rng.uniform(-0.35, 0.35, size=(blobs, 3)),
    }


def _shade(scene: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    image = np.broadcast_to(scene["base"], u.shape + (3,)).copy()
    for (fy, fx), phase, amp in zip(scene["freqs"], scene["phases"], scene["amps"]):
        image += amp * np.sin(2 * np.pi * (fy * u + fx * v)[..., None] + phase)
    for (cy, cx), radius, colour in zip(scene["blob_centres"], scene["blob_radii"], scene["blob_colours"]):
        dy = (u - cy + 0.5) % 1.0 - 0.5  # distance on the torus
        dx = (v - cx + 0.5) % 1.0 - 0.5
        image += np.exp(-(dy**2 + dx**2) / (2 * radius**2))[..., None] * colour
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def _motion(
    kind: str, periods: int, size: int, rng: np.random.Generator, amount: float = 1.0, version: int = 2
) -> list[tuple[float, float, float, float]]:
    """(angle, scale, shift_y, shift_x) per period; every class shares the same marginals.

    Version 1 adds a random texture offset to the shifts; version 2's shifts are the screen
    motion alone (the offset is drawn by the caller) and its shake is horizontal."""
    centre_period = (periods - 1) / 2
    zoom_rate = rng.uniform(1.06, 1.10) ** amount
    angle0 = rng.uniform(0, 2 * np.pi)
    shift0 = rng.uniform(0, size, size=2)
    static_scale = zoom_rate ** rng.uniform(-centre_period, centre_period)
    speed = amount * size * rng.uniform(0.07, 0.11)  # pixels per period
    spin = amount * rng.choice((-1.0, 1.0)) * rng.uniform(0.12, 0.2)  # radians per period
    sideways_sign = rng.choice((-1.0, 1.0))
    steps = []
    for p in range(periods):
        angle, scale, sy, sx = angle0, static_scale, 0.0, 0.0
        if kind == "up":
            sy = -speed * p
        elif kind == "down":
            sy = speed * p
        elif kind == "sideways":
            sx = sideways_sign * speed * p
        elif kind == "zoom_in":
            scale = zoom_rate ** (p - centre_period)
        elif kind == "zoom_out":
            scale = zoom_rate ** (centre_period - p)
        elif kind == "rotate":
            angle = angle0 + spin * p
        elif kind == "shake" and version == 1:
            sy = speed * (p % 2)
        elif kind == "shake":
            sx = sideways_sign * speed * (p % 2)
        if version == 1:
            sy, sx = shift0[0] + sy, shift0[1] + sx
        steps.append((angle, scale, sy, sx))
    return steps
