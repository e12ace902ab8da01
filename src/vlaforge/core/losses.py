"""Losses: PPO clipped surrogate, clipped value loss, entropy, TPO, and SFT losses.

Pure torch functions. Each loss returns ``(loss, metrics)`` where ``metrics`` maps names to
0-dim detached float32 tensors (call ``.item()`` when logging; keeping them as tensors
avoids a device sync per metric). All maths is float32: inputs are cast with ``.float()``.

Masks: ``mask`` is bool (or 0/1 float) with a shape equal to the leading dims of the tensor it
masks, e.g. (T, N) for log-probs of shape (T, N), (T, N, C) or (T, N, C, A); it broadcasts
over the trailing dims. Masked-out elements never reach ``exp`` or the result, so garbage
(even inf/nan) in padding is harmless.

Choices that the papers leave open:
- ``clip_frac`` counts elements where the clipped term is the active side of the min (the
  gradient through them is zero), not merely elements with a ratio outside the bounds.
- The TPO trajectory log-ratio is a plain sum over the masked steps (no length normalisation),
  as in GRAPE's formula; padding steps are excluded rather than aligned by index.
- SFT losses average over elements (chunk steps and action dims), so their scale does not
  grow with the chunk length or the action dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "masked_mean",
    "symmetric_bounds",
    "clip_higher_bounds",
    "loop_bounds",
    "ppo_clip_loss",
    "value_loss",
    "entropy_bonus",
    "tpo_loss",
    "mse_loss",
    "token_cross_entropy",
]

Metrics = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _expand_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Float32 mask of shape ``like.shape``; ``mask.shape`` must equal the leading dims of ``like``."""
    assert mask.ndim <= like.ndim and tuple(mask.shape) == tuple(like.shape[: mask.ndim]), (
        f"mask {tuple(mask.shape)} must match the leading dims of {tuple(like.shape)}"
    )
    m = mask.float().reshape(tuple(mask.shape) + (1,) * (like.ndim - mask.ndim))
    return m.expand(like.shape)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``x`` over the elements where ``mask`` is set.

    Args:
        x: float (*L, *E) any shape.
        mask: bool or 0/1 float (*L) — the leading dims of x, broadcast over the trailing
            dims E — or None for a plain mean. Float masks act as weights.
    Returns:
        0-dim float32 tensor; 0 when nothing is masked in.
    """
    x = x.float()
    if mask is None:
        return x.mean()
    m = _expand_mask(mask, x)
    x_safe = torch.where(m > 0, x, torch.zeros_like(x))  # padding may hold inf/nan
    return (x_safe * m).sum() / m.sum().clamp(min=1e-8)


def _masked_max(x: torch.Tensor, mask: torch.Tensor, empty: float) -> torch.Tensor:
    m = _expand_mask(mask, x) > 0
    if not bool(m.any()):
        return torch.tensor(empty, device=x.device)
    return x[m].max()


# --------------------------------------------------------------------------------------------
# PPO: clip bounds and the clipped surrogate
# --------------------------------------------------------------------------------------------


def symmetric_bounds(eps: float) -> tuple[float, float]:
    """Standard PPO: ratio clipped to [1 − eps, 1 + eps]. Returns (clip_low, clip_high)."""
    return eps, eps


def clip_higher_bounds(eps_low: float, eps_high: float) -> tuple[float, float]:
    """Clip-higher (DAPO / SimpleVLA-RL, e.g. 0.2 / 0.28): ratio in [1 − eps_low, 1 + eps_high]."""
    return eps_low, eps_high


def loop_bounds(eps: float) -> tuple[float, float]:
    """LOOP: ratio clipped to [1/(1+eps), 1+eps], i.e. clip_low = 1 − 1/(1+eps)."""
    return 1.0 - 1.0 / (1.0 + eps), eps


def ppo_clip_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, Metrics]:
    """PPO clipped surrogate with the ratio formed per element of ``logp``.

    loss = −masked_mean( min(ρ·A, clip(ρ, 1 − clip_low, 1 + clip_high)·A) ), ρ = exp(new − old).

    Args:
        logp_new: float (*B, *E) log-probs under the current policy at the chosen level:
            (T, N) chunk, (T, N, C) action, (T, N, C, A) token (or a flat batch (B, …)).
        logp_old: same shape, from the rollout policy (no grad needed).
        adv: float (*B) e.g. (T, N), broadcast over E.
        mask: bool (*B) steps that count, broadcast over E.
        clip_low, clip_high: ratio bounds 1 − clip_low, 1 + clip_high (symmetric_bounds, clip_higher_bounds, loop_bounds).
    Returns:
        (loss 0-dim, metrics) with metrics pg_loss, clip_frac (share of elements where the
        clipped term is active), approx_kl (k3: mean((ρ−1) − log ρ)), ratio_mean, ratio_max.
    """
    assert logp_new.ndim >= 1 and logp_new.shape == logp_old.shape, (
        f"logp_new {tuple(logp_new.shape)} and logp_old {tuple(logp_old.shape)} must match"
    )
    assert adv.ndim >= 1 and adv.ndim <= logp_new.ndim, f"adv rank {adv.ndim} vs logp rank {logp_new.ndim}"
    assert tuple(adv.shape) == tuple(logp_new.shape[: adv.ndim]), (
        f"adv {tuple(adv.shape)} must match the leading dims of logp {tuple(logp_new.shape)}"
    )
    assert mask.shape == adv.shape, f"mask {tuple(mask.shape)} must match adv {tuple(adv.shape)}"
    m = _expand_mask(mask, logp_new) > 0
    log_ratio = torch.where(
        m, logp_new.float() - logp_old.float().detach(), torch.zeros_like(logp_new.float())
    )
    ratio = torch.exp(log_ratio)
    a = adv.float().detach().reshape(tuple(adv.shape) + (1,) * (logp_new.ndim - adv.ndim))
    surr_unclipped = ratio * a
    surr_clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * a
    surr = torch.minimum(surr_unclipped, surr_clipped)
    loss = -masked_mean(surr, mask)
    with torch.no_grad():
        metrics = {
            "pg_loss": loss.detach(),
            "clip_frac": masked_mean((surr_clipped < surr_unclipped).float(), mask),
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": _masked_max(ratio, mask, empty=1.0),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


# --------------------------------------------------------------------------------------------
# Critic, entropy, KL
# --------------------------------------------------------------------------------------------


def value_loss(
    v_new: torch.Tensor,
    v_old: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None,
) -> tuple[torch.Tensor, Metrics]:
    """Value loss, optionally clipped around the rollout value.

    loss = 0.5·masked_mean( max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²) ), or
    0.5·masked_mean((V − R)²) when clip_eps is None.

    Args:
        v_new, v_old, returns: float (T, N) (any equal shape works).
        mask: bool, same shape.
        clip_eps: ε, or None for no clipping.
    Returns:
        (loss 0-dim, metrics) with value_loss, value_clip_frac (share where the clipped term
        is larger), explained_var (1 − Var(R − V_old)/Var(R) over masked steps).
    """
    assert v_new.ndim >= 1, "v_new must have at least one dim"
    assert v_new.shape == v_old.shape == returns.shape == mask.shape, (
        f"shapes differ: v_new {tuple(v_new.shape)}, v_old {tuple(v_old.shape)}, "
        f"returns {tuple(returns.shape)}, mask {tuple(mask.shape)}"
    )
    v = v_new.float()
    v_o = v_old.float().detach()
    r = returns.float().detach()
    err_unclipped = (v - r) ** 2
    if clip_eps is None:
        err = err_unclipped
        clip_frac = torch.zeros((), device=v.device)
    else:
        v_clipped = v_o + (v - v_o).clamp(-clip_eps, clip_eps)
        err_clipped = (v_clipped - r) ** 2
        err = torch.maximum(err_unclipped, err_clipped)
        clip_frac = masked_mean((err_clipped > err_unclipped).float(), mask)
    loss = 0.5 * masked_mean(err, mask)
    with torch.no_grad():
        var_r = masked_mean((r - masked_mean(r, mask)) ** 2, mask)
        resid = r - v_o
        var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
        explained = torch.where(var_r > 0, 1.0 - var_resid / var_r.clamp(min=1e-12), torch.zeros_like(var_r))
    return loss, {
        "value_loss": loss.detach(),
        "value_clip_frac": clip_frac.detach(),
        "explained_var": explained.detach(),
    }


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """Masked mean entropy (a bonus: subtract ``coef · bonus`` from the loss).

    Args:
        entropy: float (T, N) or (T, N, …) per step / element.
        mask: bool (T, N) (leading dims of entropy).
    Returns:
        (bonus 0-dim, {"entropy"}).
    """
    assert entropy.ndim >= 1 and mask.ndim >= 1, "entropy and mask need at least one dim"
    bonus = masked_mean(entropy, mask)
    return bonus, {"entropy": bonus.detach()}


# --------------------------------------------------------------------------------------------
# GRAPE: trajectory-wise preference optimisation
# --------------------------------------------------------------------------------------------


def _traj_log_ratio(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t (logp − logp_ref) over masked steps. (T, P) -> (P,)."""
    assert logp.ndim == 2, f"per-step log-probs must be (T, P), got {tuple(logp.shape)}"
    assert logp.shape == logp_ref.shape == mask.shape, (
        f"shapes differ: logp {tuple(logp.shape)}, logp_ref {tuple(logp_ref.shape)}, mask {tuple(mask.shape)}"
    )
    d = logp.float() - logp_ref.float().detach()
    return torch.where(mask.bool(), d, torch.zeros_like(d)).sum(dim=0)


