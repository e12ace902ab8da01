"""Pieces shared by the action heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenLearner(nn.Module):
    """Attention pooling of backbone tokens into ``num_queries`` learned summary tokens (iRe-VLA's head)."""

    def __init__(self, dim: int, num_queries: int = 4, num_heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * dim ** -0.5)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (N, L, D) -> (N, Q*D): ``attn(queries, feats, feats)`` written out (the same projections and
        SDPA that ``nn.MultiheadAttention`` runs for a query that is not the key, without its argument checks:
        ~0.1 ms less per call on the CPU)."""
        att, (n, length, d) = self.attn, feats.shape
        h = att.num_heads
        q = F.linear(self.queries, att.in_proj_weight[:d], att.in_proj_bias[:d]).view(1, -1, h, d // h).transpose(1, 2)
        kv = F.linear(feats, att.in_proj_weight[d:], att.in_proj_bias[d:]).view(n, length, 2, h, d // h)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (N, H, L, D/H)
        out = F.scaled_dot_product_attention(q.expand(n, -1, -1, -1), k, v)  # (N, H, Q, D/H)
        out = F.linear(out.transpose(1, 2).reshape(n, -1, d), att.out_proj.weight, att.out_proj.bias)
        return self.norm(out + self.queries).flatten(1)


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
