"""`salt export`: SALT encoders as transformers folders that `AutoModel.from_pretrained` loads
without SALT and that give the same tokens; everything no transformers class computes exactly is
refused, and nothing half-made is ever left behind."""

import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from salt.cli import main
from salt.errors import one_line_errors
from salt.export.hf_export import FRESH_PREDICTOR, export_encoder
from salt.models import build_encoder, load_encoder, save_encoder
from salt.models.errors import ExportError
from tests.test_checkpoint import random_encoder_weights
from tests.test_hf_videomae import randomised
from tests.test_rope import vjepa2_checkpoint

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

# The loading side, run as `python -I -c`: -I drops PYTHONPATH, the working directory and the user's
# site-packages from sys.path, but the venv's editable install of SALT still makes `salt` importable,
# so a meta-path hook refuses it; the script checks that it really cannot import salt.
LOADER = r"""
import importlib.abc, json, sys

class NoSalt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "salt" or name.startswith("salt."):
            raise ImportError(f"{name} is blocked: this side runs without SALT")
        return None

sys.meta_path.insert(0, NoSalt())
try:
    import salt
    raise SystemExit(f"salt is importable from {salt.__file__}")
except ImportError:
    pass
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

jobs, inputs_file, outputs_file = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
inputs, outputs, report = load_file(inputs_file), {}, {}
for name, folder in jobs.items():
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    problems = {key: sorted(value) for key, value in info.items() if value}
    argument = "pixel_values_videos" if model.config.model_type == "vjepa2" else "pixel_values"
    with torch.no_grad():
        result = model.eval()(**{argument: inputs[name]})  # VJEPA2Model runs its predictor too
    outputs[name] = result.last_hidden_state.contiguous()
    report[name] = {"class": type(model).__name__, "problems": problems, "salt": getattr(model.config, "salt", None)}
save_file(outputs, outputs_file)
assert not any(m == "salt" or m.startswith("salt.") for m in sys.modules)
print(json.dumps(report))
"""


def tiny(seed=0, **arch):
    torch.manual_seed(seed)
    return randomised(
        build_encoder(
            {
                **dict(embed_dim=64, depth=2, num_heads=4, img_size=32, num_frames=8, patch_size=8, pos_embed="rope"),
                **arch,
            }
        ),
        seed,
    )


def without_salt(tmp_path, jobs, inputs):
    """Load every exported folder with transformers in a process that cannot import salt."""
    save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            LOADER,
            json.dumps({k: str(v) for k, v in jobs.items()}),
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "outputs.safetensors"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(tmp_path / "outputs.safetensors"), json.loads(done.stdout.strip().splitlines()[-1])


def test_exports_load_in_transformers_without_salt_and_give_the_same_tokens(tmp_path):
    save_encoder(tmp_path / "student.pt", tiny(), kind="student")  # a RoPE student
    save_encoder(tmp_path / "mae.pt", tiny(1, pos_embed="sincos1d"), kind="student")  # full qkv bias
    save_encoder(
        tmp_path / "mae_pooled.safetensors", tiny(2, pos_embed="sincos1d", qkv_bias="qv", final_norm=False), kind="x"
    )
    hub = randomised(
        transformers.VJEPA2Model(
            transformers.VJEPA2Config(
                crop_size=32,
                frames_per_clip=8,
                patch_size=8,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                pred_hidden_size=24,
                pred_num_attention_heads=2,
                pred_num_hidden_layers=1,
            )
        ),
        seed=3,
    )
    hub.save_pretrained(tmp_path / "hub")
    randomised(
        transformers.VideoMAEModel(
            transformers.VideoMAEConfig(
                image_size=32,
                patch_size=8,
                num_frames=8,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                use_mean_pooling=False,
            )
        ),
        seed=5,
    ).save_pretrained(tmp_path / "hub_mae")
    torch.save(vjepa2_checkpoint(random_encoder_weights(seed=4)), tmp_path / "vjepa2.pt")
    commands = {
        "student": ["student.pt"],
        "mae": ["mae.pt"],
        "mae_pooled": ["mae_pooled.safetensors"],
        "hub": ["hub"],
        "hub_mae": ["hub_mae"],
        "vjepa2": [
            "vjepa2.pt",
            "--checkpoint-key",
            "encoder",
            "--arch",
            "num_heads=4",
            "--arch",
            "img_size=8",
            "--arch",
            "num_frames=4",
        ],
    }
    for name, (source, *options) in commands.items():
        result = CliRunner().invoke(
            main, ["export", str(tmp_path / source), "--out", str(tmp_path / "out" / name), *options]
        )
        assert result.exit_code == 0, (name, result.output, result.exception)
    ours, inputs = {}, {}
    for name, (source, *options) in commands.items():
        encoder, arch = load_encoder(
            tmp_path / source,
            checkpoint_key="encoder" if name == "vjepa2" else None,
            arch={"num_heads": 4, "img_size": 8, "num_frames": 4} if name == "vjepa2" else None,
        )
        size, frames = arch["img_size"], arch["num_frames"]
        inputs[name] = torch.randn(2, frames, 3, size, size, generator=torch.Generator().manual_seed(len(name)))
        with torch.no_grad():
            ours[name] = encoder.eval()(inputs[name].permute(0, 2, 1, 3, 4))
    theirs, report = without_salt(tmp_path, {name: tmp_path / "out" / name for name in commands}, inputs)
    for name in commands:
        diff = (theirs[name] - ours[name]).abs().max().item()
        print(f"{name}: {report[name]['class']}, max abs diff {diff:.2e}")
        assert diff <= 1e-4 and not report[name]["problems"], (name, diff, report[name])
    assert {report[n]["class"] for n in ("student", "hub", "vjepa2")} == {"VJEPA2Model"}
    assert {report[n]["class"] for n in ("mae", "mae_pooled", "hub_mae")} == {"VideoMAEModel"}
    assert (
        report["student"]["salt"]["predictor"]["kind"] == "fresh"
        and report["hub"]["salt"]["predictor"]["kind"] == "source"
    )
    exported = load_file(tmp_path / "out" / "hub" / "model.safetensors")  # the Hub folder's own predictor, unchanged
    assert all(torch.equal(exported[k], v) for k, v in hub.state_dict().items() if k.startswith("predictor."))
    record = json.loads((tmp_path / "out" / "student" / "salt_export.json").read_text())
    assert record["input"]["layout"] == "[B, T, C, H, W]" and record["token_grid"] == [4, 4, 4]
    assert (
        record["input"]["normalisation"]["mean"] == [0.485, 0.456, 0.406] and len(record["sha256"]["student.pt"]) == 64
    )
    (tmp_path / "plain").mkdir()  # as readable as any folder and file made here (mkdtemp: 0700, safetensors: 0600)
    (tmp_path / "plain" / "file").write_text("")
    modes = lambda path: {p.stat().st_mode & 0o777 for p in [path, *path.iterdir()]}  # noqa: E731
    assert modes(tmp_path / "out" / "student") == modes(tmp_path / "plain")


