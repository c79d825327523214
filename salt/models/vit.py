"""Video Vision Transformer encoder (V-JEPA / VideoMAE layout, timm blocks).

A clip ``[B, C, T, H, W]`` is cut into tubelets by a Conv3d (``tubelet_size`` frames x
``patch_size`` x ``patch_size`` pixels), flattened to tokens in (t, h, w) order with t
slowest, given fixed sin-cos positions, optionally subset (``keep``), and run through
pre-norm timm ``Block``s and a final LayerNorm.

Positions are never parameters: either a fixed sin-cos table added to the tokens (computed for
the grid of each incoming clip and cached), or V-JEPA 2's 3-D rotary embedding of queries and
keys inside every block (``pos_embed: rope``, see ``salt.models.rope``). Either way one model
runs any clip size whose frames/height/width divide into tubelets/patches, and positions never
appear in the state dict.

The architecture is described by a plain, JSON-able dict (see ``ARCH_KEYS``); ``ARCHS``
names the standard sizes and ``build_encoder`` turns a name or dict into a model.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Attention, Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from salt.models.rope import RoPEAttention, RoPEBlock, axis_dims, rope_tables

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


# ----------------------------------------------------------------------------- positions


def sincos_1d_from_grid(dim: int, positions: np.ndarray) -> np.ndarray:
    """V-JEPA/MAE 1-D table: ``[sin(pos * omega), cos(pos * omega)]`` concatenated."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_3d_table(dim: int, grid: tuple[int, int, int], uniform_power: bool = False) -> np.ndarray:
    """V-JEPA's ``get_3d_sincos_pos_embed`` for a (T', H', W') grid, shape [T'*H'*W', dim].

    Depth, height and width tables are concatenated in that order; without ``uniform_power``
    they take dim/2, dim/4, dim/4 channels, with it ceil(dim/6)*2 each (then cut to dim).
    Generalised from V-JEPA's square grids to H' != W'.
    """
    depth, height, width = grid
    if uniform_power:
        d_dim = h_dim = w_dim = int(math.ceil(dim / 6) * 2)
    else:
        d_dim, h_dim, w_dim = dim // 2, dim // 4, dim // 4
    grid_d, grid_h, grid_w = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    table = np.concatenate(
        [
            sincos_1d_from_grid(d_dim, grid_d),
            sincos_1d_from_grid(h_dim, grid_h),
            sincos_1d_from_grid(w_dim, grid_w),
        ],
        axis=1,
    )
    return table[:, :dim]


