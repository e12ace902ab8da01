"""RLOO / LOOP (the algorithm of RIPT-VLA): leave-one-out baseline over K rollouts of one
initial state, no std normalisation, no critic, PPO clipping with LOOP's asymmetric bounds
``[1/(1+ε), 1+ε]``; rollouts with |A| < ``min_abs_adv`` are dropped.

    vlaforge train --algo rloo --suite pointreach --init runs/sft
"""

from __future__ import annotations

from dataclasses import dataclass

from vlaforge.algos.common import (
    LOCAL,
    StepBatch,
    StepSettings,
    clipped_surrogate,
    flatten_steps,
    micro_size,
    optimize,
    trajectory_reward,
)
from vlaforge.core.advantages import broadcast_to_steps, leave_one_out_advantages
from vlaforge.core.losses import loop_bounds, masked_mean
from vlaforge.hooks import Hooks
from vlaforge.types import Rollout


@dataclass
class RLOOConfig:
    group_size: int = 8
    """rollouts per initial state K"""
    clip: float = 0.1
    """LOOP's epsilon: ratios clipped to [1/(1+eps), 1+eps]"""
    epochs: int = 2
    """passes over each batch"""
    minibatch_size: int = 256
    """decision steps per optimizer step"""
    grad_clip: float = 1.0
    """max gradient norm (LOOP uses 0.1 on large models)"""
    level: str = "action"
    """ratio level: token | action | chunk"""
    min_abs_adv: float = 0.01
    """drop rollouts whose |advantage| is below this"""
    temperature: float = 1.0
    """sampling temperature (scoring uses the same)"""
    kl_guard: float | None = None
    """skip the rest of an update once a minibatch's approx KL exceeds this"""


def prepare(rollout: Rollout, cfg: RLOOConfig, hooks: Hooks) -> tuple[StepBatch, dict]:
    adv_ep = leave_one_out_advantages(trajectory_reward(rollout), rollout.group_id)
    keep_ep = rollout.valid & (adv_ep.abs() >= cfg.min_abs_adv)
    keep = rollout.alive & keep_ep.unsqueeze(0)
    info = {"train/kept_episodes": float(keep_ep.sum()), "train/kept_share": float(keep_ep.float().mean())}
    return flatten_steps(rollout, keep, broadcast_to_steps(adv_ep, rollout.alive)), info


def loss(policy, mb: StepBatch, cfg: RLOOConfig):
    """The clipped surrogate with LOOP's bounds [1/(1+clip), 1+clip]; nothing else."""
    lo, hi = loop_bounds(cfg.clip)
    logp, ent, _ = policy.evaluate(mb.obs(), mb.taken, temperature=cfg.temperature)
    pg, m = clipped_surrogate(logp, mb, lo, hi, cfg.level)
    m["entropy_mean"] = masked_mean(ent.mean(-1), mb.chunk_mask).detach()
    return pg, m


def update(policy, optimizer, batch: StepBatch, cfg: RLOOConfig, iteration: int, gen=None, sync=LOCAL,
           state=None) -> dict:
    s = StepSettings(epochs=cfg.epochs, minibatch_size=cfg.minibatch_size, grad_clip=cfg.grad_clip,
                     micro_batch=micro_size(policy), kl_guard=cfg.kl_guard)
    return optimize(policy, optimizer, batch, lambda part: loss(policy, part, cfg), s, gen, sync)
