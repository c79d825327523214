"""Classification heads over an encoder's tokens (the supervised objective and the probes).

- `AttentiveClassifier` (V-JEPA's probe): a few self-attention blocks, cross-attention from one
  learnable query (timm's `AttentionPoolLatent`), a linear layer.
- `MeanPoolClassifier`: the tokens averaged, LayerNorm, a linear layer. Trained jointly with an
  encoder from scratch it learns far faster than the attentive head (docs/results.md,
  "Calibration"), and it reads what a linear probe reads.
"""

from __future__ import annotations

import torch
from timm.layers import AttentionPoolLatent
from torch import nn

from salt.models.vit import init_vit_weights, make_block


class AttentiveClassifier(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int, num_heads: int = 4, depth: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"head: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.blocks = nn.ModuleList(make_block(embed_dim, num_heads, mlp_ratio, True) for _ in range(depth))
        self.pool = AttentionPoolLatent(embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=nn.LayerNorm)
        self.linear = nn.Linear(embed_dim, num_classes)
        init_vit_weights(self, self.blocks)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D] → logits [B, num_classes]."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.linear(self.pool(tokens))


class MeanPoolClassifier(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.linear = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, D] → logits [B, num_classes]."""
        return self.linear(self.norm(tokens.mean(dim=1)))
