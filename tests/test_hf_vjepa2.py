"""Hugging Face `transformers` V-JEPA 2 folders as encoders: the imported encoder computes what
VJEPA2Model computes. The tests build tiny random models with transformers (a dev dependency);
the project never imports it."""

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from salt.models import CheckpointError, build_encoder, load_encoder
from salt.models.hf_vjepa2 import HONOURED_FIELDS, IGNORED_FIELDS, REFUSED_UNLESS
from salt.models.rope import rope_tables, rotate
from tests.test_hf_videomae import cache_then_student, randomised

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)
modeling_vjepa2 = pytest.importorskip("transformers.models.vjepa2.modeling_vjepa2")

# 8 frames of 32², patch 8, tubelet 2: a 4×4×4 grid; 4 heads of 16 (4 dims per axis, 4 left unrotated).
FRAMES, SIZE = 8, 32


def tiny_config(**overrides):
    return transformers.VJEPA2Config(
        **{
            **dict(
                crop_size=SIZE,
                frames_per_clip=FRAMES,
                patch_size=8,
                tubelet_size=2,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                mlp_ratio=2.0,
                pred_hidden_size=24,
                pred_num_attention_heads=2,
                pred_num_hidden_layers=1,
                pred_num_mask_tokens=2,
            ),
            **overrides,
        }
    )


def videos(batch=2, seed=0):
    return torch.randn(
        batch, FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)
    )  # HF: [B, T, C, H, W]


def max_diff(encoder, model, x):
    with torch.no_grad():
        expected = model(pixel_values_videos=x, skip_predictor=True).last_hidden_state
        return (encoder.eval()(x.permute(0, 2, 1, 3, 4)) - expected).abs().max().item()


def edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_vjepa2_model_folder_gives_transformers_outputs(tmp_path, qkv_bias):
    model = randomised(transformers.VJEPA2Model(tiny_config(qkv_bias=qkv_bias)))
    model.save_pretrained(tmp_path / "hf")
    encoder, arch = load_encoder(tmp_path / "hf")
    assert (arch["pos_embed"], arch["qkv_bias"], arch["img_size"], arch["num_frames"]) == (
        "rope",
        qkv_bias,
        SIZE,
        FRAMES,
    )
    assert max_diff(encoder, model, videos()) <= 1e-4
    alone, _ = load_encoder(tmp_path / "hf" / "model.safetensors")  # the weight file with its config.json beside it
    assert torch.equal(alone.state_dict()["blocks.1.attn.qkv.weight"], encoder.state_dict()["blocks.1.attn.qkv.weight"])


def test_classification_model_and_sharded_folder_give_the_encoder(tmp_path):
    classifier = randomised(transformers.VJEPA2ForVideoClassification(tiny_config(num_labels=3)), seed=1)
    classifier.save_pretrained(tmp_path / "classifier", max_shard_size="40KB")
    assert (tmp_path / "classifier" / "model.safetensors.index.json").is_file()  # sharded
    encoder, _ = load_encoder(tmp_path / "classifier")  # predictor, pooler and classifier skipped by name
    assert max_diff(encoder, classifier.vjepa2, videos(seed=1)) <= 1e-4


def test_every_field_transformers_writes_is_accounted_for(tmp_path):
    transformers.VJEPA2Model(tiny_config()).save_pretrained(tmp_path / "hf")
    written = set(json.loads((tmp_path / "hf" / "config.json").read_text())) | set(
        transformers.VJEPA2Config().to_dict()
    )
    known = set(HONOURED_FIELDS) | set(REFUSED_UNLESS) | IGNORED_FIELDS
    assert written <= known, sorted(written - known)


def test_fields_that_would_change_the_encoder_are_refused_by_name(tmp_path):
    randomised(transformers.VJEPA2Model(tiny_config())).save_pretrained(tmp_path / "hf")
    original = (tmp_path / "hf" / "config.json").read_text()
    for changes, message in [
        ({"use_fancy_positions": True}, r"unknown V-JEPA 2 config fields \['use_fancy_positions'\]"),
        ({"use_modality_embeddings": True}, "use_modality_embeddings = True adds learnable modality"),
        ({"interpolate_rope": True}, "interpolate_rope = True rescales"),
        ({"hidden_act": "gelu_pytorch_tanh"}, "hidden_act 'gelu_pytorch_tanh' is not supported"),
    ]:
        edit_config(tmp_path / "hf", **changes)
        with pytest.raises(CheckpointError, match=message):
            load_encoder(tmp_path / "hf")
        (tmp_path / "hf" / "config.json").write_text(original)
    edit_config(tmp_path / "hf", use_modality_embeddings=False, hierarchical_layers=None)  # V-JEPA 2's values: read
    load_encoder(tmp_path / "hf")


