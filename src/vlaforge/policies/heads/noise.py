"""DSRL's latent-noise policy (Wagenmaker et al. 2025, "Steering Your Diffusion Policy with Latent Space
Reinforcement Learning"): a small tanh-Gaussian MLP that chooses the initial noise ``w`` a frozen flow head
integrates from (its ODE started at ``x1 = w`` instead of ``x1 ~ N(0, I)``).

``w = b · tanh(u)``, ``u ~ N(μ(c), σ(c))`` with the condition ``c`` = the frozen VLA's pooled head context
(the flow head's TokenLearner output) concatenated with proprioception; ``b`` (``bound``) keeps w where the
flow model was trained (|x1| of a standard normal is mostly < 2.5). The last layer starts at zero and
log σ at 0, so before training u ~ N(0, 1) and the deterministic noise is w = 0: the base policy's own
deterministic action. Log-probs are those of the unit-box variable tanh(u) (the constant −log b per dim is
left out; it shifts neither gradients nor, up to a constant, SAC's entropy target).

Trained by ``algos/dsrl.py`` with its own optimizer; the tiny VLA owns the module (``TinyConfig.dsrl_bound``),
so it is saved in the policy checkpoint and ``vlaforge eval`` acts through it.
"""

from __future__ import annotations

import torch
from torch import nn

from vlaforge.core.offpolicy import squashed_gaussian_sample


class NoisePolicy(nn.Module):
    """π_w(w | c): LayerNorm → 2 ReLU layers → (mean, log-std) of u for each chunk entry (N, C, A)."""

    log_std_min, log_std_max = -5.0, 2.0

    def __init__(self, cond_dim: int, chunk: int, action_dim: int, bound: float, hidden: int = 256):
        super().__init__()
        if bound <= 0:
            raise ValueError(f"the DSRL noise bound must be > 0; got {bound}")
        self.chunk, self.action_dim, self.bound = chunk, action_dim, float(bound)
        self.net = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2 * chunk * action_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def dist(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cond (N, K) -> mean, log_std of u, each (N, C, A)."""
        mean, log_std = self.net(cond).view(-1, 2, self.chunk, self.action_dim).unbind(1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def rsample(self, cond: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None):
        """(w (N, C, A) in (−b, b), element-wise log-prob (N, C, A) of w / b); reparameterised."""
        mean, log_std = self.dist(cond)
        a, log_prob = squashed_gaussian_sample(mean, log_std, generator, deterministic)
        return self.bound * a, log_prob
