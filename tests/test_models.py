"""Encoder, size registry, positional tables and predictor (tiny models, CPU)."""

import json
import math

import numpy as np
import pytest
import torch

from salt.models import ARCH_KEYS, ARCHS, Predictor, build_encoder, count_params
from salt.models.vit import sincos_3d_table, sinusoid_1d_table

SMALL_CLIP = dict(img_size=32, num_frames=4)  # 2 x 2 x 2 = 8 tokens


def clip(batch=2, frames=4, size=32, seed=0):
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- independent tables


def vjepa_3d_sincos_reference(embed_dim, grid_size, grid_depth, uniform_power=False):
    """V-JEPA's get_3d_sincos_pos_embed, as published (square grids only)."""

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=float)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_d = np.arange(grid_depth, dtype=float)
    grid_h = np.arange(grid_size, dtype=float)
    grid_w = np.arange(grid_size, dtype=float)
    grid_h, grid_d, grid_w = np.meshgrid(grid_h, grid_d, grid_w)
    if not uniform_power:
        h_dim = w_dim = embed_dim // 4
        d_dim = embed_dim // 2
    else:
        h_dim = w_dim = d_dim = int(np.ceil(embed_dim / 6) * 2)
    table = np.concatenate([one_d(d_dim, grid_d), one_d(h_dim, grid_h), one_d(w_dim, grid_w)], axis=1)
    return table[:, :embed_dim]


def loop_3d_sincos(dim, grid):
    """Element-by-element formula for a (T, H, W) grid, no uniform power."""
    parts = (dim // 2, dim // 4, dim // 4)
    rows = []
    for t in range(grid[0]):
        for h in range(grid[1]):
            for w in range(grid[2]):
                row = []
                for pos, part in zip((t, h, w), parts):
                    half = part // 2
                    freqs = [1.0 / 10000 ** (i / half) for i in range(half)]
                    row += [math.sin(pos * f) for f in freqs] + [math.cos(pos * f) for f in freqs]
                rows.append(row)
    return np.array(rows)


def videomae_sinusoid_reference(n_position, d_hid):
    """VideoMAE's get_sinusoid_encoding_table, as published."""

    def angle_vec(position):
        return [position / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)]

    table = np.array([angle_vec(p) for p in range(n_position)])
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table


# ----------------------------------------------------------------------------- registry


def test_registry_sizes_and_keys():
    expected = {
        "vit_tiny": (128, 4, 4),
        "vit_small": (384, 12, 6),
        "vit_base": (768, 12, 12),
        "vit_large": (1024, 24, 16),
        "vit_huge": (1280, 32, 16),
        "vit_giant": (1408, 40, 16),
        "vit_gigantic": (1664, 48, 16),
    }
    # V-JEPA 2's RoPE backbones; its ViT-g has 22 heads of 64.
    rope = {
        "vit_tiny_rope": (128, 4, 4),
        "vit_small_rope": (384, 12, 6),
        "vit_base_rope": (768, 12, 12),
        "vit_large_rope": (1024, 24, 16),
        "vit_huge_rope": (1280, 32, 16),
        "vit_giant_rope": (1408, 40, 22),
    }
    assert set(ARCHS) == set(expected) | set(rope)
    for name, (dim, depth, heads) in {**expected, **rope}.items():
        arch = ARCHS[name]
        assert set(arch) == set(ARCH_KEYS)
        assert (arch["embed_dim"], arch["depth"], arch["num_heads"]) == (dim, depth, heads)
        assert (arch["img_size"], arch["num_frames"], arch["patch_size"], arch["tubelet_size"]) == (224, 16, 16, 2)
        assert arch["pos_embed"] == ("rope" if name in rope else "sincos3d")
        assert arch["uniform_power"] is False and arch["qkv_bias"] is True
        assert arch["norm_eps"] == 1e-6 and arch["final_norm"] is True
        assert json.loads(json.dumps(arch)) == arch  # plain data
    assert ARCHS["vit_giant"]["mlp_ratio"] == 48 / 11 and ARCHS["vit_gigantic"]["mlp_ratio"] == 64 / 13


def test_arch_round_trips_through_build_encoder():
    encoder = build_encoder("vit_tiny", qkv_bias="qv", pos_embed="sincos1d", **SMALL_CLIP)
    arch = json.loads(json.dumps(encoder.arch))
    assert build_encoder(arch).arch == encoder.arch == arch
    assert arch["qkv_bias"] == "qv" and arch["img_size"] == 32


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"embed_dim": 120, "num_heads": 7}, "divisible by num_heads"),
        ({"embed_dim": 100}, "divisible by 8"),
        ({"qkv_bias": "k"}, "qkv_bias"),
        ({"pos_embed": "learned"}, "pos_embed"),
        ({"colour": 1}, "unknown architecture keys"),
        ({"img_size": 30}, "does not divide"),
    ],
)
def test_bad_arch_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        build_encoder("vit_tiny", **bad)


