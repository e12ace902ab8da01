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
        """feats (N, L, D) -> (N, Q*D)"""
        q = self.queries.unsqueeze(0).expand(feats.shape[0], -1, -1)
        if not torch.is_grad_enabled():  # acting: the same numbers without the module's argument checks
            return self.norm(self._attend(q, feats) + q).flatten(1)
        out, _ = self.attn(q, feats, feats, need_weights=False)
        return self.norm(out + q).flatten(1)

    def _attend(self, q: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """``self.attn(q, feats, feats)`` written out for inference, (N, Q, D): the projections and SDPA that
        ``nn.MultiheadAttention`` runs for a query that is not the key, giving the same values bit for bit
        (tests/test_tiny_fast.py) at ~0.1 ms less per call on the CPU. Its gradients would differ in rounding (the
        module sums them in another order), so training keeps the module."""
        att, (n, length, d) = self.attn, feats.shape
        h = att.num_heads
        w_q, w_kv = att.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = att.in_proj_bias.split([d, 2 * d])
        qh = F.linear(q, w_q, b_q).view(n, -1, h, d // h).transpose(1, 2)  # (N, H, Q, D/H)
        k, v = F.linear(feats, w_kv, b_kv).view(n, length, 2, h, d // h).permute(2, 0, 3, 1, 4)  # each (N, H, L, D/H)
        out = F.scaled_dot_product_attention(qh, k, v).transpose(1, 2).reshape(n, -1, d)
        return F.linear(out, att.out_proj.weight, att.out_proj.bias)


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
