"""RLOO / LOOP (the algorithm of RIPT-VLA): leave-one-out baseline over K rollouts of one
initial state, no std normalisation, no critic, PPO clipping with LOOP's asymmetric bounds
``[1/(1+ε), 1+ε]``; rollouts with |A| < ``min_abs_adv`` are dropped.

    vlaforge train --algo rloo --suite pointreach --init runs/sft
"""

from __future__ import annotations

from dataclasses import dataclass

from vlaforge.algos.common import PGSettings, flatten_steps, pg_update, trajectory_reward
from vlaforge.core.advantages import broadcast_to_steps, leave_one_out_advantages
from vlaforge.core.losses import loop_bounds
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


def prepare(rollout: Rollout, cfg: RLOOConfig):
    adv_ep = leave_one_out_advantages(trajectory_reward(rollout), rollout.group_id)
    keep_ep = rollout.valid & (adv_ep.abs() >= cfg.min_abs_adv)
    keep = rollout.alive & keep_ep.unsqueeze(0)
    info = {"train/kept_episodes": float(keep_ep.sum()), "train/kept_share": float(keep_ep.float().mean())}
    return flatten_steps(rollout, keep, broadcast_to_steps(adv_ep, rollout.alive)), info


def update(policy, optimizer, batch, cfg: RLOOConfig, iteration: int, gen=None) -> dict:
    lo, hi = loop_bounds(cfg.clip)
    s = PGSettings(cfg.epochs, cfg.minibatch_size, lo, hi, cfg.level, cfg.grad_clip, kl_guard=cfg.kl_guard)
    return pg_update(policy, optimizer, batch, s, gen)