def sinusoid_1d_table(num_positions: int, dim: int) -> np.ndarray:
    """VideoMAE's ``get_sinusoid_encoding_table``: angle pos / 10000^(2*(j//2)/dim),
    sin on even columns, cos on odd ones (interleaved), shape [num_positions, dim]."""
    j = np.arange(dim)
    angles = np.arange(num_positions, dtype=np.float64)[:, None] / np.power(10000, 2 * (j // 2) / dim)
    table = np.empty_like(angles)
    table[:, 0::2] = np.sin(angles[:, 0::2])
    table[:, 1::2] = np.cos(angles[:, 1::2])
    return table


def position_table(kind: str, dim: int, grid: tuple[int, int, int], uniform_power: bool = False) -> torch.Tensor:
    """Float32 table [N, dim] for a token grid; computed in float64 like the references."""
    if kind == "sincos3d":
        table = sincos_3d_table(dim, grid, uniform_power)
    elif kind == "sincos1d":
        table = sinusoid_1d_table(grid[0] * grid[1] * grid[2], dim)
    elif kind in ROPE_KINDS:
        raise ValueError("rope positions rotate queries and keys; they have no additive table")
    else:
        raise ValueError(f"unknown pos_embed {kind!r}; expected one of {POS_EMBED_KINDS}")
    return torch.from_numpy(table).float()


class PositionCache:
    """Per-(grid, device) cache of a fixed positional table (tables are tiny, grids few)."""

    def __init__(self, kind: str, dim: int, uniform_power: bool):
        self.kind, self.dim, self.uniform_power = kind, dim, uniform_power
        self._tables: dict[tuple, torch.Tensor] = {}

    def get(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        key = (tuple(grid), str(device))
        if key not in self._tables:
            table = position_table(self.kind, self.dim, tuple(grid), self.uniform_power)
            self._tables[key] = table.to(device)
        return self._tables[key]


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Select tokens: x [B, N, D], index [B, K] (int64) -> [B, K, D]."""
    if index.dim() != 2 or index.shape[0] != x.shape[0] or index.dtype != torch.long:
        raise ValueError(
            f"token index must be a LongTensor [B={x.shape[0]}, K], got {index.dtype} {tuple(index.shape)}"
        )
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------- model


class QVBiasAttention(Attention):
    """VideoMAE attention: learnable biases on q and v only (k has none).

    Parameter names ``q_bias``/``v_bias`` match VideoMAE's state dicts.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__(dim, num_heads=num_heads, qkv_bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        batch, tokens, channels = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        x = x.transpose(1, 2).reshape(batch, tokens, channels)
        return self.proj_drop(self.proj(x))


def make_block(
    dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool | str, rope: bool = False, norm_eps: float = 1e-6
) -> Block:
    """A pre-norm timm Block (LayerNorm, GELU MLP, fused SDPA attention); with ``rope`` a
    RoPEBlock, whose forward takes the rotary tables after the tokens."""
    norm = lambda d, **kw: nn.LayerNorm(d, eps=norm_eps, **kw)  # noqa: E731  (timm passes device/dtype)
    block_class = RoPEBlock if rope else Block
    block = block_class(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias is True, norm_layer=norm)
    # Attention swapped in after construction: works on every timm 1.0.x Block signature.
    if rope:
        block.attn = RoPEAttention(dim, num_heads, qkv_bias=qkv_bias is True)
    elif qkv_bias == "qv":
        block.attn = QVBiasAttention(dim, num_heads)
    return block


def run_blocks(
    blocks: nn.ModuleList, x: torch.Tensor, rope: tuple[torch.Tensor, ...] = (), checkpoint_activations: bool = False
) -> torch.Tensor:
    """Tokens through the blocks; ``rope`` is (cos, sin) for RoPE blocks, () otherwise."""
    for block in blocks:
        if checkpoint_activations and torch.is_grad_enabled():
            x = checkpoint(block, x, *rope, use_reentrant=False)
        else:
            x = block(x, *rope)
    return x


def init_vit_weights(module: nn.Module, blocks: nn.ModuleList, std: float = 0.02) -> None:
    """V-JEPA init: trunc-normal linears/convs, unit LayerNorms, zero biases, and the
    residual output projections of block i scaled by 1/sqrt(2 i)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)):
            trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer_id, block in enumerate(blocks, start=1):
            block.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
            block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))


class VideoViT(nn.Module):
    """Video ViT encoder. Build it with ``build_encoder``; ``arch`` is a complete arch dict."""

    def __init__(self, arch: Mapping[str, Any], checkpoint_activations: bool = False):
        super().__init__()
        self.arch = complete_arch(arch)
        a = self.arch
        self.embed_dim, self.num_heads = a["embed_dim"], a["num_heads"]
        self.patch_size, self.tubelet_size, self.in_chans = a["patch_size"], a["tubelet_size"], a["in_chans"]
        self.checkpoint_activations = checkpoint_activations

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            a["in_chans"],
            a["embed_dim"],
            kernel_size=(a["tubelet_size"], a["patch_size"], a["patch_size"]),
            stride=(a["tubelet_size"], a["patch_size"], a["patch_size"]),
        )
        self.rope = a["pos_embed"] in ROPE_KINDS
        self.positions = None if self.rope else PositionCache(a["pos_embed"], a["embed_dim"], a["uniform_power"])
        self.blocks = nn.ModuleList(
            make_block(a["embed_dim"], a["num_heads"], a["mlp_ratio"], a["qkv_bias"], self.rope, a["norm_eps"])
            for _ in range(a["depth"])
        )
        self.norm = nn.LayerNorm(a["embed_dim"], eps=a["norm_eps"]) if a["final_norm"] else nn.Identity()
        init_vit_weights(self, self.blocks)

    def grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (T', H', W') of a clip; ValueError if it does not divide evenly."""
        return token_grid(self.arch, frames, height, width)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, C, T, H, W] -> tokens [B, N, D] (or [B, K, D] with ``keep`` [B, K])."""
        if x.dim() != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected a clip [B, {self.in_chans}, T, H, W], got {tuple(x.shape)}")
        grid = self.grid(*x.shape[2:])
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # [B, T'H'W', D], t slowest
        rope = ()
        if self.rope:
            token_idx = keep if keep is not None else torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
            rope = rope_tables(
                token_idx,
                grid,
                self.embed_dim // self.num_heads,
                x.dtype,
                interleaved=self.arch["pos_embed"] == "rope_interleaved",
            )
        else:
            # Positions in the weights' dtype: under autocast the sum stays fp32 like V-JEPA's.
            x = x + self.positions.get(grid, x.device).to(self.patch_embed.proj.weight.dtype)
        if keep is not None:
            x = gather_tokens(x, keep)
        return self.norm(run_blocks(self.blocks, x, rope, self.checkpoint_activations))


# ----------------------------------------------------------------------------- registry


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
            from salt.models.errors import CheckpointError  # a ValueError: a size no one registered is bad input

            raise CheckpointError(
                f"unknown encoder size {name_or_arch!r} — use one of "
                f"{', '.join(sorted(ARCHS))} (salt models lists them)"
            )
        base = ARCHS[name_or_arch]
    else:
        base = name_or_arch
    return complete_arch({**base, **overrides})


def build_encoder(
    name_or_arch: str | Mapping[str, Any], *, checkpoint_activations: bool = False, **overrides: Any
) -> VideoViT:
    """Build an encoder from a registry name (``"vit_base"``) or arch dict; keyword
    overrides replace arch keys (e.g. ``img_size=32, num_frames=4``)."""
    return VideoViT(resolve_arch(name_or_arch, **overrides), checkpoint_activations=checkpoint_activations)


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