def test_the_fresh_predictor_is_small_seeded_and_said_to_be_untrained(tmp_path):
    student = tiny()
    save_encoder(tmp_path / "student.pt", student, kind="student")
    export_encoder(tmp_path / "student.pt", tmp_path / "a")
    back, _ = load_encoder(tmp_path / "a")  # and the export reads back as the same encoder
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in back.state_dict().items())
    export_encoder(tmp_path / "student.pt", tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert (
        config["salt"]["predictor"]["kind"] == "fresh"
        and config["pred_hidden_size"] == FRESH_PREDICTOR["pred_hidden_size"]
    )
    assert "NOT TRAINED" in (tmp_path / "a" / "README.md").read_text()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "salt_export.json",
        "video_preprocessor_config.json",
    ]


def test_what_cannot_be_exported_exactly_is_refused_and_nothing_is_written(tmp_path):
    save_encoder(tmp_path / "sincos3d.pt", tiny(pos_embed="sincos3d"), kind="student")
    with pytest.raises(SystemExit) as refused, one_line_errors():
        export_encoder(tmp_path / "sincos3d.pt", tmp_path / "out")
    message = str(refused.value)
    assert "\n" not in message and "'sincos3d'" in message and "--set encoder.arch=vit_tiny_rope" in message, message
    save_encoder(tmp_path / "interleaved.pt", tiny(pos_embed="rope_interleaved"), kind="student")
    with pytest.raises(ExportError, match="rope_interleaved"):
        export_encoder(tmp_path / "interleaved.pt", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interleaved.pt", "sincos3d.pt"]  # no folder, no temp left


def test_an_existing_out_is_refused_and_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    save_encoder(tmp_path / "student.pt", tiny(), kind="student")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "student.pt"), "--out", str(tmp_path / "taken")])
    assert isinstance(result.exception, ExportError) and "already exists and is not empty" in str(result.exception)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
    (tmp_path / "empty").mkdir()
    export_encoder(tmp_path / "student.pt", tmp_path / "empty")  # an empty folder is filled
    assert (tmp_path / "empty" / "config.json").is_file()

    import salt.export.hf_export

    def fail_midway(tmp, config, tensors, record):
        (tmp / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(salt.export.hf_export, "_write_folder", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        export_encoder(tmp_path / "student.pt", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "student.pt", "taken"]


# The README's snippet, run as a user runs it: in a process that cannot import salt.
README_RUNNER = LOADER.split("import torch\n", 1)[0] + "import re, sys\nfrom safetensors.torch import save_file\n"
README_RUNNER += r"""
folder, video, out = sys.argv[1], sys.argv[2], sys.argv[3]
readme = open(folder + "/README.md").read()
snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
scope = {}
exec(snippet.replace("THIS_FOLDER", folder).replace("VIDEO.mp4", video), scope)
save_file({"tokens": scope["tokens"].contiguous()}, out)
assert not any(m == "salt" or m.startswith("salt.") for m in sys.modules)
"""


def readme_tokens(tmp_path, folder, video) -> torch.Tensor:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = tmp_path / f"{folder.name}-{video.stem}.safetensors"
    done = subprocess.run(
        [sys.executable, "-I", "-c", README_RUNNER, str(folder), str(video), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(out)["tokens"]


def salt_tokens(encoder, video, frames: int, frame_step: int, size: int) -> torch.Tensor:
    """SALT's tokens of a video file: its evaluation clip (frame 0 on, central square) as the probe cuts it."""
    from salt.video.decode import decode_views
    from salt.video.views import ViewConfig, to_model_input

    cfg = ViewConfig(frames=frames, frame_step=frame_step, size=size, eval_clips=1, eval_spatial=1)
    ((clip, _),) = decode_views(str(video), 0, [0], cfg)
    with torch.no_grad():
        return encoder.eval()(to_model_input(torch.from_numpy(clip)[None]))


def test_a_run_exports_its_newest_encoder_and_the_readme_feeds_it_a_video_file(
    tmp_path, rope_student_run, synthetic_set, make_video
):
    """The demo's student config (RoPE), trained: `salt export RUN` writes its newest checkpoint's
    encoder (the weights student.pt got), a step folder or a file in it that step's; the README's
    snippet, run without SALT on a decoded video file (square, and wide and short), gives SALT's
    tokens through the exported video processor."""
    run = rope_student_run["run"]
    sources = {
        "run": run,
        "step1": run / "checkpoints" / "step1",
        "file": run / "checkpoints" / "step2" / "mp_rank_00_model_states.pt",
    }
    for name, source in sources.items():
        key = ["--checkpoint-key", "encoder"] if name == "file" else []  # as a newcomer tried it: the same
        result = CliRunner().invoke(main, ["export", str(source), "--out", str(tmp_path / name), *key])
        assert result.exit_code == 0, (name, result.output, result.exception)
        assert result.output.count("\n") == 1 and "README.md" in result.output, result.output
    weights = {name: (tmp_path / name / "model.safetensors").read_bytes() for name in sources}
    assert weights["run"] == weights["file"] != weights["step1"]
    exported, arch = load_encoder(tmp_path / "run")
    student, _ = load_encoder(run / "student.pt")
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in exported.state_dict().items())
    record = json.loads((tmp_path / "run" / "salt_export.json").read_text())
    assert record["source"].endswith("at step2") and record["input"]["frame_step"] == 4
    assert (record["input"]["frames"], arch["img_size"], arch["patch_size"]) == (8, 32, 16)
    assert set(record["sha256"]) == {"config.yaml", *(p.name for p in (run / "checkpoints" / "step2").iterdir())}
    readme = (tmp_path / "run" / "README.md").read_text()
    assert "skip_predictor=True" in readme and "frame step 4" in readme and "central square" in readme
    processor = json.loads((tmp_path / "run" / "video_preprocessor_config.json").read_text())
    assert processor["video_processor_type"] == "BaseVideoProcessor" and processor["size"] == {"shortest_edge": 32}

    videos = [sorted((synthetic_set / "videos").glob("*.mp4"))[0], make_video("wide.mp4", frames=20, height=48)]
    for video in videos:  # 80x80 and 61 frames; 48x64 and 20 frames (shorter than the clip's 29)
        theirs = readme_tokens(tmp_path, tmp_path / "run", video)
        ours = salt_tokens(student, video, frames=8, frame_step=4, size=32)
        diff = (theirs - ours).abs().max().item()
        print(f"{video.name}: max abs diff {diff:.2e}")
        assert theirs.shape == ours.shape and diff <= 1e-4, (video.name, diff)

    result = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "x"), "--arch", "depth=1"])
    assert isinstance(result.exception, ExportError) and "drop --arch" in str(result.exception)


def test_a_vjepa2_checkpoint_without_its_clip_geometry_is_refused_not_assumed(tmp_path):
    torch.save(vjepa2_checkpoint(random_encoder_weights(seed=4)), tmp_path / "vjepa2.pt")
    with pytest.raises(SystemExit) as refused, one_line_errors():
        export_encoder(tmp_path / "vjepa2.pt", tmp_path / "out", {"num_heads": 4})
    message = str(refused.value)
    assert "--arch img_size=N --arch num_frames=N" in message and "\n" not in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vjepa2.pt"]
    record = export_encoder(tmp_path / "vjepa2.pt", tmp_path / "out", {"num_heads": 4, "img_size": 8, "num_frames": 4})
    assert record["input"]["frame_step"] is None and "NOT RECORDED" in (tmp_path / "out" / "README.md").read_text()