def tpo_loss(
    logp_w: torch.Tensor,
    logp_ref_w: torch.Tensor,
    mask_w: torch.Tensor,
    logp_l: torch.Tensor,
    logp_ref_l: torch.Tensor,
    mask_l: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, Metrics]:
    """GRAPE's TPO loss: −mean log σ(β·(Σ_t log π/π_ref (winner) − Σ_t log π/π_ref (loser))).

    Args:
        logp_w, logp_ref_w: float (T_w, P) per-step log-probs of the chosen trajectories under
            the policy and the frozen reference; mask_w bool (T_w, P) real (non-padding) steps.
        logp_l, logp_ref_l, mask_l: the same for the rejected trajectories, (T_l, P).
        beta: inverse temperature (0.1 in GRAPE).
    Returns:
        (loss 0-dim, metrics) with tpo_loss, reward_margin (mean β·margin), accuracy (share of
        pairs with positive margin), chosen_log_ratio, rejected_log_ratio (means over pairs).
    """
    assert logp_w.ndim == 2 and logp_l.ndim == 2, "per-step log-probs must be (T, P)"
    assert logp_w.shape[1] == logp_l.shape[1], f"pair counts differ: {logp_w.shape[1]} vs {logp_l.shape[1]}"
    chosen = _traj_log_ratio(logp_w, logp_ref_w, mask_w)  # (P,)
    rejected = _traj_log_ratio(logp_l, logp_ref_l, mask_l)  # (P,)
    margin = chosen - rejected  # (P,)
    loss = -F.logsigmoid(beta * margin).mean()
    with torch.no_grad():
        metrics = {
            "tpo_loss": loss.detach(),
            "reward_margin": (beta * margin).mean(),
            "accuracy": (margin > 0).float().mean(),
            "chosen_log_ratio": chosen.mean(),
            "rejected_log_ratio": rejected.mean(),
        }
    return loss, {k: v.detach() for k, v in metrics.items()}


