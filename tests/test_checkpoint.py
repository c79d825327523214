"""Checkpoint format, fingerprints, safe loading, and V-JEPA / VideoMAE imports.

Imported models are checked against a hand-written reference forward (plain tensor ops,
positional tables from the published formulas), not only for loading without error.
"""

import argparse
import json
import logging
import math
import os
import pickle

import numpy as np
import pytest
import torch

from salt.models import CheckpointError, build_encoder, fingerprint, load_encoder, save_encoder

# Small geometry for imports: 4 frames of 8x8, patch 4, tubelet 2 -> 2 x 2 x 2 = 8 tokens.
DIM, DEPTH, HEADS, HIDDEN, PATCH, TUBELET, FRAMES, IMG = 64, 3, 4, 128, 4, 2, 4, 8


def clip(batch=2, seed=0):
    return torch.randn(batch, 3, FRAMES, IMG, IMG, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- reference model


def sincos_3d(dim, grid, uniform_power=False):
    """3-D sin-cos table by the formula: depth, height, width parts, [sin, cos] each."""
    parts = [int(math.ceil(dim / 6) * 2)] * 3 if uniform_power else [dim // 2, dim // 4, dim // 4]
    rows = []
    for t in range(grid[0]):
        for h in range(grid[1]):
            for w in range(grid[2]):
                row = []
                for pos, part in zip((t, h, w), parts):
                    freqs = [1.0 / 10000 ** (i / (part // 2)) for i in range(part // 2)]
                    row += [math.sin(pos * f) for f in freqs] + [math.cos(pos * f) for f in freqs]
                rows.append(row[:dim])
    return torch.tensor(rows, dtype=torch.float32)


def sinusoid_1d(num, dim):
    """VideoMAE table by the formula: angle pos/10000^(2(j//2)/dim), sin even, cos odd columns."""
    return torch.tensor(
        [
            [
                math.sin(p / 10000 ** (2 * (j // 2) / dim))
                if j % 2 == 0
                else math.cos(p / 10000 ** (2 * (j // 2) / dim))
                for j in range(dim)
            ]
            for p in range(num)
        ],
        dtype=torch.float32,
    )


def layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def reference_forward(sd, x, pos, heads, qkv_bias):
    """Plain-op video ViT: tubelet patches as a matmul, manual attention, exact-GELU MLP."""
    weight = sd["patch_embed.proj.weight"]
    dim, chans, t, p, _ = weight.shape
    b, _, frames, height, width = x.shape
    patches = x.reshape(b, chans, frames // t, t, height // p, p, width // p, p)
    patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, chans * t * p * p)
    x = patches @ weight.reshape(dim, -1).T + sd["patch_embed.proj.bias"] + pos
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        pre = f"blocks.{i}."
        h = layer_norm(x, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"])
        qkv = h @ sd[pre + "attn.qkv.weight"].T
        if qkv_bias == "qv":
            qkv = qkv + torch.cat([sd[pre + "attn.q_bias"], torch.zeros(dim), sd[pre + "attn.v_bias"]])
        elif qkv_bias:
            qkv = qkv + sd[pre + "attn.qkv.bias"]
        q, k, v = qkv.reshape(b, -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // heads)
        scores = torch.exp(scores - scores.amax(-1, keepdim=True))
        attn = scores / scores.sum(-1, keepdim=True)
        out = (attn @ v).transpose(1, 2).reshape(b, -1, dim)
        x = x + out @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
        h = layer_norm(x, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
        h = h @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
    return layer_norm(x, sd["norm.weight"], sd["norm.bias"])


def random_encoder_weights(seed=0, qkv_bias=True, depth=DEPTH, hidden=HIDDEN, dim=DIM):
    """A state dict in timm/V-JEPA naming with random (non-trivial) values."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.05, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    sd = {"patch_embed.proj.weight": rand(dim, 3, TUBELET, PATCH, PATCH, scale=0.1), "patch_embed.proj.bias": rand(dim)}
    for i in range(depth):
        pre = f"blocks.{i}."
        sd.update(
            {
                pre + "norm1.weight": rand(dim, scale=0.1, offset=1),
                pre + "norm1.bias": rand(dim),
                pre + "attn.qkv.weight": rand(3 * dim, dim, scale=0.15),
                pre + "attn.proj.weight": rand(dim, dim),
                pre + "attn.proj.bias": rand(dim),
                pre + "norm2.weight": rand(dim, scale=0.1, offset=1),
                pre + "norm2.bias": rand(dim),
                pre + "mlp.fc1.weight": rand(hidden, dim, scale=0.1),
                pre + "mlp.fc1.bias": rand(hidden),
                pre + "mlp.fc2.weight": rand(dim, hidden),
                pre + "mlp.fc2.bias": rand(dim),
            }
        )
        if qkv_bias == "qv":
            sd[pre + "attn.q_bias"], sd[pre + "attn.v_bias"] = rand(dim), rand(dim)
        elif qkv_bias:
            sd[pre + "attn.qkv.bias"] = rand(3 * dim)
    sd["norm.weight"], sd["norm.bias"] = rand(dim, scale=0.1, offset=1), rand(dim)
    return sd


GRID = (FRAMES // TUBELET, IMG // PATCH, IMG // PATCH)


def vjepa_checkpoint(sd, uniform_power=False):
    """The layout V-JEPA's training loop saves (DDP + MultiMaskWrapper prefixes)."""
    wrapped = {f"module.backbone.{k}": v for k, v in sd.items()}
    wrapped["module.backbone.pos_embed"] = sincos_3d(DIM, GRID, uniform_power).unsqueeze(0)
    online = {k: torch.zeros_like(v) for k, v in wrapped.items()}  # must not be the one used
    return {
        "encoder": online,
        "predictor": {"module.backbone.mask_tokens.0": torch.zeros(1, 1, 8)},
        "target_encoder": wrapped,
        "opt": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "scaler": None,
        "epoch": 3,
        "loss": 0.25,
        "batch_size": 8,
        "world_size": 1,
        "lr": 1e-3,
    }


def videomae_args():
    return argparse.Namespace(model="pretrain_videomae_base_patch16_224", mask_ratio=0.9, num_frames=16)


# ----------------------------------------------------------------------------- our format


def tiny_encoder(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_encoder("vit_tiny", img_size=32, num_frames=4, **overrides).eval()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_gives_same_outputs_and_fingerprint(tmp_path, suffix):
    encoder = tiny_encoder(qkv_bias="qv")
    path = tmp_path / "nested" / f"teacher{suffix}"
    digest = save_encoder(path, encoder, "teacher", meta={"step": 7, "note": "x"})
    assert digest == fingerprint(encoder.state_dict())
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    loaded, arch = load_encoder(path)
    assert arch == encoder.arch
    assert fingerprint(loaded.state_dict()) == digest
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), encoder(x), rtol=0, atol=0)


def test_pt_file_is_plain_data(tmp_path):
    encoder = tiny_encoder()
    save_encoder(tmp_path / "s.pt", encoder, "student", meta={"tokens": [1, 2]})
    raw = torch.load(tmp_path / "s.pt", map_location="cpu", weights_only=True)
    assert set(raw) == {"format", "format_version", "kind", "arch", "state_dict", "fingerprint", "meta"}
    assert (raw["format"], raw["format_version"], raw["kind"]) == ("salt-encoder", 1, "student")
    assert raw["arch"] == encoder.arch and raw["meta"] == {"tokens": [1, 2]}
    assert raw["fingerprint"] == fingerprint(raw["state_dict"])


def test_safetensors_metadata(tmp_path):
    from safetensors import safe_open

    encoder = tiny_encoder()
    save_encoder(tmp_path / "t.safetensors", encoder, "teacher", meta={"a": 1})
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
        assert set(handle.keys()) == set(encoder.state_dict())
    assert meta["format"] == "salt-encoder" and meta["kind"] == "teacher"
    assert json.loads(meta["arch"]) == encoder.arch and json.loads(meta["meta"]) == {"a": 1}
    assert meta["fingerprint"] == fingerprint(encoder.state_dict())


def test_bf16_weights_stay_bf16(tmp_path):
    encoder = tiny_encoder().to(torch.bfloat16)
    digest = save_encoder(tmp_path / "b.pt", encoder, "teacher")
    loaded, _ = load_encoder(tmp_path / "b.pt")
    assert loaded.norm.weight.dtype == torch.bfloat16
    assert fingerprint(loaded.state_dict()) == digest != fingerprint(tiny_encoder().state_dict())


def test_fingerprint_stability():
    encoder = tiny_encoder()
    state = encoder.state_dict()
    digest = fingerprint(state)
    assert fingerprint({k: v.clone() for k, v in state.items()}) == digest
    assert fingerprint(dict(reversed(list(state.items())))) == digest  # order-independent
    assert fingerprint(tiny_encoder().state_dict()) == digest  # same seed, same weights
    transposed = {k: (v.T.contiguous().T if v.dim() == 2 else v) for k, v in state.items()}
    assert not transposed["blocks.0.mlp.fc1.weight"].is_contiguous()
    assert fingerprint(transposed) == digest  # memory layout does not matter
    changed = {k: v.clone() for k, v in state.items()}
    changed["blocks.2.mlp.fc2.bias"][5] += 1e-3
    assert fingerprint(changed) != digest
    renamed = dict(state)
    renamed["extra"] = renamed.pop("norm.bias")
    assert fingerprint(renamed) != digest
    assert fingerprint({k: v.double() for k, v in state.items()}) != digest  # dtype is part of it


def test_tampered_weights_are_reported_corrupt(tmp_path):
    save_encoder(tmp_path / "t.pt", tiny_encoder(), "teacher")
    raw = torch.load(tmp_path / "t.pt", weights_only=True)
    raw["state_dict"]["norm.bias"][0] += 1
    torch.save(raw, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_encoder(tmp_path / "t.pt")


def test_given_arch_must_agree_with_stored(tmp_path):
    save_encoder(tmp_path / "t.pt", tiny_encoder(), "teacher")
    assert load_encoder(tmp_path / "t.pt", arch={"embed_dim": 128})[1]["embed_dim"] == 128
    with pytest.raises(CheckpointError, match=r"arch\['depth'\] = 6.*stored value 4"):
        load_encoder(tmp_path / "t.pt", arch={"depth": 6})


def test_meta_must_be_plain(tmp_path):
    with pytest.raises(ValueError, match="meta"):
        save_encoder(tmp_path / "t.pt", tiny_encoder(), "teacher", meta={"x": object()})
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- imports


@pytest.mark.parametrize("uniform_power", [False, True])
def test_vjepa_import_matches_reference_forward(tmp_path, uniform_power, caplog):
    sd = random_encoder_weights()
    torch.save(vjepa_checkpoint(sd, uniform_power), tmp_path / "vjepa.pth.tar")
    with caplog.at_level(logging.WARNING, logger="salt.models"):
        encoder, arch = load_encoder(tmp_path / "vjepa.pth.tar", arch={"num_frames": FRAMES})
    assert "head count" in caplog.text  # (64, 3) is no registry size: 64 // 64 = 1 head assumed
    assert arch["num_heads"] == 1
    assert (arch["embed_dim"], arch["depth"], arch["patch_size"], arch["tubelet_size"]) == (DIM, DEPTH, PATCH, TUBELET)
    assert (arch["img_size"], arch["mlp_ratio"], arch["qkv_bias"]) == (IMG, 2.0, True)
    assert arch["pos_embed"] == "sincos3d" and arch["uniform_power"] is uniform_power
    x = clip()
    with torch.no_grad():
        expected = reference_forward(sd, x, sincos_3d(DIM, GRID, uniform_power), 1, True)
        torch.testing.assert_close(encoder(x), expected, atol=1e-4, rtol=1e-4)


def test_vjepa_import_with_given_heads_and_no_geometry(tmp_path):
    # 16 frames of 8x8 by default: grid (8, 2, 2) inferred from the table's 32 tokens.
    sd = random_encoder_weights(seed=1)
    ckpt = vjepa_checkpoint(sd)
    ckpt["target_encoder"]["module.backbone.pos_embed"] = sincos_3d(DIM, (8, 2, 2)).unsqueeze(0)
    torch.save(ckpt, tmp_path / "v.pt")
    encoder, arch = load_encoder(tmp_path / "v.pt", arch={"num_heads": HEADS})
    assert (arch["num_frames"], arch["img_size"], arch["num_heads"]) == (16, IMG, HEADS)
    x = clip()
    with torch.no_grad():
        expected = reference_forward(sd, x, sincos_3d(DIM, GRID), HEADS, True)
        torch.testing.assert_close(encoder(x), expected, atol=1e-4, rtol=1e-4)


def test_vjepa_geometry_is_found_from_the_table_alone(tmp_path):
    torch.save(vjepa_checkpoint(random_encoder_weights()), tmp_path / "v.pt")
    _, arch = load_encoder(tmp_path / "v.pt", arch={"num_heads": HEADS})
    assert (arch["num_frames"], arch["img_size"]) == (FRAMES, IMG)


def test_videomae_pretrain_import_matches_reference_forward(tmp_path, caplog):
    sd = random_encoder_weights(seed=2, qkv_bias="qv")
    model = {f"encoder.{k}": v for k, v in sd.items()}
    model.update(
        {
            "decoder.blocks.0.norm1.weight": torch.ones(32),
            "decoder.norm.weight": torch.ones(32),
            "decoder.head.weight": torch.zeros(96, 32),
            "encoder_to_decoder.weight": torch.zeros(32, DIM),
            "mask_token": torch.zeros(1, 1, 32),
        }
    )
    torch.save(
        {"model": model, "optimizer": {"state": {}}, "epoch": 5, "args": videomae_args()}, tmp_path / "videomae.pth"
    )
    with caplog.at_level(logging.INFO, logger="salt.models"):
        encoder, arch = load_encoder(
            tmp_path / "videomae.pth", arch={"num_heads": HEADS, "img_size": IMG, "num_frames": FRAMES}
        )
    assert "decoder" in caplog.text
    assert arch["qkv_bias"] == "qv" and arch["pos_embed"] == "sincos1d"
    assert "blocks.0.attn.q_bias" in encoder.state_dict()
    x = clip()
    with torch.no_grad():
        expected = reference_forward(sd, x, sinusoid_1d(8, DIM), HEADS, "qv")
        torch.testing.assert_close(encoder(x), expected, atol=1e-4, rtol=1e-4)


def test_videomae_finetuned_import_maps_fc_norm(tmp_path, caplog):
    sd = random_encoder_weights(seed=3, qkv_bias="qv")
    model = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    model["fc_norm.weight"], model["fc_norm.bias"] = sd["norm.weight"], sd["norm.bias"]
    model["head.weight"], model["head.bias"] = torch.zeros(400, DIM), torch.zeros(400)
    torch.save({"module": model, "args": videomae_args()}, tmp_path / "ft.pth")
    with caplog.at_level(logging.INFO, logger="salt.models"):
        encoder, _ = load_encoder(tmp_path / "ft.pth", arch={"num_heads": HEADS})
    assert "fc_norm" in caplog.text and "head" in caplog.text
    x = clip()
    with torch.no_grad():
        expected = reference_forward(sd, x, sinusoid_1d(8, DIM), HEADS, "qv")
        torch.testing.assert_close(encoder(x), expected, atol=1e-4, rtol=1e-4)


def test_bare_safetensors_state_dict_imports(tmp_path):
    from safetensors.torch import save_file

    sd = random_encoder_weights(seed=4, qkv_bias=False)
    save_file(sd, tmp_path / "bare.safetensors")
    encoder, arch = load_encoder(tmp_path / "bare.safetensors", arch={"num_heads": HEADS, "img_size": IMG})
    assert arch["qkv_bias"] is False and arch["pos_embed"] == "sincos3d"
    x = clip()
    with torch.no_grad():
        expected = reference_forward(sd, x, sincos_3d(DIM, GRID), HEADS, False)
        torch.testing.assert_close(encoder(x), expected, atol=1e-4, rtol=1e-4)


def test_bare_videomae_state_dict_gets_1d_positions(tmp_path):
    from safetensors.torch import save_file

    sd = random_encoder_weights(seed=5, qkv_bias="qv")
    save_file(sd, tmp_path / "mae.safetensors")
    encoder, arch = load_encoder(tmp_path / "mae.safetensors", arch={"num_heads": HEADS})
    assert arch["pos_embed"] == "sincos1d"
    x = clip()
    with torch.no_grad():
        expected = reference_forward(sd, x, sinusoid_1d(8, DIM), HEADS, "qv")
        torch.testing.assert_close(encoder(x), expected, atol=1e-4, rtol=1e-4)


def test_missing_block_is_listed(tmp_path):
    ckpt = vjepa_checkpoint(random_encoder_weights())
    ckpt["target_encoder"] = {k: v for k, v in ckpt["target_encoder"].items() if ".blocks.1." not in k}
    torch.save(ckpt, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="missing keys") as err:
        load_encoder(tmp_path / "v.pt", arch={"num_heads": HEADS})
    assert "blocks.1.attn.qkv.weight" in str(err.value) and "blocks.1.mlp.fc2.bias" in str(err.value)


def test_unexpected_key_is_listed(tmp_path):
    ckpt = vjepa_checkpoint(random_encoder_weights())
    ckpt["target_encoder"]["module.backbone.blocks.0.attn.rope_scale"] = torch.ones(4)
    torch.save(ckpt, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \[blocks\.0\.attn\.rope_scale\]"):
        load_encoder(tmp_path / "v.pt", arch={"num_heads": HEADS})


@pytest.mark.parametrize(
    "wrong, message",
    [
        ({"embed_dim": 128}, r"arch\['embed_dim'\] = 128 contradicts.*give 64"),
        ({"depth": 4}, r"arch\['depth'\] = 4 .*give 3"),
        ({"qkv_bias": "qv"}, r"arch\['qkv_bias'\] = 'qv' .*give True"),
        ({"mlp_ratio": 4.0}, r"arch\['mlp_ratio'\]"),
        ({"uniform_power": True}, "not the fixed sin-cos table"),
        ({"img_size": 16}, "does not fit"),
    ],
)
def test_wrong_arch_is_refused(tmp_path, wrong, message):
    torch.save(vjepa_checkpoint(random_encoder_weights()), tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match=message):
        load_encoder(tmp_path / "v.pt", arch={"num_heads": HEADS, **wrong})


def test_learned_position_table_is_refused(tmp_path):
    ckpt = vjepa_checkpoint(random_encoder_weights())
    ckpt["target_encoder"]["module.backbone.pos_embed"] = torch.randn(1, 8, DIM)
    torch.save(ckpt, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match="not the fixed sin-cos table"):
        load_encoder(tmp_path / "v.pt", arch={"num_heads": HEADS, "num_frames": FRAMES})


# ----------------------------------------------------------------------------- unsafe / broken files


class SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OpenFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("payload", [SystemCall, OpenFile])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"target_encoder": {"x": payload(marker)}, "epoch": 1}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused") as err:
        load_encoder(path)
    assert str(path) in str(err.value) and "nothing was executed" in str(err.value)
    assert not marker.exists()


def test_plain_pickle_is_not_a_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(SystemCall(marker)))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_encoder(tmp_path / "evil.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file_is_refused(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    save_encoder(path, tiny_encoder(), "teacher")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_encoder(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"hello world\n", bytes(range(256)) * 4])
def test_non_checkpoint_files_are_refused(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_encoder(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere\.pt: no such checkpoint file"):
        load_encoder(tmp_path / "nowhere.pt")


def test_checkpoint_without_encoder_is_refused(tmp_path):
    torch.save({"epoch": 3, "opt": {}}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="no encoder weights found"):
        load_encoder(tmp_path / "x.pt")
    torch.save({"model": {"conv.weight": torch.zeros(2, 2, 3, 3)}}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="not a video ViT encoder"):
        load_encoder(tmp_path / "y.pt")


def test_safe_globals_allow_only_namespace(tmp_path):
    # The one allowed class loads; the namespace's contents are never used as code.
    torch.save({"model": {"a": torch.zeros(1)}, "args": videomae_args()}, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="not a video ViT encoder"):
        load_encoder(tmp_path / "m.pt")
    torch.save({"model": {}, "args": np.float64(1.0)}, tmp_path / "n.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_encoder(tmp_path / "n.pt")
