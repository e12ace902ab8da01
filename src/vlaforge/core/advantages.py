"""Returns and advantages: GAE, group-relative baselines, log-prob levels.

Pure torch functions over time-major tensors. Conventions shared by every function here:

- ``T`` decision steps (one action chunk each), ``N`` episodes (one per column).
- ``alive (T, N)`` bool: the step happened. Each column holds one episode, whose steps are
  ``alive`` from t=0 up to its last step; nothing is alive after an episode ends.
- ``terminated (T, N)`` bool: the episode ended at this step with no bootstrap (success or
  failure).
- ``truncated (T, N)`` bool: the episode was cut at this step by a time limit; its return is
  bootstrapped from ``next_value (N,)``, the value of the observation after the column's last
  alive step. A column whose last alive step is neither terminated nor truncated (the
  collector stopped it) is bootstrapped from ``next_value`` as well.
- Values on dead steps are ignored on input and are zero on output.

All maths runs in float32. Differences from the papers: none in the formulas; GRPO uses the
population standard deviation (divide by K, not K-1) — the papers do not fix it and it makes
the K=2 case well defined.
"""

from __future__ import annotations

import torch

__all__ = [
    "gae",
    "group_normalized_advantages",
    "leave_one_out_advantages",
    "uniform_groups",
    "group_success_rate",
    "broadcast_to_steps",
    "reduce_log_prob_token",
    "reduce_log_prob_action",
    "reduce_log_prob_chunk",
    "LOG_PROB_LEVELS",
    "reduce_log_prob",
]


# --------------------------------------------------------------------------------------------
# Per-step returns and GAE
# --------------------------------------------------------------------------------------------


