"""How a `salt export` folder is fed, from a video file to SALT's tokens: `salt_export.json`
(where the weights came from, the clip: frames, frame step, crop, resize, normalisation), the
transformers video-processor config next to the model, and README.md with a snippet that runs.

SALT's clip of a video (its evaluation view, `salt.video.views.sample_view`): `frames` frames
`frame_step` apart from frame 0 (a video shorter than that window repeats its last frame); the
central square of side min(H, W); that square resized to `img_size`² with torchvision's
antialiased bilinear resize on uint8; then /255 and ImageNet mean/std. The processor written here
(transformers' own class, every setting in its file) resizes the short side to `img_size`,
centre-crops, rescales and normalises: on a square input that is SALT's resize and normalisation
exactly, so the snippet crops the central square before it (one line), which makes it exact on
any frame shape. It also makes every clip `crop_size`², the only size at which transformers'
VJEPA2Model computes SALT's RoPE grid. Never imports transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from salt.models import token_grid
from salt.video.views import IMAGENET_MEAN, IMAGENET_STD

EXPORT_RECORD = "salt_export.json"
PROCESSOR_CONFIG = "video_preprocessor_config.json"  # transformers' VIDEO_PROCESSOR_NAME
# VJEPA2Model takes `pixel_values_videos`, which transformers' generic BaseVideoProcessor returns
# (VJEPA2VideoProcessor fixes its resize at crop_size·256/224, a margin SALT's clip does not have);
# VideoMAEModel takes `pixel_values`, which VideoMAEVideoProcessor returns.
PROCESSOR_CLASS = {"VJEPA2Model": "BaseVideoProcessor", "VideoMAEModel": "VideoMAEVideoProcessor"}
CROP = "the central square of each frame, side min(height, width), top = round((height - side) / 2), likewise left"
RESIZE = "that square to {size}x{size}: bilinear with antialiasing on the uint8 frames (torchvision's resize)"
FRAMES = "{frames} frames {step} apart from frame 0 (a shorter video repeats its last frame)"


def processor_config(model_class: str, size: int) -> dict[str, Any]:
    """transformers' video-processor settings that give SALT's resize and normalisation."""
    return {
        "video_processor_type": PROCESSOR_CLASS[model_class],
        "do_convert_rgb": True,
        "do_sample_frames": False,  # the clip's frames are chosen by frame_step (salt_export.json)
        "do_resize": True,
        "size": {"shortest_edge": size},
        "default_to_square": False,
        "resample": 2,  # bilinear; transformers resizes with antialiasing, as SALT does
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
    }


def export_record(
    source: str, digests: Mapping[str, str], arch: Mapping[str, Any], model_class: str, predictor: str, frame_step
) -> dict:
    """salt_export.json: where the weights came from and how to feed the model."""
    grid = token_grid(arch, arch["num_frames"], arch["img_size"], arch["img_size"])
    argument = "pixel_values_videos" if model_class == "VJEPA2Model" else "pixel_values"
    size, frames = arch["img_size"], arch["num_frames"]
    if model_class == "VJEPA2Model":
        geometry = (
            f"height = width = {size} (crop_size: transformers takes the RoPE grid from it, and any other size "
            f"gives other tokens); any number of frames that is a multiple of {arch['tubelet_size']}"
        )
    else:
        geometry = f"exactly {frames} frames of {size}x{size} (VideoMAE's position table has that many tokens)"
    step = frame_step or "the source's frame step (not recorded in it; `salt export --frame-step N` writes it)"
    return {
        "format": "salt-hf-export",
        "version": 2,
        "source": source,
        "sha256": dict(digests),
        "transformers_class": model_class,
        "arch": dict(arch),
        "token_grid": list(grid),
        "tokens": grid[0] * grid[1] * grid[2],
        "embed_dim": arch["embed_dim"],
        "input": {
            "argument": argument,
            "layout": "[B, T, C, H, W]",
            "dtype": "float32",
            "channels": "RGB",
            "clip": geometry,
            "frames": frames,
            "frame_step": frame_step,
            "frame_policy": FRAMES.format(frames=frames, step=step),
            "crop": CROP,
            "resize": RESIZE.format(size=size),
            "normalisation": {
                "mean": list(IMAGENET_MEAN),
                "std": list(IMAGENET_STD),
                "how": "x = (pixels / 255 - mean) / std, per channel",
            },
            "processor": f"{PROCESSOR_CONFIG} ({PROCESSOR_CLASS[model_class]}): the resize and normalisation above; "
            "crop the central square before it (on a square frame it is the same)",
        },
        "output": "last_hidden_state [B, tokens, embed_dim], tokens in (t, h, w) order with t slowest"
        + ("" if arch["final_norm"] else "; no final norm (use_mean_pooling, as SALT's final_norm false)"),
        "predictor": predictor,
    }


def readme(record: Mapping[str, Any]) -> str:
    model_class, arch, clip = record["transformers_class"], record["arch"], record["input"]
    norm = clip["normalisation"]
    step = clip["frame_step"] or 1
    step_note = "" if clip["frame_step"] else " — NOT RECORDED by the source: put its frame step here"
    call = "model(**inputs, skip_predictor=True)" if model_class == "VJEPA2Model" else "model(**inputs)"
    why = (
        "  # skip_predictor: the encoder's tokens only; the predictor is not run"
        if model_class == "VJEPA2Model"
        else ""
    )
    return f"""# {model_class} exported by `salt export`

Encoder weights from `{record["source"]}` (sha256 in `salt_export.json`), exact: from the same
decoded frames, transformers computes the same tokens as SALT (checked in SALT's tests to 1e-4 in
fp32, through this folder's video processor).

## From a video file to SALT's tokens

```python
import av, numpy as np, torch
from transformers import AutoModel, AutoVideoProcessor

folder, video = "THIS_FOLDER", "VIDEO.mp4"
model = AutoModel.from_pretrained(folder).eval()
processor = AutoVideoProcessor.from_pretrained(folder)
frames = np.stack([f.to_ndarray(format="rgb24") for f in av.open(video).decode(video=0)])  # [T, H, W, 3] uint8
# {clip["frames"]} frames, frame step {step}, from frame 0 (a shorter video repeats its last frame){step_note}
frames = frames[np.minimum(np.arange({clip["frames"]}) * {step}, len(frames) - 1)]
side = min(frames.shape[1:3])  # SALT's crop: the central square, before any resize
top, left = round((frames.shape[1] - side) / 2), round((frames.shape[2] - side) / 2)
frames = frames[:, top : top + side, left : left + side]
inputs = processor(videos=[frames], return_tensors="pt")  # resize to {arch["img_size"]}², /255, ImageNet mean/std
with torch.no_grad():
    tokens = {call}.last_hidden_state{why}
```

- Frames: {clip["frame_policy"]}. (SALT's probes also average evenly spaced clips of longer videos.)
- Crop: {clip["crop"]}.
- Resize: {clip["resize"]} — what `{PROCESSOR_CONFIG}` does. Its own centre crop happens after
  the resize, which is SALT's only on square frames: crop first, as above.
- Normalisation: {norm["how"]}, mean {norm["mean"]}, std {norm["std"]}.
- Input: `{clip["argument"]}`, {clip["layout"]} float32; {clip["clip"]}.
- Output: {record["output"]}.

Predictor: {record["predictor"]}
"""


def write_feeding_files(folder: Path, record: Mapping[str, Any]) -> None:
    import json

    size = record["arch"]["img_size"]
    config = processor_config(record["transformers_class"], size)
    (folder / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    (folder / "README.md").write_text(readme(record))
