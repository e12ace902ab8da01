"""PPO with a critic and GAE (the core of iRe-VLA, VLA-RL and RL4VLA).

Advantages: GAE over decision steps (masked after termination, bootstrapped on truncation),
normalised over the batch. Loss: clipped surrogate at the chosen ratio level + clipped value
loss (+ optional entropy bonus). Critic warm-up: the first ``critic_warmup`` iterations step
only the value head, since early advantages from an untrained critic are noise. π_old is the
rollout policy, frozen in the rollout's log-probs (VLA-RL's release overwrote them).

    vlaforge train --algo ppo --suite pointreach --init runs/sft
"""

from __future__ import annotations

from dataclasses import dataclass

from vlaforge.algos.common import PGSettings, flatten_steps, pg_update
from vlaforge.core.advantages import gae
from vlaforge.types import Rollout


@dataclass
class PPOConfig:
    gamma: float = 0.99
    """discount per decision step"""
    lam: float = 0.95
    """GAE lambda"""
    clip: float = 0.2
    """surrogate clip epsilon (symmetric)"""
    value_clip: float | None = 0.2
    """value-loss clip around the old value (None = unclipped)"""
    vf_coef: float = 0.5
    """value loss weight"""
    ent_coef: float = 0.0
    """entropy bonus weight"""
    epochs: int = 2
    """passes over each batch"""
    minibatch_size: int = 256
    """decision steps per optimizer step"""
    grad_clip: float = 1.0
    """max gradient norm"""
    level: str = "action"
    """ratio level: token | action | chunk"""
    critic_warmup: int = 2
    """first iterations that train the value head only"""
    kl_guard: float | None = 0.2
    """skip the rest of an update once a minibatch's approx KL exceeds this (None = off)"""
    normalize_adv: bool = True
    """normalise advantages over the batch"""
    group_size: int = 1
    """rollouts per initial state (1: every episode its own seed)"""
    temperature: float = 1.0
    """sampling temperature (scoring uses the same)"""


def prepare(rollout: Rollout, cfg: PPOConfig):
    keep = rollout.alive & rollout.valid.unsqueeze(0)
    adv, ret = gae(rollout.reward, rollout.value, rollout.alive, rollout.terminated, rollout.truncated,
                   rollout.next_value, cfg.gamma, cfg.lam)
    if cfg.normalize_adv and keep.sum() > 1:
        a = adv[keep]
        adv = (adv - a.mean()) / (a.std() + 1e-8)
    return flatten_steps(rollout, keep, adv, ret), {}


def update(policy, optimizer, batch, cfg: PPOConfig, iteration: int, gen=None) -> dict:
    s = PGSettings(cfg.epochs, cfg.minibatch_size, cfg.clip, cfg.clip, cfg.level, cfg.grad_clip, cfg.ent_coef,
                   cfg.vf_coef, cfg.value_clip, cfg.kl_guard, value_only=iteration < cfg.critic_warmup)
    out = pg_update(policy, optimizer, batch, s, gen)
    out["train/critic_warmup"] = float(s.value_only)
    return out