# --------------------------------------------------------------------------------------------
# Supervised losses (SFT on demos)
# --------------------------------------------------------------------------------------------


def mse_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, Metrics]:
    """Mean squared error per element.

    Args:
        pred, target: float, same shape (e.g. (N, C, A)).
        mask: bool (leading dims of pred) or None.
    Returns:
        (loss 0-dim, {"mse"}).
    """
    assert pred.ndim >= 1 and pred.shape == target.shape, (
        f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must match"
    )
    loss = masked_mean((pred.float() - target.float()) ** 2, mask)
    return loss, {"mse": loss.detach()}


def token_cross_entropy(
    logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, Metrics]:
    """Cross-entropy of target tokens (e.g. binned action tokens), averaged per token.

    Args:
        logits: float (..., B) over B classes (e.g. (N, C, A, 256)).
        target_ids: int64 (...) class indices.
        mask: bool (leading dims of target_ids) or None.
    Returns:
        (loss 0-dim, {"ce", "token_accuracy"}).
    """
    assert logits.ndim >= 2, f"logits must be (..., B), got {tuple(logits.shape)}"
    assert tuple(target_ids.shape) == tuple(logits.shape[:-1]), (
        f"target_ids {tuple(target_ids.shape)} must match logits {tuple(logits.shape)} without the last dim"
    )
    lg = logits.float()
    ids = target_ids.long()
    if mask is not None:  # padding may hold out-of-range ids (e.g. -100)
        ids = torch.where(_expand_mask(mask, ids) > 0, ids, torch.zeros_like(ids))
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids.reshape(-1), reduction="none")
    ce = ce.reshape(target_ids.shape)
    loss = masked_mean(ce, mask)
    with torch.no_grad():
        acc = masked_mean((lg.argmax(dim=-1) == ids).float(), mask)
    return loss, {"ce": loss.detach(), "token_accuracy": acc.detach()}
