"""RLOO / LOOP (the algorithm of RIPT-VLA): leave-one-out baseline over K rollouts of one
initial state, no std normalisation, no critic, PPO clipping with LOOP's asymmetric bounds
``[1/(1+ε), 1+ε]``; rollouts with |A| < ``min_abs_adv`` are dropped.

    vlaforge train --algo rloo --suite pointreach --init runs/sft
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
from vlaforge.core.advantages import leave_one_out_advantages
from vlaforge.core.losses import loop_bounds, masked_mean
from vlaforge.hooks import Hooks
from vlaforge.types import Rollout


@dataclass
class RLOOConfig(PGConfig):
    """RLOO / LOOP (LOOP uses ``grad_clip`` 0.1 on large models)."""

    clip: float = 0.1
    """LOOP's epsilon: ratios clipped to [1/(1+eps), 1+eps]"""
    min_abs_adv: float = 0.01
    """drop rollouts whose |advantage| is below this"""


def prepare(rollout: Rollout, cfg: RLOOConfig, hooks: Hooks) -> tuple[StepBatch, dict]:
    adv_ep = leave_one_out_advantages(trajectory_reward(rollout), rollout.group_id)
    keep_ep = rollout.valid & (adv_ep.abs() >= cfg.min_abs_adv)
    return episode_batch(rollout, keep_ep, adv_ep)


def loss(policy, mb: StepBatch, cfg: RLOOConfig):
    """The clipped surrogate with LOOP's bounds [1/(1+clip), 1+clip]; nothing else."""
    lo, hi = loop_bounds(cfg.clip)
    logp, ent, _ = policy.evaluate(mb.obs(), mb.taken, temperature=cfg.temperature)
    pg, m = clipped_surrogate(logp, mb, lo, hi, cfg.level)
    m["entropy_mean"] = masked_mean(ent.mean(-1), mb.chunk_mask).detach()
    return pg, m


def update(policy, optimizer, batch: StepBatch, cfg: RLOOConfig, iteration: int, gen=None, sync=LOCAL,
           state=None) -> dict:
    return optimize(policy, optimizer, batch, lambda part: loss(policy, part, cfg), cfg.settings(policy), gen, sync)