@pytest.mark.parametrize("name", ["vit_tiny", "vit_small"])
@pytest.mark.parametrize("qkv_bias", [True, False, "qv"])
def test_count_params_matches_instantiated_model(name, qkv_bias):
    encoder = build_encoder(name, qkv_bias=qkv_bias, **SMALL_CLIP)
    assert count_params(encoder.arch) == sum(p.numel() for p in encoder.parameters())


def test_large_models_parameter_counts_from_arithmetic():
    assert count_params("vit_base") == pytest.approx(86.2e6, rel=0.01)
    assert count_params("vit_large") == pytest.approx(303e6, rel=0.01)
    assert count_params("vit_huge") == pytest.approx(632e6, rel=0.01)
    assert count_params("vit_giant") == pytest.approx(1.01e9, rel=0.01)
    assert count_params("vit_gigantic") == pytest.approx(1.84e9, rel=0.01)


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_output_shapes_for_every_size(name):
    arch = ARCHS[name]
    if name in ("vit_tiny", "vit_small"):
        encoder = build_encoder(name, **SMALL_CLIP)
        with torch.no_grad():
            out = encoder(clip())
        assert out.shape == (2, 8, arch["embed_dim"])
        assert torch.isfinite(out).all()
    # Nominal 16 x 224 x 224 clip: 8 x 14 x 14 tokens. Big sizes are only built on the meta
    # device (no memory, no compute) so their full-size shapes are still checked.
    with torch.device("meta"):
        encoder = build_encoder(name)
        out = encoder(torch.empty(1, 3, 16, 224, 224))
    assert encoder.grid(16, 224, 224) == (8, 14, 14)
    assert out.shape == (1, 1568, arch["embed_dim"])


# ----------------------------------------------------------------------------- forward


def test_positions_are_not_in_the_state_dict():
    keys = build_encoder("vit_tiny", **SMALL_CLIP).state_dict().keys()
    assert not any("pos" in k for k in keys)
    assert "norm.weight" in keys and "patch_embed.proj.weight" in keys


def test_keep_equals_gathering_the_input_tokens_with_depth_zero():
    encoder = build_encoder("vit_tiny", depth=0, **SMALL_CLIP)
    x = clip()
    keep = torch.tensor([[0, 3, 5], [7, 1, 2]])
    with torch.no_grad():
        full, kept = encoder(x), encoder(x, keep=keep)
    assert kept.shape == (2, 3, 128)
    torch.testing.assert_close(kept, torch.stack([full[0, keep[0]], full[1, keep[1]]]))


def test_keep_selects_tokens_after_positions_before_blocks():
    encoder = build_encoder("vit_tiny", **SMALL_CLIP).eval()
    x = clip()
    keep = torch.tensor([[6, 0, 2, 4], [1, 3, 5, 7]])
    with torch.no_grad():
        out = encoder(x, keep=keep)
        tokens = encoder.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = tokens + torch.from_numpy(sincos_3d_table(128, (2, 2, 2))).float()
        tokens = torch.stack([tokens[b, keep[b]] for b in range(2)])
        for block in encoder.blocks:
            tokens = block(tokens)
        manual = encoder.norm(tokens)
    torch.testing.assert_close(out, manual)


def test_keep_must_be_long_batch_by_k():
    encoder = build_encoder("vit_tiny", **SMALL_CLIP)
    with pytest.raises(ValueError, match="LongTensor"):
        encoder(clip(), keep=torch.zeros(2, 3, dtype=torch.int32))


def test_geometry_errors_name_the_numbers():
    encoder = build_encoder("vit_tiny", **SMALL_CLIP)
    with pytest.raises(ValueError, match=r"5 frames x 32x32 pixels.*tubelets of 2.*16x16"):
        encoder(torch.zeros(1, 3, 5, 32, 32))
    with pytest.raises(ValueError, match=r"4 frames x 32x40"):
        encoder.grid(4, 32, 40)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        encoder(torch.zeros(1, 1, 4, 32, 32))


def test_model_built_for_224_runs_smaller_clips():
    encoder = build_encoder("vit_tiny")  # nominal 16 x 224 x 224
    with torch.no_grad():
        out = encoder(clip(batch=1, frames=8, size=64))
        assert out.shape == (1, 4 * 4 * 4, 128)
        assert encoder(torch.randn(1, 3, 2, 32, 48)).shape == (1, 1 * 2 * 3, 128)  # non-square
    table = encoder.positions.get((4, 4, 4), torch.device("cpu"))
    np.testing.assert_allclose(table.numpy(), vjepa_3d_sincos_reference(128, 4, 4), atol=1e-6)


