"""The encoder sizes and the architecture dict, without torch: `salt models`, config checks and
token grids answer in a fraction of a second (salt/models/vit.py builds the model from them).

The architecture is a plain, JSON-able dict (``ARCH_KEYS``); ``ARCHS`` names the standard sizes,
``complete_arch`` fills defaults and checks values, ``resolve_arch`` applies overrides to a name.
"""

from __future__ import annotations

from typing import Any, Mapping

ARCH_KEYS = (
    "img_size",
    "patch_size",
    "num_frames",
    "tubelet_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "uniform_power",
    "pos_embed",
    "qkv_bias",
    "norm_eps",
    "final_norm",
)
# rope: V-JEPA 2's rotary positions (tiled sin/cos); rope_interleaved: V-JEPA 2.1's corrected layout.
POS_EMBED_KINDS = ("sincos3d", "sincos1d", "rope", "rope_interleaved")
ROPE_KINDS = ("rope", "rope_interleaved")
QKV_BIAS_KINDS = (True, False, "qv")

# Clip geometry defaults (V-JEPA: 16 frames of 224x224, patch 16, tubelet 2 -> 8x14x14 tokens).
DEFAULT_ARCH: dict[str, Any] = {
    "img_size": 224,
    "patch_size": 16,
    "num_frames": 16,
    "tubelet_size": 2,
    "in_chans": 3,
    "uniform_power": False,
    "pos_embed": "sincos3d",
    "qkv_bias": True,
    "mlp_ratio": 4.0,
    # final_norm off: the last block's output as is (HF VideoMAEModel with use_mean_pooling).
    "norm_eps": 1e-6,
    "final_norm": True,
}


def _size(
    embed_dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, pos_embed: str = "sincos3d"
) -> dict[str, Any]:
    return {
        **DEFAULT_ARCH,
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
        "pos_embed": pos_embed,
    }


# vit_tiny is this project's test/demo size: much smaller than timm's ViT-Ti (192/12/3).
ARCHS: dict[str, dict[str, Any]] = {
    "vit_tiny": _size(128, 4, 4),
    "vit_small": _size(384, 12, 6),
    "vit_base": _size(768, 12, 12),
    "vit_large": _size(1024, 24, 16),
    "vit_huge": _size(1280, 32, 16),
    "vit_giant": _size(1408, 40, 16, 48 / 11),
    "vit_gigantic": _size(1664, 48, 16, 64 / 13),
    # The paper's / V-JEPA 2's backbones: 3-D RoPE, no absolute positions. V-JEPA 2's ViT-g
    # (its vit_giant_xformers) has 22 heads of 64, unlike V-JEPA 1's 16-head ViT-g above.
    "vit_tiny_rope": _size(128, 4, 4, pos_embed="rope"),
    "vit_small_rope": _size(384, 12, 6, pos_embed="rope"),
    "vit_base_rope": _size(768, 12, 12, pos_embed="rope"),
    "vit_large_rope": _size(1024, 24, 16, pos_embed="rope"),
    "vit_huge_rope": _size(1280, 32, 16, pos_embed="rope"),
    "vit_giant_rope": _size(1408, 40, 22, 48 / 11, pos_embed="rope"),
}


