"""Pieces shared by the action heads."""

from __future__ import annotations

import torch
from torch import nn


class TokenLearner(nn.Module):
    """Attention pooling of backbone tokens into ``num_queries`` learned summary tokens (iRe-VLA's head)."""

    def __init__(self, dim: int, num_queries: int = 4, num_heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * dim ** -0.5)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, L, D) -> (N, Q*D)"""
        q = self.queries.unsqueeze(0).expand(feats.shape[0], -1, -1)
        out, _ = self.attn(q, feats, feats, need_weights=False)
        return self.norm(out + q).flatten(1)


class VocabRows(nn.Module):
    """The LM output rows of the action-token ids as a trainable fp32 head: logits over the action bins
    only, (..., D) -> (..., n_bins), row order as given."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(rows.detach().float().clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.float() @ self.weight.t()


def mlp(inp: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = inp
    for _ in range(layers - 1):
        mods += [nn.Linear(d, hidden), nn.GELU()]
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)
