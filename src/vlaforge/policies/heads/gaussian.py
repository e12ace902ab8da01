"""Continuous Gaussian head: token learner + MLP -> mean; learned state-independent log-std.

The sample ``x ~ N(mean, std)`` is stored in ``taken["x"]``; the env receives ``clip(x, -1, 1)``
and the log-prob is that of the unclipped ``x`` (the standard treatment for bounded boxes).
A temperature scales the std in sampling and scoring alike.

SAC (``algos/sac.py``) needs a reparameterised, bounded sample with a log-prob: ``rsample`` draws
``a = tanh(u)``, ``u ~ N(atanh(mean), std)`` (mean clipped to ±(1 − 1e-3) first), whose median is the
same ``clip(mean)`` the deterministic action has, so a policy trained by SFT (mean regressed in action
space) keeps its mode. With ``squash = True`` (set by SAC at run time, not saved) ``sample`` draws from
that tanh-Gaussian too (log-prob with the tanh correction); the deterministic action is unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlaforge.core.losses import mse_loss
from vlaforge.core.offpolicy import squashed_gaussian_sample
from vlaforge.policies.heads.common import TokenLearner, mlp

LOG_STD_MIN, LOG_STD_MAX = -4.0, 0.5
"""the clamp on the learned log-std (std 0.018 to 1.65), also the range ``--log-std-init`` accepts"""


class GaussianHead(nn.Module):
    def __init__(self, dim: int, chunk: int, action_dim: int, num_queries: int = 4, hidden: int = 256,
                 log_std_init: float = -1.0, log_std_min: float = LOG_STD_MIN, log_std_max: float = LOG_STD_MAX, **_):
        super().__init__()
        self.chunk, self.action_dim = chunk, action_dim
        self.pool = TokenLearner(dim, num_queries)
        self.mean = mlp(num_queries * dim, hidden, chunk * action_dim, layers=3)
        self.log_std = nn.Parameter(torch.full((chunk, action_dim), float(log_std_init)))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        self.squash = False  # stochastic samples from the tanh-Gaussian of ``rsample`` (SAC sets it)

    def _dist(self, feats: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(self.pool(feats)).view(-1, self.chunk, self.action_dim)
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max) + math.log(temperature)
        return mean, log_std.expand_as(mean)

    @staticmethod
    def _log_prob(x, mean, log_std):
        return -0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)

    def sample(self, feats, deterministic: bool = False, temperature: float = 1.0):
        if self.squash and not deterministic:
            x, log_prob = self.rsample(feats, temperature)
            return x, log_prob, {"x": x}
        mean, log_std = self._dist(feats, temperature)
        x = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        return x.clamp(-1, 1), self._log_prob(x, mean, log_std), {"x": x}

    def rsample(self, feats, temperature: float = 1.0, generator: torch.Generator | None = None):
        """Reparameterised tanh-Gaussian sample around the mean (module docstring): (a (N, C, A) in (−1, 1),
        element-wise log-prob (N, C, A) with the tanh correction); gradients flow into the mean and log-std."""
        mean, log_std = self._dist(feats, temperature)
        lim = 1.0 - 1e-3
        return squashed_gaussian_sample(torch.atanh(mean.clamp(-lim, lim)), log_std, generator)

    def evaluate(self, feats, taken, temperature: float = 1.0):
        mean, log_std = self._dist(feats, temperature)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + log_std)
        return self._log_prob(taken["x"], mean, log_std), entropy

    def sft_loss(self, feats, target, mask=None):
        """Regression of the mean on the expert chunk (the std keeps its initial value for RL)."""
        mean, _ = self._dist(feats, 1.0)
        loss, m = mse_loss(mean, target, mask)
        return loss, {"sft/mse": m["mse"]}
