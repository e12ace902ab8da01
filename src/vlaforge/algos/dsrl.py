"""DSRL: steer a frozen flow-head VLA by learning, with SAC, which initial noise its sampler starts from.

    vlaforge train --algo dsrl --suite metaworld --tasks reach-v3 --init runs/sft_flow --dsrl.critic privileged

Wagenmaker et al. 2025, "Steering Your Diffusion Policy with Latent Space Reinforcement Learning". The flow
head maps (s, w) to an action chunk by integrating its ODE from ``x1 = w`` (``FlowHead.sample(x1=w)``); the
VLA is frozen and only a small noise policy ``π_w(w | c)`` is trained (``policies/heads/noise.py``:
tanh-Gaussian, ``w = b · tanh(u)``, ``b`` = ``bound``), with ``c`` = the frozen VLA's pooled head context +
proprioception, computed once per transition without gradient and *stored* in the replay buffer (no images:
~2 KB per transition for the tiny VLA at chunk 4, against ~25 KB for an image pair).

Choice: this is the paper's plain noise-space SAC ("DSRL-SAC"): one critic ensemble Q(x, w) on the noise
action, trained on the transitions the noise policy generated; not DSRL-NA (which learns Q(s, a) on real
actions, so offline data and demos count, and distils it into Q(s, w)). Consequently ``--dsrl.demos`` does
not exist: expert actions have no noise w. Critic input x (``critic``): ``features`` = c itself (the default),
``privileged`` = ``sim_state`` + proprioception, ``state`` = proprioception. The critics see ``w / b`` (the
unit box); log-probs are those of ``w / b``; the target entropy is −C·A.

Saved result: the noise policy is part of the *policy* (``TinyConfig.dsrl_bound``; SmolVLA's and π0's
``dsrl_bound``, ``heads/flow_chunk.py``), so ``final/`` and every
checkpoint act through it and ``vlaforge eval`` needs no flag; its deterministic action is w = b·tanh(mean).
Before training (last layer zero) that is w = 0, the base policy's own deterministic action. The critics,
α, the optimizers and the buffer live in ``DSRLState`` (full-state checkpoint, exact resume). The training
loop's optimizer never steps (the VLA is frozen; ``--lr`` is unused), the noise policy's own Adam uses
``actor_lr``. Local runs only (not ``--ray``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlaforge.algos.common import LOCAL
from vlaforge.algos.sac import SoftACConfig, SoftACState, TransitionBatch, run_updates, transitions
from vlaforge.device import module_device
from vlaforge.errors import UsageError
from vlaforge.hooks import Hooks
from vlaforge.policies.heads.flow_chunk import FlowChunkPolicy
from vlaforge.policies.tiny import TinyVLA
from vlaforge.types import Observation, Rollout


@dataclass
class DSRLConfig(SoftACConfig):
    """DSRL's noise-space SAC; the shared soft actor-critic options are ``SoftACConfig``'s (the actor is the
    noise policy, with its own Adam at ``actor_lr``)."""

    critic: str = "features"
    """critic input: features (the frozen VLA's pooled context + proprioception, as the noise policy reads) |
    privileged (sim_state + proprioception) | state (proprioception)"""
    bound: float = 1.5
    """noise bound b: w = b * tanh(u) (a standard normal's |x1| is mostly below 2.5)"""
    policy_hidden: int = 256
    """hidden width of a fresh noise policy"""
    actor_lr: float = 3e-4
    """noise-policy learning rate (Adam)"""


class DSRLState(SoftACState):
    """Critics, α, the noise policy's optimizer and the feature-only replay buffer."""

    flag = "dsrl"

    def __init__(self, policy, cfg: DSRLConfig):
        flow_vla = isinstance(policy, FlowChunkPolicy)  # SmolVLA, π0: the released flow VLAs
        if not flow_vla and (not isinstance(policy, TinyVLA) or policy.cfg.head != "flow"):
            raise UsageError("--algo dsrl steers a flow head; use --policy tiny --head flow, --init a flow-head "
                             "checkpoint, or --policy smolvla / pi0")
        if policy.noise_policy is None:
            policy.attach_noise_policy(cfg.bound, cfg.policy_hidden)
        super().__init__(cfg, policy.chunk_size * policy.action_dim, module_device(policy))
        self.images = False
        policy.requires_grad_(False)  # the VLA stays frozen
        policy.noise_policy.requires_grad_(True)
        self.actor_opt = torch.optim.Adam(policy.noise_policy.parameters(), lr=cfg.actor_lr)

    def extra_state(self):
        return {"actor_opt": self.actor_opt.state_dict()}

    def load_extra_state(self, d) -> None:
        self.actor_opt.load_state_dict(d["actor_opt"])


def init_state(policy, cfg: DSRLConfig, spec=None) -> DSRLState:
    return DSRLState(policy, cfg)


def prepare(rollout: Rollout, cfg: DSRLConfig, hooks: Hooks) -> tuple[TransitionBatch, dict]:
    return transitions(rollout, taken=("w",))


@torch.no_grad()
def conditions(policy, batch: TransitionBatch, prefix: str, chunk: int = 256) -> torch.Tensor:
    """The frozen VLA's noise-policy input for s or s' of every row, (B, Q·D + S), in chunks of rows."""
    f = batch.fields
    out = []
    for i in range(0, len(batch), chunk):
        sl = slice(i, i + chunk)
        obs = Observation(batch.frames[f[prefix + "frame"][sl]], f[prefix + "state"][sl], batch.instructions[sl],
                          f["task"][sl])
        out.append(policy.noise_condition(obs))
    return torch.cat(out) if out else torch.zeros(0, device=module_device(policy))


def buffer_fields(policy, batch: TransitionBatch, state: DSRLState) -> dict[str, torch.Tensor]:
    f = batch.fields
    policy.eval()
    out = {"cond": conditions(policy, batch, ""), "next_cond": conditions(policy, batch, "next_"),
           "action": f["w"].flatten(1).float() / policy.noise_policy.bound, "reward": f["reward"], "done": f["done"],
           "state": f["state"], "next_state": f["next_state"]}
    if state.cfg.critic == "privileged":
        if "sim" not in f:
            raise UsageError("--dsrl.critic privileged needs the suite's sim_state; this suite has none")
        out["sim"], out["next_sim"] = f["sim"], f["next_sim"]
    return out


def critic_input(mb: dict, state: DSRLState, prefix: str = "") -> torch.Tensor:
    mode = state.cfg.critic
    if mode == "features":
        return mb[prefix + "cond"]
    if mode == "privileged":
        return torch.cat([mb[prefix + "sim"], mb[prefix + "state"]], -1)
    return mb[prefix + "state"]


def update(policy, optimizer, batch: TransitionBatch, cfg: DSRLConfig, iteration: int, gen=None, sync=LOCAL,
           state: DSRLState | None = None) -> dict:
    if state is None:
        raise ValueError("DSRL keeps a replay buffer: call update with the state from init_state")
    if "w" not in batch.fields:
        raise ValueError("the rollout has no noise record taken['w']: collect with the DSRL policy")
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    state.online.add(buffer_fields(policy, batch, state))
    if state.q is None:
        state.build_critics(critic_input(state.online.sample(2, gen), state).shape[-1])
    noise = policy.noise_policy
    noise.train()

    def sample(mb, prefix):
        w, lp = noise.rsample(mb[prefix + "cond"], generator=gen)
        return w.flatten(1) / noise.bound, lp.flatten(1).sum(-1)

    return run_updates(state, max(1, int(round(cfg.utd * len(batch)))), iteration < cfg.critic_warmup, gen, sync,
                       lambda mb, prefix: critic_input(mb, state, prefix), sample, list(noise.parameters()),
                       state.actor_opt)