def test_unplaced_and_missing_weights_are_named(tmp_path):
    randomised(transformers.VJEPA2Model(tiny_config())).save_pretrained(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    save_file(
        {**weights, "encoder.embeddings.video_mod_embed": torch.zeros(1, 1, 64)},
        tmp_path / "hf" / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(CheckpointError, match=r"no place for: \['encoder.embeddings.video_mod_embed'\]"):
        load_encoder(tmp_path / "hf")
    save_file(
        {k: v for k, v in weights.items() if k != "encoder.layer.1.attention.key.bias"},
        tmp_path / "hf" / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(CheckpointError, match=r"missing keys \['encoder.layer.1.attention.key.bias'\]"):
        load_encoder(tmp_path / "hf")
    with pytest.raises(CheckpointError, match="contradicts config.json"):
        save_file(weights, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
        load_encoder(tmp_path / "hf", arch={"num_heads": 8})


# ----------------------------------------------------------------------------- V-JEPA 2.1's interleaved RoPE


def textbook_rotate(x, pos):
    """Textbook RoPE on one axis: pair (x[2i], x[2i+1]) turned by pos · 10000^(-i/(D/2))."""
    half = x.shape[-1] // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32) / half)
    angle = pos.float().unsqueeze(-1) * omega  # [..., N, D/2]
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack(
        (even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()), dim=-1
    ).flatten(-2)


def textbook_rope(x, token_idx, grid):
    axis = 2 * ((x.shape[-1] // 3) // 2)
    _, height, width = grid
    coordinates = (token_idx // (height * width), (token_idx % (height * width)) // width, token_idx % width)
    parts = [textbook_rotate(x[..., i * axis : (i + 1) * axis], pos) for i, pos in enumerate(coordinates)]
    return torch.cat(parts + [x[..., 3 * axis :]], dim=-1)


def test_interleaved_rope_is_textbook_rope_per_axis():
    grid, head_dim = (2, 3, 4), 16
    token_idx = torch.stack([torch.arange(24), torch.randperm(24, generator=torch.Generator().manual_seed(0))])
    q = torch.randn(2, 3, 24, head_dim, generator=torch.Generator().manual_seed(1))
    ours = rotate(q, *rope_tables(token_idx, grid, head_dim, torch.float32, interleaved=True))
    assert torch.allclose(ours, textbook_rope(q, token_idx.unsqueeze(1), grid), atol=1e-6)
    tiled = rotate(q, *rope_tables(token_idx, grid, head_dim, torch.float32))
    assert not torch.allclose(tiled, ours, atol=1e-3)  # the two layouts really differ


def test_use_rope_interleave_is_honoured(tmp_path, monkeypatch):
    """A V-JEPA 2.1 folder (use_rope_interleave) against transformers' VJEPA2Model with its rotation
    swapped for textbook RoPE: the installed transformers has no such switch to compare with."""
    model = randomised(transformers.VJEPA2Model(tiny_config()), seed=2)
    model.save_pretrained(tmp_path / "hf")
    edit_config(tmp_path / "hf", use_rope_interleave=True)
    encoder, arch = load_encoder(tmp_path / "hf")
    assert arch["pos_embed"] == "rope_interleaved"
    x = videos(seed=2)
    assert max_diff(encoder, model, x) > 1e-3  # V-JEPA 2's tiled rotation is something else
    monkeypatch.setattr(modeling_vjepa2, "rotate_queries_or_keys", lambda qk, pos: textbook_rotate(qk, pos))
    assert max_diff(encoder, model, x) <= 1e-4
    tiled = build_encoder({**arch, "pos_embed": "rope"})
    tiled.load_state_dict(encoder.state_dict())
    assert max_diff(tiled, model, x) > 1e-3


def test_vjepa2_folder_teacher_end_to_end_cache_then_student(tmp_path, synthetic_set):
    """`salt cache-latents --teacher <VJEPA2Model folder>`, then a RoPE student trained from that cache."""
    config = tiny_config(patch_size=16)  # 4×2×2 tokens at 8×32², the suite's student geometry
    randomised(transformers.VJEPA2Model(config), seed=3).save_pretrained(tmp_path / "hf")
    manifest, metrics = cache_then_student(
        tmp_path,
        synthetic_set,
        tmp_path / "hf",
        encoder={"arch": "vit_tiny_rope", "overrides": {"depth": 1}},
        predictor={"width": 48, "depth": 1, "num_heads": 4, "pos_embed": "rope"},
    )
    assert (
        manifest.teacher["arch"]["pos_embed"] == "rope" and manifest.geometry["frames"] == FRAMES and manifest.dim == 64
    )
    assert len(metrics) == 2 and all(math.isfinite(r["loss"]) for r in metrics)
    assert (tmp_path / "run" / "student.pt").is_file()
