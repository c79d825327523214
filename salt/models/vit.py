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

The architecture is described by a plain, JSON-able dict (``ARCH_KEYS``); ``ARCHS`` names the
standard sizes (both in salt/models/archs.py, which needs no torch) and ``build_encoder`` turns a
name or dict into a model.
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

# The registry lives apart, without torch; re-exported here for the modules that build models.
from salt.models.archs import (  # noqa: F401
    ARCH_KEYS,
    ARCHS,
    DEFAULT_ARCH,
    POS_EMBED_KINDS,
    QKV_BIAS_KINDS,
    ROPE_KINDS,
    complete_arch,
    count_params,
    resolve_arch,
    token_grid,
)
from salt.models.rope import RoPEAttention, RoPEBlock, rope_tables

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


# ----------------------------------------------------------------------------- building


def build_encoder(
    name_or_arch: str | Mapping[str, Any], *, checkpoint_activations: bool = False, **overrides: Any
) -> VideoViT:
    """Build an encoder from a registry name (``"vit_base"``) or arch dict; keyword
    overrides replace arch keys (e.g. ``img_size=32, num_frames=4``)."""
    return VideoViT(resolve_arch(name_or_arch, **overrides), checkpoint_activations=checkpoint_activations)