def axis_dims(head_dim: int) -> int:
    """Dimensions each of the three axes of 3-D RoPE rotates (salt/models/rope.py)."""
    return 2 * ((head_dim // 3) // 2)


def complete_arch(arch: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults, check keys and values; returns a new plain dict in ARCH_KEYS order."""
    unknown = sorted(set(arch) - set(ARCH_KEYS))
    if unknown:
        raise ValueError(f"unknown architecture keys {unknown}; allowed: {list(ARCH_KEYS)}")
    merged = {**DEFAULT_ARCH, **arch}
    missing = [k for k in ARCH_KEYS if k not in merged]
    if missing:
        raise ValueError(f"architecture is missing {missing}")
    a = {k: merged[k] for k in ARCH_KEYS}
    for key in ("img_size", "patch_size", "num_frames", "tubelet_size", "in_chans", "embed_dim", "depth", "num_heads"):
        if isinstance(a[key], bool) or not isinstance(a[key], int) or a[key] < (0 if key == "depth" else 1):
            raise ValueError(f"architecture {key} must be a positive integer, got {a[key]!r}")
    a["mlp_ratio"] = float(a["mlp_ratio"])
    a["uniform_power"] = bool(a["uniform_power"])
    if isinstance(a["norm_eps"], bool) or not isinstance(a["norm_eps"], (int, float)) or not a["norm_eps"] > 0:
        raise ValueError(f"architecture norm_eps must be a positive number, got {a['norm_eps']!r}")
    a["norm_eps"] = float(a["norm_eps"])
    if not isinstance(a["final_norm"], bool):
        raise ValueError(f"architecture final_norm must be true or false, got {a['final_norm']!r}")
    if a["pos_embed"] not in POS_EMBED_KINDS:
        raise ValueError(f"pos_embed must be one of {POS_EMBED_KINDS}, got {a['pos_embed']!r}")
    if not (a["qkv_bias"] is True or a["qkv_bias"] is False or a["qkv_bias"] == "qv"):
        raise ValueError(f"qkv_bias must be one of {QKV_BIAS_KINDS}, got {a['qkv_bias']!r}")
    if a["embed_dim"] % a["num_heads"]:
        raise ValueError(f"embed_dim {a['embed_dim']} is not divisible by num_heads {a['num_heads']}")
    if a["pos_embed"] in ROPE_KINDS:
        if a["qkv_bias"] == "qv":
            raise ValueError(
                "pos_embed rope takes qkv_bias true or false (q/v-only "
                "biases are VideoMAE's, which uses sin-cos positions)"
            )
        if axis_dims(a["embed_dim"] // a["num_heads"]) < 2:
            raise ValueError(
                f"pos_embed rope needs a head dimension of at least 6; "
                f"embed_dim {a['embed_dim']} / num_heads {a['num_heads']} is smaller"
            )
    if a["pos_embed"] == "sincos3d" and not a["uniform_power"] and a["embed_dim"] % 8:
        raise ValueError(f"sincos3d positions need embed_dim divisible by 8 (dim/4 even), got {a['embed_dim']}")
    if a["img_size"] % a["patch_size"] or a["num_frames"] % a["tubelet_size"]:
        raise ValueError(
            f"nominal clip {a['num_frames']}x{a['img_size']}x{a['img_size']} does not "
            f"divide into tubelets of {a['tubelet_size']} and patches of {a['patch_size']}"
        )
    return a


def token_grid(arch: Mapping[str, Any], frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Token grid (T', H', W') of a clip for an arch dict, without building the model."""
    t, p = arch["tubelet_size"], arch["patch_size"]
    if frames % t or height % p or width % p or min(frames, height, width) <= 0:
        raise ValueError(
            f"clip of {frames} frames x {height}x{width} pixels does not divide into "
            f"tubelets of {t} frames and patches of {p}x{p} pixels"
        )
    return frames // t, height // p, width // p


def resolve_arch(name_or_arch: str | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """Registry name or arch dict (+ overrides of arch keys) -> complete arch dict."""
    if isinstance(name_or_arch, str):
        if name_or_arch not in ARCHS:
            from salt.config import ConfigError  # a size no one registered: the config names a wrong one

            raise ConfigError(
                f"unknown encoder size {name_or_arch!r} — use one of "
                f"{', '.join(sorted(ARCHS))} (salt models lists them)"
            )
        base = ARCHS[name_or_arch]
    else:
        base = name_or_arch
    return complete_arch({**base, **overrides})


def count_params(arch: str | Mapping[str, Any]) -> int:
    """Parameter count from the architecture alone (no instantiation)."""
    a = resolve_arch(arch)
    dim, chans, hidden = a["embed_dim"], a["in_chans"], int(a["embed_dim"] * a["mlp_ratio"])
    patch_embed = dim * chans * a["tubelet_size"] * a["patch_size"] ** 2 + dim
    qkv_bias = {True: 3 * dim, False: 0, "qv": 2 * dim}[a["qkv_bias"]]
    block = (
        2 * dim  # norm1
        + 3 * dim * dim
        + qkv_bias  # qkv
        + dim * dim
        + dim  # attn.proj
        + 2 * dim  # norm2
        + dim * hidden
        + hidden  # mlp.fc1
        + hidden * dim
        + dim
    )  # mlp.fc2
    return patch_embed + a["depth"] * block + (2 * dim if a["final_norm"] else 0)
