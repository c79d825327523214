"""V-JEPA-style predictor: from context tokens to predictions at the masked positions.

Linear(embed_dim -> width), positions (fixed 3-D sin-cos at ``width`` channels added to the
tokens, or with ``pos_embed="rope"`` V-JEPA 2's rotary embedding in every block, from each
token's own grid index), one learnable mask token per mask configuration, ``depth`` timm
Blocks, LayerNorm, Linear(width -> out_dim). Only the target positions are returned.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import trunc_normal_
from torch import nn

from salt.models.rope import axis_dims, rope_tables
from salt.models.vit import PositionCache, gather_tokens, init_vit_weights, make_block, run_blocks

PREDICTOR_POS_EMBED = ("sincos3d", "rope")


class Predictor(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        out_dim: int,
        width: int = 384,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_mask_tokens: int = 2,
        uniform_power: bool = False,
        qkv_bias: bool = True,
        checkpoint_activations: bool = False,
        pos_embed: str = "sincos3d",
    ):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"predictor width {width} is not divisible by num_heads {num_heads}")
        if pos_embed not in PREDICTOR_POS_EMBED:
            raise ValueError(f"predictor pos_embed must be one of {PREDICTOR_POS_EMBED}, got {pos_embed!r}")
        self.rope = pos_embed == "rope"
        if self.rope and axis_dims(width // num_heads) < 2:
            raise ValueError(f"rope needs a predictor head dimension of at least 6, got {width // num_heads}")
        if not self.rope and not uniform_power and width % 8:
            raise ValueError(f"sincos3d positions need width divisible by 8, got {width}")
        if num_mask_tokens < 1:
            raise ValueError(f"num_mask_tokens must be >= 1, got {num_mask_tokens}")
        # Plain data describing this predictor (e.g. for training checkpoints).
        self.config: dict[str, Any] = {
            "embed_dim": embed_dim,
            "out_dim": out_dim,
            "width": width,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": float(mlp_ratio),
            "num_mask_tokens": num_mask_tokens,
            "uniform_power": uniform_power,
            "qkv_bias": qkv_bias,
            "pos_embed": pos_embed,
        }
        self.embed_dim, self.out_dim, self.width = embed_dim, out_dim, width
        self.checkpoint_activations = checkpoint_activations

        self.embed = nn.Linear(embed_dim, width)
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, width)) for _ in range(num_mask_tokens))
        self.positions = None if self.rope else PositionCache("sincos3d", width, uniform_power)
        self.blocks = nn.ModuleList(make_block(width, num_heads, mlp_ratio, qkv_bias, self.rope) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, out_dim)

        init_vit_weights(self, self.blocks)
        for token in self.mask_tokens:
            trunc_normal_(token, std=0.02)

    def forward(
        self,
        context_tokens: torch.Tensor,
        context_idx: torch.Tensor,
        target_idx: torch.Tensor,
        grid: tuple[int, int, int],
        mask_index: int = 0,
    ) -> torch.Tensor:
        """context_tokens [B, Nc, embed_dim] at flat grid indices context_idx [B, Nc];
        predict target_idx [B, Nt] of the (T', H', W') ``grid`` -> [B, Nt, out_dim]."""
        batch, num_context, dim = context_tokens.shape
        if dim != self.embed_dim:
            raise ValueError(f"context tokens have dim {dim}, predictor expects {self.embed_dim}")
        if tuple(context_idx.shape) != (batch, num_context):
            raise ValueError(f"context_idx must be [B={batch}, Nc={num_context}], got {tuple(context_idx.shape)}")
        if not 0 <= mask_index < len(self.mask_tokens):
            raise ValueError(f"mask_index {mask_index} out of range: predictor has {len(self.mask_tokens)} mask tokens")
        if len(grid) != 3:
            raise ValueError(f"grid must be (T', H', W'), got {grid!r}")

        grid = tuple(int(g) for g in grid)
        context = self.embed(context_tokens)
        targets = self.mask_tokens[mask_index].to(context.dtype).expand(batch, target_idx.shape[1], -1)
        rope = ()
        if self.rope:
            rope = rope_tables(
                torch.cat([context_idx, target_idx], dim=1), grid, self.width // self.config["num_heads"], context.dtype
            )
        else:
            pos = self.positions.get(grid, context_tokens.device)
            pos = pos.to(self.embed.weight.dtype).unsqueeze(0).expand(batch, -1, -1)
            context = context + gather_tokens(pos, context_idx)
            targets = targets + gather_tokens(pos, target_idx)

        x = run_blocks(self.blocks, torch.cat([context, targets], dim=1), rope, self.checkpoint_activations)
        x = self.norm(x[:, num_context:])  # norm is per token: apply it to the targets only
        return self.proj(x)
