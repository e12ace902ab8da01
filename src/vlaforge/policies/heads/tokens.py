"""Binned action-token head (OpenVLA / RT-2 style), decoded dimension by dimension.

Each normalised action dim in [-1, 1] is cut into ``n_bins`` uniform bins; the chunk's C*A
tokens are generated autoregressively by a small GRU decoder conditioned on the pooled
backbone tokens. The softmax is over the action bins only, at the sampling temperature, in
rollout and learner alike. ``taken["tokens"]`` (N, C*A) int64 holds the sampled ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.core.losses import token_cross_entropy
from vlaforge.policies.heads.common import TokenLearner, mlp


def actions_to_tokens(a: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Normalised actions in [-1, 1] (any shape) -> bin ids in [0, n_bins)."""
    return ((a.clamp(-1, 1) + 1) / 2 * n_bins).long().clamp(0, n_bins - 1)


def tokens_to_actions(t: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin ids -> bin centres in [-1, 1]."""
    return (2 * t.float() + 1) / n_bins - 1


class TokenHead(nn.Module):
    def __init__(self, dim: int, chunk: int, action_dim: int, num_queries: int = 4, hidden: int = 256,
                 n_bins: int = 256, **_):
        super().__init__()
        self.chunk, self.action_dim, self.n_bins = chunk, action_dim, n_bins
        self.K = chunk * action_dim
        self.pool = TokenLearner(dim, num_queries)
        self.h0 = mlp(num_queries * dim, hidden, hidden, layers=2)
        self.tok_emb = nn.Embedding(n_bins + 1, hidden)  # last id = begin-of-action
        self.pos_emb = nn.Parameter(torch.randn(self.K, hidden) * 0.02)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, n_bins)

    def _logits(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (N, K, n_bins) for given tokens (N, K)."""
        n = feats.shape[0]
        h0 = torch.tanh(self.h0(self.pool(feats))).unsqueeze(0)
        bos = torch.full((n, 1), self.n_bins, dtype=torch.long, device=feats.device)
        prev = torch.cat([bos, tokens[:, :-1]], 1)
        y, _ = self.gru(self.tok_emb(prev) + self.pos_emb, h0)
        return self.out(y)

    def sample(self, feats, deterministic: bool = False, temperature: float = 1.0):
        n = feats.shape[0]
        h = torch.tanh(self.h0(self.pool(feats))).unsqueeze(0)
        prev = torch.full((n,), self.n_bins, dtype=torch.long, device=feats.device)
        toks, logps = [], []
        for k in range(self.K):
            y, h = self.gru((self.tok_emb(prev) + self.pos_emb[k]).unsqueeze(1), h)
            logp = F.log_softmax(self.out(y[:, 0]) / temperature, -1)
            tok = logp.argmax(-1) if deterministic else torch.multinomial(logp.exp(), 1)[:, 0]
            toks.append(tok)
            logps.append(logp.gather(1, tok[:, None])[:, 0])
            prev = tok
        tokens = torch.stack(toks, 1)
        log_prob = torch.stack(logps, 1).view(n, self.chunk, self.action_dim)
        return tokens_to_actions(tokens, self.n_bins).view(n, self.chunk, self.action_dim), log_prob, {"tokens": tokens}

    def evaluate(self, feats, taken, temperature: float = 1.0):
        tokens = taken["tokens"]
        logp = F.log_softmax(self._logits(feats, tokens) / temperature, -1)
        lp = logp.gather(2, tokens.unsqueeze(-1))[..., 0]
        ent = -(logp.exp() * logp).sum(-1)
        shape = (feats.shape[0], self.chunk, self.action_dim)
        return lp.view(shape), ent.view(shape)

    def sft_loss(self, feats, target, mask=None):
        tokens = actions_to_tokens(target, self.n_bins)  # (N, C, A)
        logits = self._logits(feats, tokens.flatten(1)).view(*tokens.shape, self.n_bins)
        loss, m = token_cross_entropy(logits, tokens, mask)
        return loss, {"sft/ce": m["ce"], "sft/token_acc": m["token_accuracy"]}
