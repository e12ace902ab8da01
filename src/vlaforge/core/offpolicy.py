"""Off-policy maths: SAC's tanh-Gaussian log-prob, critic targets over a random ensemble subset (RLPD),
the critic, actor and entropy-temperature losses, and Polyak averaging.

Pure torch functions, no configs or modules (the networks live in ``algos/sac.py``). Shapes: B = batch,
E = critics in the ensemble, D = action dims (a whole action chunk flattened: C·A).

References (read, not copied): Haarnoja et al. 2018 (SAC, "Soft Actor-Critic Algorithms and Applications":
learned temperature with target entropy −|A|), Ball et al. 2023 (RLPD: LayerNorm critic ensembles, the
target's min over a random subset of 2, symmetric demo/online sampling). Choices made here:

- The bootstrap ``min_j Q̄_j(s', a') − α log π(a'|s')`` takes the min over a random subset of ``subset``
  target critics (RLPD; with E = subset = 2 it is SAC's clipped double Q). The actor maximises the *mean*
  over the whole ensemble (RLPD's choice for E > 2); ``actor_loss(..., reduce="min")`` gives SAC's min.
- The critic loss is ``0.5 · Σ_e mean_B (Q_e − y)²``: a sum over critics, so each critic's gradient does not
  shrink as the ensemble grows (as in Stable-Baselines3's SAC).
- The temperature is learned as log α with the loss ``−log α · (log π + H̄)`` (the gradient in log α, as in
  most implementations; the paper's loss is in α itself).
- ``gamma`` is applied once per transition; with action chunks a transition is one decision (C simulator
  steps), so γ is per decision (algos/sac.py says so in its config).
"""

from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_LOG2 = math.log(2.0)


def tanh_log_det(u: torch.Tensor) -> torch.Tensor:
    """Element-wise ``log(1 − tanh(u)²)`` in a stable form, ``2·(log 2 − u − softplus(−2u))``. u (..., D)."""
    return 2.0 * (_LOG2 - u - torch.nn.functional.softplus(-2.0 * u))


def squashed_gaussian_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Element-wise log-density of ``a = tanh(u)``, u ~ N(mean, exp(log_std)²), at the pre-tanh sample u.

    ``log π(a) = log N(u; mean, std) − log(1 − tanh(u)²)``; u, mean, log_std (..., D) -> (..., D).
    Sum over the last axes for the log-prob of the whole action (chunk)."""
    u, mean, log_std = u.float(), mean.float(), log_std.float()
    gauss = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - _LOG_SQRT_2PI
    return gauss - tanh_log_det(u)


def squashed_gaussian_sample(mean: torch.Tensor, log_std: torch.Tensor, generator: torch.Generator | None = None,
                             deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterised sample ``a = tanh(mean + std·ε)`` and its element-wise log-prob.

    mean, log_std (..., D) -> (a (..., D) in (−1, 1), log_prob (..., D)). ``deterministic``: ε = 0."""
    if deterministic:
        eps = torch.zeros_like(mean)
    else:
        # drawn on the generator's device (the loop's checkpointed CPU generator), then moved: the same numbers on
        # every device, and CUDA refuses a CPU generator for a CUDA tensor
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                          device=generator.device if generator is not None else mean.device).to(mean.device)
    u = mean + log_std.exp() * eps
    return torch.tanh(u), squashed_gaussian_log_prob(u, mean, log_std)


def random_subset(ensemble: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``size`` distinct critic indices out of ``ensemble``, drawn uniformly: (size,) long."""
    if not 1 <= size <= ensemble:
        raise ValueError(f"target subset size must be in [1, {ensemble}]; got {size}")
    return torch.randperm(ensemble, generator=generator)[:size]


def critic_target(reward: torch.Tensor, done: torch.Tensor, next_q: torch.Tensor, next_log_prob: torch.Tensor,
                  alpha: float | torch.Tensor, gamma: float, subset: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Bellman target ``y = r + γ(1 − d)(min_{j∈subset} Q̄_j(s', a') − α log π(a'|s'))``.

    reward (B,), done (B,) 1 where the episode terminated (no bootstrap), next_q (E, B) target critics at
    (s', a'), next_log_prob (B,) of a' ~ π(·|s') summed over the action, subset (k,) indices into E (None:
    all). Returns y (B,), detached."""
    q = next_q if subset is None else next_q[subset]
    soft = q.min(0).values - alpha * next_log_prob
    return (reward.float() + gamma * (1.0 - done.float()) * soft).detach()


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """``0.5 · Σ_e mean_B (Q_e − y)²``. q (E, B), target (B,). Returns (loss, metrics)."""
    err = q - target.detach().unsqueeze(0)
    loss = 0.5 * (err ** 2).mean(1).sum()
    return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean(), "target_mean": target.detach().mean()}


def actor_loss(log_prob: torch.Tensor, q: torch.Tensor, alpha: float | torch.Tensor,
               reduce: str = "mean") -> tuple[torch.Tensor, dict]:
    """``mean_B [α log π(a|s) − Q(s, a)]`` with a ~ π reparameterised; Q reduced over the ensemble.

    log_prob (B,) summed over the action, q (E, B) critics at (s, a) (gradients flow into a only: the
    critics' own parameters are not stepped by this loss), reduce: mean (RLPD) | min (SAC)."""
    if reduce not in ("mean", "min"):
        raise ValueError(f"ensemble reduce must be mean or min; got {reduce}")
    qr = q.mean(0) if reduce == "mean" else q.min(0).values
    loss = (alpha * log_prob - qr).mean()
    return loss, {"actor_loss": loss.detach(), "entropy": -log_prob.detach().mean()}


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> tuple[torch.Tensor, dict]:
    """``−mean_B log α · (log π(a|s) + H̄)`` with log π detached; H̄ the target entropy (e.g. −|A|).

    Entropy below target (``−log π < H̄``) makes the gradient in log α negative, so a descent step raises α
    (more weight on entropy), and vice versa. log_alpha () , log_prob (B,)."""
    loss = -(log_alpha * (log_prob.detach() + target_entropy)).mean()
    return loss, {"alpha_loss": loss.detach(), "alpha": log_alpha.detach().exp()}


@torch.no_grad()
def polyak(target_params, source_params, tau: float) -> None:
    """In place ``θ̄ ← (1 − τ)·θ̄ + τ·θ`` over matching parameter (or buffer) lists."""
    for t, s in zip(target_params, source_params, strict=True):
        t.mul_(1.0 - tau).add_(s.detach(), alpha=tau)
