"""V-JEPA-style predictor: from context tokens to predictions at the masked positions.

Linear(embed_dim -> width), fixed 3-D sin-cos positions at ``width`` channels (the encoder's
function, computed per token grid), one learnable mask token per mask configuration, ``depth``
timm Blocks, LayerNorm, Linear(width -> out_dim). Only the target positions are returned.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from salt.models.vit import PositionCache, gather_tokens, init_vit_weights, make_block


class Predictor(nn.Module):
    def __init__(self, embed_dim: int, out_dim: int, width: int = 384, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, num_mask_tokens: int = 2,
                 uniform_power: bool = False, qkv_bias: bool = True,
                 checkpoint_activations: bool = False):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"predictor width {width} is not divisible by num_heads {num_heads}")
        if not uniform_power and width % 8:
            raise ValueError(f"sincos3d positions need width divisible by 8, got {width}")
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be >= 1, got {num_mask_tokens}")
        # Plain data describing this predictor (e.g. for training checkpoints).
        self.config: dict[str, Any] = {
            "embed_dim": embed_dim, "out_dim": out_dim, "width": width, "depth": depth,
            "num_heads": num_heads, "mlp_ratio": float(mlp_ratio),
            "num_mask_tokens": num_mask_tokens, "uniform_power": uniform_power, "qkv_bias": qkv_bias,
        }
        self.embed_dim, self.out_dim, self.width = embed_dim, out_dim, width
        self.checkpoint_activations = checkpoint_activations

        self.embed = nn.Linear(embed_dim, width)
        self.mask_tokens = nn.ParameterList(
            nn.Parameter(torch.zeros(1, 1, width)) for _ in range(num_mask_tokens))
        self.positions = PositionCache("sincos3d", width, uniform_power)
        self.blocks = nn.ModuleList(
            make_block(width, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, out_dim)

        init_vit_weights(self, self.blocks)
        for token in self.mask_tokens:
            trunc_normal_(token, std=0.02)

    def forward(self, context_tokens: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor, grid: tuple[int, int, int],
                mask_index: int = 0) -> torch.Tensor:
        """context_tokens [B, Nc, embed_dim] at flat grid indices context_idx [B, Nc];
        predict target_idx [B, Nt] of the (T', H', W') ``grid`` -> [B, Nt, out_dim]."""
        batch, num_context, dim = context_tokens.shape
        if dim != self.embed_dim:
            raise ValueError(f"context tokens have dim {dim}, predictor expects {self.embed_dim}")
        if tuple(context_idx.shape) != (batch, num_context):
            raise ValueError(f"context_idx must be [B={batch}, Nc={num_context}], "
                             f"got {tuple(context_idx.shape)}")
        if not 0 <= mask_index < len(self.mask_tokens):
            raise ValueError(f"mask_index {mask_index} out of range: predictor has "
                             f"{len(self.mask_tokens)} mask tokens")
        if len(grid) != 3:
            raise ValueError(f"grid must be (T', H', W'), got {grid!r}")

        pos = self.positions.get(tuple(int(g) for g in grid), context_tokens.device)
        pos = pos.to(self.embed.weight.dtype).unsqueeze(0).expand(batch, -1, -1)
        context = self.embed(context_tokens) + gather_tokens(pos, context_idx)
        targets = self.mask_tokens[mask_index].to(context.dtype) + gather_tokens(pos, target_idx)

        x = torch.cat([context, targets], dim=1)
        for block in self.blocks:
            if self.checkpoint_activations and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x[:, num_context:])  # norm is per token: apply it to the targets only
        return self.proj(x)