@pytest.mark.parametrize("dim, grid_size, grid_depth", [(128, 4, 4), (384, 14, 8), (64, 3, 5)])
@pytest.mark.parametrize("uniform_power", [False, True])
def test_3d_table_matches_vjepa_reference(dim, grid_size, grid_depth, uniform_power):
    ours = sincos_3d_table(dim, (grid_depth, grid_size, grid_size), uniform_power)
    np.testing.assert_allclose(ours, vjepa_3d_sincos_reference(dim, grid_size, grid_depth, uniform_power), atol=1e-12)


def test_3d_table_for_non_square_grid_matches_elementwise_formula():
    np.testing.assert_allclose(sincos_3d_table(32, (2, 3, 5)), loop_3d_sincos(32, (2, 3, 5)), atol=1e-12)


def test_1d_table_matches_videomae_reference():
    np.testing.assert_allclose(sinusoid_1d_table(50, 96), videomae_sinusoid_reference(50, 96), atol=1e-12)
    encoder = build_encoder("vit_tiny", pos_embed="sincos1d", **SMALL_CLIP)
    table = encoder.positions.get((2, 2, 2), torch.device("cpu"))
    np.testing.assert_allclose(table.numpy(), videomae_sinusoid_reference(8, 128), atol=1e-6)


def test_activation_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build_encoder("vit_tiny", **SMALL_CLIP)
    checkpointed = build_encoder("vit_tiny", checkpoint_activations=True, **SMALL_CLIP)
    checkpointed.load_state_dict(plain.state_dict())
    x = clip()
    outs, grads = [], []
    for model in (plain, checkpointed):
        out = model(x)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(model.blocks[1].mlp.fc1.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert "checkpoint_activations" not in checkpointed.arch


def test_bf16_autocast_forward_runs():
    encoder = build_encoder("vit_tiny", **SMALL_CLIP)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(clip())
    assert out.shape == (2, 8, 128)
    with torch.no_grad():
        assert encoder.to(torch.bfloat16)(clip().bfloat16()).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- predictor


def make_predictor(**kwargs):
    torch.manual_seed(0)
    return Predictor(embed_dim=128, out_dim=96, width=64, depth=2, num_heads=4, **kwargs).eval()


def test_predictor_returns_only_targets():
    predictor = make_predictor()
    grid = (2, 4, 4)
    context_idx = torch.tensor([[0, 5, 9, 30], [1, 2, 3, 4]])
    target_idx = torch.tensor([[1, 2, 31], [0, 17, 20]])
    context = torch.randn(2, 4, 128)
    with torch.no_grad():
        out = predictor(context, context_idx, target_idx, grid=grid)
        assert out.shape == (2, 3, 96)
        # Manual V-JEPA predictor path.
        pos = torch.from_numpy(sincos_3d_table(64, grid)).float()
        x = torch.cat([predictor.embed(context) + pos[context_idx], predictor.mask_tokens[0] + pos[target_idx]], dim=1)
        for block in predictor.blocks:
            x = block(x)
        manual = predictor.proj(predictor.norm(x[:, 4:]))
    torch.testing.assert_close(out, manual)


def test_predictor_mask_tokens_and_permutation():
    predictor = make_predictor(num_mask_tokens=2)
    assert len(predictor.mask_tokens) == 2
    assert 0.005 < predictor.mask_tokens[0].std() < 0.05  # trunc_normal(0.02), not zeros
    context_idx, target_idx = torch.tensor([[0, 3, 6]]), torch.tensor([[1, 7]])
    context = torch.randn(1, 3, 128)
    with torch.no_grad():
        first = predictor(context, context_idx, target_idx, grid=(1, 2, 4), mask_index=0)
        second = predictor(context, context_idx, target_idx, grid=(1, 2, 4), mask_index=1)
        order = torch.tensor([2, 0, 1])
        shuffled = predictor(context[:, order], context_idx[:, order], target_idx, grid=(1, 2, 4))
    assert not torch.allclose(first, second)
    torch.testing.assert_close(first, shuffled, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="mask_index 2"):
        predictor(context, context_idx, target_idx, grid=(1, 2, 4), mask_index=2)
    with pytest.raises(ValueError, match="context tokens have dim 64"):
        predictor(torch.randn(1, 3, 64), context_idx, target_idx, grid=(1, 2, 4))


def test_predictor_trains_with_checkpointing():
    predictor = make_predictor(checkpoint_activations=True).train()
    out = predictor(
        torch.randn(2, 3, 128), torch.tensor([[0, 1, 2]] * 2), torch.tensor([[3, 4]] * 2), grid=(2, 2, 2), mask_index=1
    )
    out.abs().mean().backward()
    assert predictor.mask_tokens[1].grad is not None and predictor.mask_tokens[0].grad is None
    assert predictor.config["width"] == 64 and json.loads(json.dumps(predictor.config))