def _step_masks(
    alive: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks used by the backward recursions.

    Returns (alive, term, cont), all bool (T, N):
    alive — the step happened; term — terminated and alive (no bootstrap);
    cont — the episode continues to step t+1 (the recursion carries from t+1 into t).
    """
    alive = alive.bool()
    term = terminated.bool() & alive
    done = term | (truncated.bool() & alive)
    cont = torch.zeros_like(alive)
    cont[:-1] = alive[1:] & ~done[:-1]
    if bool((done[:-1] & alive[1:]).any()):
        raise ValueError(
            "an alive step follows a terminated/truncated step in the same column; "
            "each column must hold one episode ending at its last alive step"
        )
    return alive, term, cont


def _check_step_inputs(reward, alive, terminated, truncated, next_value) -> None:
    assert reward.ndim == 2, f"reward must be (T, N), got {tuple(reward.shape)}"
    assert alive.shape == reward.shape, f"alive {tuple(alive.shape)} != reward {tuple(reward.shape)}"
    assert terminated.shape == reward.shape, "terminated must be (T, N)"
    assert truncated.shape == reward.shape, "truncated must be (T, N)"
    assert next_value.ndim == 1 and next_value.shape[0] == reward.shape[1], (
        f"next_value must be (N,), got {tuple(next_value.shape)}"
    )


def gae(
    reward: torch.Tensor,
    value: torch.Tensor,
    alive: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    δ_t = r_t + γ·(1 − term_t)·v_next − v_t, with v_next = value[t+1] inside an episode and
    next_value at its last step; A_t = δ_t + γλ·A_{t+1} while the episode continues.
    Termination masks the bootstrap; truncation bootstraps from ``next_value``.

    Args:
        reward, value: float (T, N).
        alive, terminated, truncated: bool (T, N).
        next_value: float (N,).
        gamma, lam: discount and GAE λ.
    Returns:
        (advantages, returns), both float32 (T, N), zero on dead steps; returns = A + V.
    """
    _check_step_inputs(reward, alive, terminated, truncated, next_value)
    assert value.shape == reward.shape, f"value must be (T, N), got {tuple(value.shape)}"
    alive, term, cont = _step_masks(alive, terminated, truncated)
    r = reward.float()
    v = value.float()
    v_boot = next_value.float()  # (N,)
    zero = torch.zeros_like(v_boot)
    adv = torch.zeros_like(r)
    a_tp1 = zero
    for t in reversed(range(r.shape[0])):
        v_tp1 = v[t + 1] if t + 1 < r.shape[0] else zero
        v_next = torch.where(cont[t], v_tp1, torch.where(term[t], zero, v_boot))
        delta_t = r[t] + gamma * v_next - v[t]
        a_t = delta_t + gamma * lam * torch.where(cont[t], a_tp1, zero)
        a_t = torch.where(alive[t], a_t, zero)
        adv[t] = a_t
        a_tp1 = a_t
    returns = torch.where(alive, adv + v, torch.zeros_like(adv))
    return adv, returns


# --------------------------------------------------------------------------------------------
# Group-relative (critic-free) advantages over trajectories
# --------------------------------------------------------------------------------------------


def _group_stats(x: torch.Tensor, group_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-episode group sum, group count and group index.

    Args: x float (N,), group_id int (N,) arbitrary ids.
    Returns: (sum (N,), count (N,), inverse (N,)) where sum/count are gathered back per episode.
    """
    _, inverse = torch.unique(group_id, return_inverse=True)  # (N,)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    sums = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)
    counts = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, torch.ones_like(x))
    return sums[inverse], counts[inverse], inverse


def _check_group_inputs(x: torch.Tensor, group_id: torch.Tensor) -> None:
    assert x.ndim == 1, f"trajectory values must be (N,), got {tuple(x.shape)}"
    assert group_id.shape == x.shape, f"group_id must be (N,), got {tuple(group_id.shape)}"


def group_normalized_advantages(
    traj_reward: torch.Tensor, group_id: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO advantage: (R − mean_g) / (std_g + eps) within each group.

    std_g is the population standard deviation (divides by the group size K). Groups of
    size 1 give 0 (and so do groups with equal rewards).

    Args:
        traj_reward: float (N,) one return per trajectory.
        group_id: int (N,) trajectories sharing an id share an initial state.
    Returns:
        float32 (N,).
    """
    centred = group_centered_advantages(traj_reward, group_id)  # checks the inputs
    sq, k, _ = _group_stats(centred ** 2, group_id)
    adv = centred / ((sq / k).sqrt() + eps)
    return torch.where(k > 1, adv, torch.zeros_like(adv))


def group_centered_advantages(traj_reward: torch.Tensor, group_id: torch.Tensor) -> torch.Tensor:
    """Dr. GRPO's advantage: R − mean_g, without dividing by the group's std, so the advantage keeps
    the reward's scale (near-equal returns give near-zero advantages). Equals (K−1)/K times the
    leave-one-out advantage. Groups of size 1 give 0.

    Args:
        traj_reward: float (N,) one return per trajectory.
        group_id: int (N,) trajectories sharing an id share an initial state.
    Returns:
        float32 (N,).
    """
    _check_group_inputs(traj_reward, group_id)
    r = traj_reward.float()
    s, k, _ = _group_stats(r, group_id)
    return torch.where(k > 1, r - s / k, torch.zeros_like(r))


def leave_one_out_advantages(traj_reward: torch.Tensor, group_id: torch.Tensor) -> torch.Tensor:
    """RLOO / LOOP advantage: R_k − mean_{j≠k} R_j = K/(K−1)·(R_k − mean_g).

    Args:
        traj_reward: float (N,).
        group_id: int (N,).
    Returns:
        float32 (N,); groups of size 1 give 0.
    """
    _check_group_inputs(traj_reward, group_id)
    r = traj_reward.float()
    s, k, _ = _group_stats(r, group_id)
    others = (s - r) / (k - 1).clamp(min=1.0)  # mean of the other K-1 rewards
    return torch.where(k > 1, r - others, torch.zeros_like(r))


def uniform_groups(traj_reward: torch.Tensor, group_id: torch.Tensor) -> torch.Tensor:
    """True where every reward in the episode's group is equal (no learning signal).

    Used for dynamic rejection (RIPT-VLA): such groups are dropped. Size-1 groups are uniform.

    Args:
        traj_reward: float (N,).
        group_id: int (N,).
    Returns:
        bool (N,).
    """
    _check_group_inputs(traj_reward, group_id)
    r = traj_reward.float()
    _, inverse = torch.unique(group_id, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.numel() else 0
    g_max = torch.full((n_groups,), -torch.inf, device=r.device).scatter_reduce(0, inverse, r, "amax")
    g_min = torch.full((n_groups,), torch.inf, device=r.device).scatter_reduce(0, inverse, r, "amin")
    return (g_max == g_min)[inverse]


def group_success_rate(success: torch.Tensor, group_id: torch.Tensor) -> torch.Tensor:
    """Share of successful episodes in each episode's group.

    Args:
        success: bool or float (N,).
        group_id: int (N,).
    Returns:
        float32 (N,) in [0, 1].
    """
    _check_group_inputs(success, group_id)
    s, k, _ = _group_stats(success.float(), group_id)
    return s / k


def broadcast_to_steps(adv: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Give every alive step of a trajectory the trajectory's advantage.

    Args:
        adv: float (N,).
        alive: bool (T, N).
    Returns:
        float32 (T, N), zero on dead steps.
    """
    assert adv.ndim == 1, f"adv must be (N,), got {tuple(adv.shape)}"
    assert alive.ndim == 2 and alive.shape[1] == adv.shape[0], (
        f"alive must be (T, N), got {tuple(alive.shape)}"
    )
    a = adv.float()[None, :].expand(alive.shape)
    return torch.where(alive.bool(), a, torch.zeros_like(a))


# --------------------------------------------------------------------------------------------
# Log-prob levels: at which granularity the PPO ratio is formed
# --------------------------------------------------------------------------------------------


def _check_logp(logp: torch.Tensor) -> None:
    assert logp.ndim in (3, 4), f"logp must be (T, N, C, A) or (N, C, A), got {tuple(logp.shape)}"


def reduce_log_prob_token(logp: torch.Tensor) -> torch.Tensor:
    """Token level: one ratio per action dimension. (…, C, A) -> (…, C, A), float32."""
    _check_logp(logp)
    return logp.float()


def reduce_log_prob_action(logp: torch.Tensor) -> torch.Tensor:
    """Action level: sum over action dims, one ratio per chunk step. (…, C, A) -> (…, C)."""
    _check_logp(logp)
    return logp.float().sum(dim=-1)


def reduce_log_prob_chunk(logp: torch.Tensor) -> torch.Tensor:
    """Chunk level: sum over chunk and action dims, one ratio per decision. (…, C, A) -> (…)."""
    _check_logp(logp)
    return logp.float().sum(dim=(-2, -1))


LOG_PROB_LEVELS = {
    "token": reduce_log_prob_token,
    "action": reduce_log_prob_action,
    "chunk": reduce_log_prob_chunk,
}


def reduce_log_prob(logp: torch.Tensor, level: str) -> torch.Tensor:
    """Reduce element-wise log-probs (T, N, C, A) or (N, C, A) to ``level``.

    level: "token" keeps (…, C, A); "action" sums A -> (…, C); "chunk" sums C and A -> (…).
    """
    if level not in LOG_PROB_LEVELS:
        raise ValueError(f"unknown log-prob level {level!r}; choose one of {sorted(LOG_PROB_LEVELS)}")
    return LOG_PROB_LEVELS[level](logp)
