"""PPO with a critic and GAE (the core of iRe-VLA, VLA-RL and RL4VLA).

Advantages: GAE over decision steps (masked after termination, bootstrapped on truncation),
normalised over the batch. Loss: clipped surrogate at the chosen ratio level + clipped value
loss (+ optional entropy bonus, + optional perception-readout loss). Critic warm-up: the first ``critic_warmup`` iterations step
only the value head, since early advantages from an untrained critic are noise. π_old is the
rollout policy, frozen in the rollout's log-probs (VLA-RL's release overwrote them). The KL guard
(``common.optimize``) measures each step's KL on its minibatch before keeping it: from an SFT start one Adam step
at lr 3e-4 could otherwise leave the trust region at once and wreck the policy (docs/benchmarks.md, "PPO from an
SFT start").

    vlaforge train --algo ppo --suite pointreach --init runs/sft
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from vlaforge.algos.common import LOCAL, PGConfig, StepBatch, clipped_surrogate, flatten_steps, optimize
from vlaforge.core.advantages import gae
from vlaforge.core.losses import entropy_bonus, masked_mean, value_loss
from vlaforge.hooks import Hooks
from vlaforge.types import Rollout


@dataclass
class PPOConfig(PGConfig):
    group_size: int = 1
    """rollouts per initial state (1: every episode its own seed)"""
    kl_guard: float | None = 0.2
    """trust region on the approx KL to the rollout policy, checked before a step is kept: a step that takes its
    minibatch over it is halved (``kl_backtracks`` times) and then undone, ending the update (None = off)"""
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
    critic_warmup: int = 2
    """first iterations that train the value head only"""
    normalize_adv: bool = True
    """normalise advantages over the batch"""
    readout_coef: float = 0.0
    """weight of the perception readout's loss on the rollout frames (tiny policies SFT'd with `--aux`; the
    frames carry sim_state): the encoder keeps learning to localise on every layout the rollouts visit"""


def prepare(rollout: Rollout, cfg: PPOConfig, hooks: Hooks) -> tuple[StepBatch, dict]:
    keep = rollout.alive & rollout.valid.unsqueeze(0)
    adv, ret = gae(rollout.reward, rollout.value, rollout.alive, rollout.terminated, rollout.truncated,
                   rollout.next_value, cfg.gamma, cfg.lam)
    v_t, r_t = rollout.value[keep], ret[keep]
    ev = float(1 - (r_t - v_t).var() / r_t.var().clamp_min(1e-8)) if keep.sum() > 1 else 0.0
    if cfg.normalize_adv and keep.sum() > 1:
        a = adv[keep]
        adv = (adv - a.mean()) / (a.std() + 1e-8)
    # explained variance of the rollout's values against its GAE returns: how informative the advantages were
    return flatten_steps(rollout, keep, adv, ret), {"rollout/value_explained_variance": ev}


def loss(policy, mb: StepBatch, cfg: PPOConfig, warmup: bool = False):
    """Clipped surrogate − ent_coef · entropy + vf_coef · clipped value loss of one (micro-)batch.
    In the critic warm-up only the value term counts, weighted 1 when ``vf_coef`` is 0."""
    logp, ent, v = policy.evaluate(mb.obs(), mb.taken, temperature=cfg.temperature)
    pg, m = clipped_surrogate(logp, mb, cfg.clip, cfg.clip, cfg.level)
    total = torch.zeros(())
    if not warmup:
        total = total + pg
        if cfg.ent_coef:
            eb, em = entropy_bonus(ent.mean(-1), mb.chunk_mask)
            total = total - cfg.ent_coef * eb
            m.update(em)
    vf_coef = (cfg.vf_coef or 1.0) if warmup else cfg.vf_coef
    if vf_coef and v is not None:
        vl, vm = value_loss(v, mb.v_old, mb.returns, torch.ones_like(mb.adv, dtype=torch.bool), cfg.value_clip)
        total = total + vf_coef * vl
        m.update(vm)
    if cfg.readout_coef and not warmup and mb.sim_state is not None:
        rl, rm = policy.readout_loss(mb.obs())
        total = total + cfg.readout_coef * rl
        m.update(rm)
    m["entropy_mean"] = masked_mean(ent.mean(-1), mb.chunk_mask).detach()
    return total, m


def update(policy, optimizer, batch: StepBatch, cfg: PPOConfig, iteration: int, gen=None, sync=LOCAL,
           state=None) -> dict:
    warmup = iteration < cfg.critic_warmup
    out = optimize(policy, optimizer, batch, partial(loss, policy, cfg=cfg, warmup=warmup),
                   cfg.settings(policy, kl_guard=not warmup), gen, sync,
                   trainable=policy.value_parameters() if warmup else None)
    out["train/critic_warmup"] = float(warmup)
    return out
