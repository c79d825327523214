"""3-D rotary position embeddings, exactly as V-JEPA 2 applies them (its released weights
depend on every detail, so this follows `src/models/utils/modules.py` of facebookresearch/vjepa2).

- Each head's dimension is split [t | h | w | rest]; every axis rotates
  ``2 * ((head_dim // 3) // 2)`` dimensions (head_dim 64: 20 + 20 + 20, 4 left unrotated).
- A token's position is its integer (frame in tubelets, row, column) from its flat index in the
  full (T', H', W') grid, so with a mask the kept tokens keep their own positions.
- Per axis of D dimensions, ``omega = 1 / 10000 ** (arange(D/2) / (D/2))``.
- The rotation pairs adjacent elements (2i, 2i+1), but sin/cos are laid out by *tiling* the
  D/2 frequencies (``.repeat(..., 2)``), not interleaving them, so the two elements of a pair
  see different frequencies. V-JEPA 2 calls this a bug and keeps it for compatibility with its
  weights; we reproduce it, or imported V-JEPA 2 encoders would compute something else.
- ``interleaved=True`` (``pos_embed: rope_interleaved``) is the corrected layout of V-JEPA 2.1
  (transformers' ``use_rope_interleave``): each frequency repeated twice in place
  (``repeat_interleave``), so both elements of a pair turn by the same angle: textbook RoPE.

Angles are computed in float32 (V-JEPA 2 uses the activations' dtype, which under bf16 rounds
large angles) and cast to the activations' dtype at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block

from salt.models.archs import axis_dims


def token_coordinates(token_idx: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Flat (t, h, w)-ordered token indices -> (frame, row, column) integer coordinates."""
    _, height, width = grid
    per_frame = height * width
    frame = token_idx // per_frame
    within = token_idx - frame * per_frame
    row = within // width
    return frame, row, within - row * width


def rope_tables(
    token_idx: torch.Tensor, grid: tuple[int, int, int], head_dim: int, dtype: torch.dtype, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [B, 1, N, 3·D] (D = axis_dims) for tokens at flat indices ``token_idx`` [B, N];
    frequencies tiled (V-JEPA 2) or, with ``interleaved``, repeated in place (V-JEPA 2.1)."""
    dims = axis_dims(head_dim)
    if dims < 2:
        raise ValueError(f"RoPE needs a head dimension of at least 6, got {head_dim}")
    half = dims // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32, device=token_idx.device) / half)
    angles = []
    for coordinate in token_coordinates(token_idx, grid):
        axis = coordinate.float().unsqueeze(-1) * omega  # [B, N, D/2]
        # tiled as V-JEPA 2 (see the docstring), or each frequency twice in place
        angles.append(axis.repeat_interleave(2, dim=-1) if interleaved else torch.cat([axis, axis], dim=-1))
    angles = torch.cat(angles, dim=-1).unsqueeze(1)  # [B, 1, N, 3·D]: broadcast over heads
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 3·D dims of queries or keys [B, heads, N, head_dim] in adjacent pairs."""
    rotated = cos.shape[-1]
    head, rest = x[..., :rotated], x[..., rotated:]
    pairs = head.unflatten(-1, (-1, 2))
    swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return torch.cat([head * cos + swapped * sin, rest], dim=-1)


class RoPEAttention(Attention):
    """timm's Attention with V-JEPA 2's rotary embedding on queries and keys (fused SDPA)."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(batch, tokens, self.attn_dim)
        return self.proj_drop(self.proj(x))


class RoPEBlock(Block):
    """timm's pre-norm Block whose attention takes the rotary tables."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), cos, sin)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
