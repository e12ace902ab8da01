"""GRPO (as in SimpleVLA-RL): K rollouts per initial state, group-normalised trajectory reward
broadcast to every step, clip-higher, no critic, no KL, no entropy term, raised sampling
temperature. Optionally keeps only groups whose success rate lies in ``keep_band``
(SimpleVLA-RL's dynamic sampling; uniform groups carry zero advantage anyway).

    vlaforge train --algo grpo --suite pointreach --init runs/sft
"""

from __future__ import annotations

from dataclasses import dataclass

from vlaforge.algos.common import (
    LOCAL,
    PGConfig,
    StepBatch,
    clipped_surrogate,
    episode_batch,
    optimize,
    trajectory_reward,
)
from vlaforge.core.advantages import (
    group_centered_advantages,
    group_normalized_advantages,
    group_success_rate,
)
from vlaforge.core.losses import masked_mean
from vlaforge.hooks import Hooks
from vlaforge.types import Rollout


@dataclass
class GRPOConfig(PGConfig):
    epochs: int = 1
    """passes over each batch"""
    temperature: float = 1.6
    """sampling temperature, raised as SimpleVLA-RL does (scoring uses the same)"""
    clip_low: float = 0.2
    """lower clip epsilon"""
    clip_high: float = 0.28
    """upper clip epsilon (clip-higher)"""
    keep_band: tuple[float, float] | None = None
    """keep only groups with success rate in [lo, hi] (SimpleVLA-RL: (0.1, 0.9)); None keeps all"""
    normalize_std: bool = True
    """divide by the group's reward std (GRPO); off: mean-centred advantages that keep the reward
    scale (Dr. GRPO), so groups of nearly equal shaped returns give nearly zero advantages"""


def prepare(rollout: Rollout, cfg: GRPOConfig, hooks: Hooks) -> tuple[StepBatch, dict]:
    R = trajectory_reward(rollout)
    adv_fn = group_normalized_advantages if cfg.normalize_std else group_centered_advantages
    adv_ep = adv_fn(R, rollout.group_id)
    keep_ep = rollout.valid.clone()
    if cfg.keep_band is not None:
        rate = group_success_rate(rollout.success.float(), rollout.group_id)
        keep_ep &= (rate >= cfg.keep_band[0]) & (rate <= cfg.keep_band[1])
    return episode_batch(rollout, keep_ep, adv_ep)


def loss(policy, mb: StepBatch, cfg: GRPOConfig):
    """The clipped surrogate with clip-higher bounds [1 − clip_low, 1 + clip_high]; nothing else."""
    logp, ent, _ = policy.evaluate(mb.obs(), mb.taken, temperature=cfg.temperature)
    pg, m = clipped_surrogate(logp, mb, cfg.clip_low, cfg.clip_high, cfg.level)
    m["entropy_mean"] = masked_mean(ent.mean(-1), mb.chunk_mask).detach()
    return pg, m


def update(policy, optimizer, batch: StepBatch, cfg: GRPOConfig, iteration: int, gen=None, sync=LOCAL,
           state=None) -> dict:
    return optimize(policy, optimizer, batch, lambda part: loss(policy, part, cfg), cfg.settings(policy), gen, sync)
