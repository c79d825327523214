"""V-JEPA 2's backbone: 3-D RoPE encoder and predictor, and V-JEPA 2 checkpoints as teachers.

The reference below is transcribed from V-JEPA 2's formulas (facebookresearch/vjepa2,
`src/models/utils/modules.py`), in plain loops and tensor ops, not by calling project code:
per head, dims [t | h | w | rest], 2·((head_dim // 3) // 2) per axis, omega = 1/10000^(i/(D/2)),
sin/cos tiled over the axis' D dims, rotation of adjacent pairs (x[2i], x[2i+1]).
"""

import math

import pytest
import torch
import yaml

from salt.models import CheckpointError, Predictor, build_encoder, count_params, load_encoder, resolve_arch
from tests.test_checkpoint import layer_norm, random_encoder_weights

# 4 frames of 8×8, patch 4, tubelet 2 -> a 2×2×2 grid; dim 64, 4 heads of 16 (5+... : 2·(5//2)=4 per axis).
DIM, HEADS, FRAMES, IMG, PATCH, TUBELET = 64, 4, 4, 8, 4, 2
GRID = (FRAMES // TUBELET, IMG // PATCH, IMG // PATCH)


def reference_rotate(x, positions):
    """x [B, H, N, D] rotated by integer positions [B, N] (one axis), V-JEPA 2's way."""
    dims = x.shape[-1]
    half = dims // 2
    omega = [1.0 / 10000 ** (i / half) for i in range(half)]
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for n in range(x.shape[2]):
            pos = float(positions[b, n])
            freq = [pos * w for w in omega] * 2  # `.repeat(..., 2)`: the list tiled, not interleaved
            for i in range(0, dims, 2):
                a, c = x[b, :, n, i], x[b, :, n, i + 1]
                out[b, :, n, i] = a * math.cos(freq[i]) - c * math.sin(freq[i])
                out[b, :, n, i + 1] = c * math.cos(freq[i + 1]) + a * math.sin(freq[i + 1])
    return out


def reference_rope(q, token_idx, grid):
    head_dim = q.shape[-1]
    axis = 2 * ((head_dim // 3) // 2)
    _, height, width = grid
    frame = token_idx // (height * width)
    row = (token_idx % (height * width)) // width
    column = token_idx % width
    parts = [reference_rotate(q[..., i * axis : (i + 1) * axis], pos) for i, pos in enumerate((frame, row, column))]
    return torch.cat(parts + [q[..., 3 * axis :]], dim=-1)


def reference_blocks(sd, x, token_idx, grid, heads, prefix="blocks", eps=1e-6):
    dim = x.shape[-1]
    b = x.shape[0]
    depth = len({k.split(".")[1] for k in sd if k.startswith(prefix + ".")})
    for i in range(depth):
        pre = f"{prefix}.{i}."
        h = layer_norm(x, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"], eps)
        qkv = h @ sd[pre + "attn.qkv.weight"].T
        if pre + "attn.qkv.bias" in sd:
            qkv = qkv + sd[pre + "attn.qkv.bias"]
        q, k, v = qkv.reshape(b, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        q, k = reference_rope(q, token_idx, grid), reference_rope(k, token_idx, grid)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
        attn = torch.softmax(scores, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        x = x + out @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
        h = layer_norm(x, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"], eps)
        h = h @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
    return x


def reference_encoder(sd, clip, keep=None, heads=HEADS):
    """V-JEPA 2 VisionTransformer(use_rope=True): patches, no absolute positions, masks by gather."""
    weight = sd["patch_embed.proj.weight"]
    dim, chans, t, p, _ = weight.shape
    b, _, frames, height, width = clip.shape
    patches = clip.reshape(b, chans, frames // t, t, height // p, p, width // p, p)
    patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, chans * t * p * p)
    x = patches @ weight.reshape(dim, -1).T + sd["patch_embed.proj.bias"]
    grid = (frames // t, height // p, width // p)
    token_idx = torch.arange(x.shape[1]).expand(b, -1) if keep is None else keep
    if keep is not None:
        x = torch.stack([x[i, keep[i]] for i in range(b)])
    x = reference_blocks(sd, x, token_idx, grid, heads)
    return layer_norm(x, sd["norm.weight"], sd["norm.bias"])


def clip(batch=2, seed=0):
    return torch.randn(batch, 3, FRAMES, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def rope_encoder(sd):
    encoder = build_encoder(
        {
            **resolve_arch("vit_tiny_rope"),
            "embed_dim": DIM,
            "depth": 3,
            "num_heads": HEADS,
            "img_size": IMG,
            "num_frames": FRAMES,
            "patch_size": PATCH,
            "tubelet_size": TUBELET,
            "mlp_ratio": 2.0,
        }
    )
    encoder.load_state_dict(sd, strict=True)
    return encoder.eval()


def test_rope_encoder_matches_the_transcribed_formulas_on_full_clips_and_kept_subsets():
    sd = random_encoder_weights(seed=3)
    encoder = rope_encoder(sd)
    x = clip()
    keep = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(s))[:5] for s in range(2)])
    with torch.no_grad():
        assert torch.allclose(encoder(x), reference_encoder(sd, x), atol=1e-5)
        assert torch.allclose(encoder(x, keep=keep), reference_encoder(sd, x, keep), atol=1e-5)
        # The kept tokens carry their own positions: the same tokens in another order permute the output.
        order = torch.tensor([4, 2, 0, 1, 3])
        assert torch.allclose(encoder(x, keep=keep[:, order]), encoder(x, keep=keep)[:, order], atol=1e-5)
    # Activation checkpointing computes the same thing.
    encoder.checkpoint_activations = True
    assert torch.allclose(encoder(x), reference_encoder(sd, x), atol=1e-5)


def test_rope_predictor_matches_the_transcribed_formulas():
    torch.manual_seed(0)
    predictor = Predictor(DIM, 24, width=48, depth=2, num_heads=4, num_mask_tokens=2, pos_embed="rope").eval()
    with torch.no_grad():
        for p in predictor.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sd = {k: v.detach() for k, v in predictor.state_dict().items()}
    context = torch.randn(2, 5, DIM)
    context_idx = torch.tensor([[0, 2, 3, 5, 7], [1, 2, 4, 6, 7]])
    target_idx = torch.tensor([[1, 4, 6], [0, 3, 5]])
    with torch.no_grad():
        ours = predictor(context, context_idx, target_idx, GRID, mask_index=1)
        x = context @ sd["embed.weight"].T + sd["embed.bias"]
        x = torch.cat([x, sd["mask_tokens.1"].expand(2, 3, -1)], dim=1)  # no absolute positions with RoPE
        x = reference_blocks(sd, x, torch.cat([context_idx, target_idx], 1), GRID, 4)
        expected = layer_norm(x[:, 5:], sd["norm.weight"], sd["norm.bias"]) @ sd["proj.weight"].T + sd["proj.bias"]
    assert torch.allclose(ours, expected, atol=1e-5)


def test_rope_registry_sizes():
    giant = resolve_arch("vit_giant_rope")
    assert (giant["embed_dim"], giant["depth"], giant["num_heads"], giant["pos_embed"]) == (1408, 40, 22, "rope")
    assert round(giant["mlp_ratio"] * 1408) == 6144
    with torch.device("meta"):
        large = build_encoder("vit_large_rope")
    assert sum(p.numel() for p in large.parameters()) == count_params("vit_large_rope")
    assert not any("pos" in name for name in large.state_dict())
    with pytest.raises(ValueError, match="q/v-only"):
        resolve_arch("vit_tiny_rope", qkv_bias="qv")


# ----------------------------------------------------------------------------- V-JEPA 2 checkpoints


def vjepa2_checkpoint(sd):
    """The layout V-JEPA 2's trainer saves: DDP + wrapper prefixes, no pos_embed anywhere."""
    wrap = lambda weights: {f"module.backbone.{k}": v for k, v in weights.items()}  # noqa: E731
    return {
        "encoder": wrap(random_encoder_weights(seed=9)),
        "target_encoder": wrap(sd),
        "predictor": {"module.backbone.predictor_embed.weight": torch.zeros(8, DIM)},
        "opt": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "scaler": None,
        "epoch": 3,
    }


def test_vjepa2_checkpoint_imports_as_a_rope_encoder(tmp_path, caplog):
    sd = random_encoder_weights(seed=4)
    torch.save(vjepa2_checkpoint(sd), tmp_path / "vjepa2.pt")
    with caplog.at_level("WARNING", logger="salt.models"):
        encoder, arch = load_encoder(tmp_path / "vjepa2.pt", arch={"num_heads": HEADS})
    assert arch["pos_embed"] == "rope" and "clip geometry" in caplog.text
    x = clip()
    with torch.no_grad():
        assert torch.allclose(encoder.eval()(x), reference_encoder(sd, x), atol=1e-5)  # target_encoder by default
        online, _ = load_encoder(tmp_path / "vjepa2.pt", arch={"num_heads": HEADS}, checkpoint_key="encoder")
        assert torch.allclose(online.eval()(x), reference_encoder(random_encoder_weights(seed=9), x), atol=1e-5)
    with pytest.raises(
        CheckpointError,
        match=r"no state dict under checkpoint key 'ema'.*'encoder', 'opt', 'predictor', 'target_encoder'",
    ):
        load_encoder(tmp_path / "vjepa2.pt", arch={"num_heads": HEADS}, checkpoint_key="ema")


def test_vjepa2_checkpoint_with_a_missing_block_names_the_keys(tmp_path):
    sd = {k: v for k, v in random_encoder_weights().items() if not k.startswith("blocks.1.")}
    torch.save(vjepa2_checkpoint(sd), tmp_path / "v.pt")
    with pytest.raises(
        CheckpointError, match=r"missing keys \[blocks\.1\.attn\.proj\.bias, blocks\.1\.attn\.proj\.weight"
    ):
        load_encoder(tmp_path / "v.pt", arch={"num_heads": HEADS})


def test_vjepa2_giant_gets_22_heads_from_the_registry(tmp_path, caplog):
    with torch.device("meta"):
        sd = build_encoder("vit_giant_rope").state_dict()
    # Shapes are all the loader reads to choose the size; real tensors are needed for torch.save.
    sd = {
        k: torch.zeros(v.shape) if v.dim() < 2 else torch.zeros(v.shape[:2] + (1,) * (v.dim() - 2)).expand(v.shape)
        for k, v in sd.items()
    }
    from salt.models.converters import import_state_dict

    with caplog.at_level("WARNING", logger="salt.models"):
        _, arch = import_state_dict(
            {"target_encoder": {f"module.backbone.{k}": v for k, v in sd.items()}}, tmp_path / "g.pt", None
        )
    assert (arch["num_heads"], arch["pos_embed"]) == (22, "rope") and "vit_giant_rope" in caplog.text


def test_vjepa2_teacher_end_to_end_cache_then_student(tmp_path, rope_student_run):
    """A V-JEPA 2 checkpoint's cache (patch 16), the demo's student config from it with no geometry
    given (clip, patch and tubelet are the manifest's: the fixture), then the same teacher online
    (loaded with the arch and key the cache recorded)."""
    from salt.latents import open_cache
    from salt.training.student import run_student
    from tests.test_student import records, student_config

    manifest = open_cache(rope_student_run["cache"]).manifest
    assert manifest.teacher["arch"]["pos_embed"] == "rope" and manifest.teacher["checkpoint_key"] == "target_encoder"
    assert manifest.dim == 64 and manifest.geometry["patch"] == 16
    from_cache = records(rope_student_run["run"])
    resolved = yaml.safe_load((rope_student_run["run"] / "config.yaml").read_text())
    assert resolved["geometry"] == {"frames": 8, "frame_step": 4, "size": 32}
    assert resolved["encoder"] == {"arch": "vit_tiny_rope", "overrides": {"depth": 1}, "checkpoint_activations": False}

    sections = dict(
        cache={"path": str(rope_student_run["cache"])},
        teacher=str(rope_student_run["teacher"]),
        encoder={"arch": "vit_tiny_rope", "overrides": {"depth": 1}},
        predictor={"width": 48, "depth": 1, "num_heads": 4, "pos_embed": "rope"},
        optim={"steps": 2, "warmup_steps": 1},
        run={"out_dir": str(tmp_path / "online"), "checkpoint_every": 2},
    )
    run_student(str(student_config(tmp_path / "b", tmp_path, targets="teacher", **sections)), [])
    online = records(tmp_path / "online")
    assert len(from_cache) == len(online) == 2 and all(math.isfinite(r["loss"]) for r in from_cache + online)
