"""The RL side of a released flow-matching VLA (SmolVLA, π0): SDE sampling with exact step log-probs over a
network that denoises a padded action chunk, given a prefix computed once per observation.

A family supplies the network through three seams (subclass methods):

* ``_prefix(obs) -> (h (N, Lp, D), cache, pad (N, Lp) bool)``: the VLM prefix run once (its final hidden states
  ``h`` feed the value head; ``cache`` is whatever the velocity needs: per-layer keys/values, a state token);
* ``_velocity(cache, pad, x, t) -> v (M, chunk_size, max_action_dim)`` fp32, for noisy chunks ``x`` at times
  ``t (M,)``, the cache's rows matching ``x``'s;
* ``_repeat(cache, pad, k) -> (cache, pad)``: every prefix row repeated ``k`` times (row-major), so that
  ``evaluate`` scores the K steps of a stored chain in one batched pass.

and sets, in ``__init__``: ``cfg`` (with ``flow_noise``, ``num_steps``, ``autocast``), ``chunk_size`` /
``action_dim`` (the exposed block), ``full_chunk`` = (chunk_size, max_action_dim) of the network, the buffers
``state_shift``/``state_scale``/``action_shift``/``action_scale`` and ``block`` (bool (chunk, max_A): the exposed,
stochastic entries), ``value_net`` (or None), ``_backbone``/``_head`` parameter lists and ``_lora_layers``.

Maths (``heads/flow.py``'s conventions: x_t = t·x1 + (1−t)·x0, v = x1 − x0, t from 1 to 0 on a K-step uniform
grid). Sampling is the marginal-preserving SDE with noise level a = ``flow_noise`` × temperature,
σ_t = a·sqrt(t/(1−t)) (σ at t=1 taken at the next grid point); only the exposed block takes stochastic steps and
is scored, element-wise (N, C, A) summed over the K steps; padded dims and the unexecuted tail follow the ODE
(deterministic given the stored chain ``taken["chain"]`` (N, K+1, chunk, max_A)). Deterministic acting is the
Euler ODE from x1 = 0 (the prior's mode). ``act(obs, deterministic, noise=w)`` starts the chain from ``w``
(DSRL-style steering); with a DSRL noise policy attached (``attach_noise_policy``, ``algos/dsrl.py``) ``act`` draws
``w`` from it (condition: the pooled prefix hidden states and the normalised state) and integrates the ODE from
``w``, as the tiny VLA does. SFT: the flow-matching MSE with t ~ Beta(1.5, 1)·0.999 + 0.001 (openpi/LeRobot), over the
exposed, executed entries.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from vlaforge.core.losses import mse_loss
from vlaforge.errors import UsageError
from vlaforge.policies.base import Policy
from vlaforge.policies.heads.flow import gaussian_log_prob, sde_step
from vlaforge.policies.heads.noise import NoisePolicy
from vlaforge.policies.hf.offload import CPUOffloadAdamW
from vlaforge.policies.options import autocast_context
from vlaforge.types import ActionOutput, Observation

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_EPS = 1e-6


def flow_grid(steps: int, noise: float, device=None):
    """t (K+1,), δ, σ (K,) of ``heads/flow.py``'s sampler (σ at t=1 taken at the next grid point)."""
    t = 1 - torch.arange(steps + 1, dtype=torch.float32, device=device) / steps
    ts = t[:-1].clone()
    ts[0] = t[1]
    ts = ts.clamp(0.0, 1 - _EPS)
    return t, 1.0 / steps, noise * (ts / (1 - ts)).sqrt()


@dataclass
class NoiseSteering:
    """The DSRL noise policy a flow VLA's config records (set by ``--algo dsrl``, never a flag), so that a saved
    policy acts through it again."""

    dsrl_bound: float = 0.0
    """DSRL noise bound b of the attached noise policy (``heads/noise.py``); 0 = none"""
    dsrl_hidden: int = 256
    """hidden width of the attached noise policy"""


class FlowChunkPolicy(nn.Module, Policy):
    """See the module docstring: the Policy protocol over a family's ``_prefix`` / ``_velocity`` / ``_repeat``.
    A subclass also sets ``context_dim`` (the prefix width, the value head's and noise policy's input) and calls
    ``_attach_saved_noise_policy()`` at the end of ``__init__``."""

    family_label = "this flow VLA"
    lora_default_targets = ""
    """the family's module regex for ``--policy.lora-targets all-linear`` (its expert's and projections' linears)"""

    def __init__(self):
        super().__init__()
        self.noise_policy: NoisePolicy | None = None

    def _inject_lora(self) -> None:
        """LoRA adapters (``--policy.lora-rank``) on the family's targets; every base weight frozen."""
        import peft
        from peft.tuners.tuners_utils import BaseTunerLayer

        from vlaforge.policies.options import lora_target_modules

        c = self.cfg
        targets = self.lora_default_targets if c.lora_targets == "all-linear" else lora_target_modules(c.lora_targets)
        lcfg = peft.LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                               target_modules=targets)
        self.model.requires_grad_(False)
        try:
            peft.inject_adapter_in_model(lcfg, self.model)
        except ValueError as e:
            raise ValueError(f"--policy.lora-targets '{c.lora_targets}' match no module of {self.family_label}: "
                             f"{str(e).splitlines()[0]}") from None
        self._lora_layers = [m for m in self.model.modules() if isinstance(m, BaseTunerLayer)]
        for n, p in self.model.named_parameters():
            p.requires_grad_("lora_" in n)

    # -- the family's seams ----------------------------------------------------------------------
    def _prefix(self, obs: Observation):
        raise NotImplementedError

    def _velocity(self, cache, pad: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _repeat(self, cache, pad: torch.Tensor, k: int):
        raise NotImplementedError

    # -- parameter groups & statistics --------------------------------------------------------
    def backbone_parameters(self):
        return list(self._backbone)

    def head_parameters(self):
        return list(self._head)

    def value_parameters(self):
        return list(self.value_net.parameters()) if self.value_net is not None else []

    def set_action_stats(self, lo, hi) -> None:
        """Percentile statistics from vlaforge demos: [lo, hi] maps to [-1, 1] (LeRobot's MIN_MAX form)."""
        dev = self.action_shift.device  # statistics made where the buffers live
        lo, hi = (torch.as_tensor(x, dtype=torch.float32, device=dev) for x in (lo, hi))
        self.action_shift.copy_((lo + hi) / 2)
        self.action_scale.copy_((hi - lo).clamp_min(1e-8) / 2)

    def set_stats(self, state: tuple[torch.Tensor, torch.Tensor], action: tuple[torch.Tensor, torch.Tensor]) -> None:
        """(shift, scale) pairs: normalised = (x - shift) / scale."""
        for (a, b), (s, c) in ((state, (self.state_shift, self.state_scale)),
                               (action, (self.action_shift, self.action_scale))):
            s.copy_(torch.as_tensor(a, dtype=torch.float32, device=s.device))
            c.copy_(torch.as_tensor(b, dtype=torch.float32, device=c.device))

    @contextlib.contextmanager
    def reference(self):
        """The reference policy: the same weights with the LoRA adapters disabled."""
        if not self._lora_layers:
            raise ValueError(f"the reference policy is {self.family_label} with LoRA adapters disabled; build it with "
                             "--policy.lora-rank > 0 (or use the rollout's log-probs as reference)")
        for m in self._lora_layers:
            m.enable_adapters(False)
        try:
            yield self
        finally:
            for m in self._lora_layers:
                m.enable_adapters(True)

    def optimizer_class(self):
        if self.cfg.optimizer_on_cpu:
            return CPUOffloadAdamW
        return torch.optim.AdamW

    # -- DSRL ---------------------------------------------------------------------------------------
    def _attach_saved_noise_policy(self) -> None:
        if self.cfg.dsrl_bound > 0:
            self.attach_noise_policy(self.cfg.dsrl_bound, self.cfg.dsrl_hidden)

    def attach_noise_policy(self, bound: float, hidden: int = 256) -> None:
        """Add a fresh DSRL noise policy over the exposed block's initial noise (``act`` then steers through it);
        its parameters start frozen: only DSRL's own optimizer trains them."""
        self.cfg.dsrl_bound, self.cfg.dsrl_hidden = float(bound), int(hidden)
        self.noise_policy = NoisePolicy(self.context_dim + self.cfg.state_dim, self.chunk_size, self.action_dim,
                                        bound, hidden)
        self.noise_policy.to(self.state_shift.device).requires_grad_(False)

    def _condition(self, obs: Observation, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        m = pad.unsqueeze(-1).float()
        pooled = (h.float() * m).sum(1) / m.sum(1).clamp_min(1)
        state = torch.as_tensor(obs.state, dtype=torch.float32, device=self.state_shift.device)
        return torch.cat([pooled, (state - self.state_shift) / self.state_scale], -1)

    @torch.no_grad()
    def noise_condition(self, obs: Observation) -> torch.Tensor:
        """DSRL's noise-policy input (N, context_dim + S): the masked mean of the final prefix hidden states and the
        normalised state."""
        h, _, pad = self._prefix(obs)
        return self._condition(obs, h, pad)

    # -- shared pieces ----------------------------------------------------------------------------
    def _autocast(self):
        return autocast_context(self.cfg.autocast, self.state_shift.device)

    def _norm_state(self, obs: Observation, max_dim: int) -> torch.Tensor:
        """obs.state (N, S) -> normalised, zero-padded (N, max_dim) fp32 on the policy's device."""
        state = torch.as_tensor(obs.state, dtype=torch.float32, device=self.state_shift.device)
        s = (state - self.state_shift) / self.state_scale
        return s if s.shape[-1] >= max_dim else torch.nn.functional.pad(s, (0, max_dim - s.shape[-1]))

    def _value(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor | None:
        if self.value_net is None:
            return None
        m = pad.unsqueeze(-1).float()
        pooled = (h.float() * m).sum(1) / m.sum(1).clamp_min(1)
        return self.value_net(pooled)[:, 0]

    def _env_actions(self, x: torch.Tensor) -> torch.Tensor:
        """normalised chunk (N, chunk, max_A) -> env actions (N, C, A) clipped to [-1, 1]"""
        a = x[:, :self.chunk_size, :self.action_dim]
        return (a * self.action_scale + self.action_shift).clamp(-1, 1)

    def _score(self, chain: torch.Tensor, vels: torch.Tensor, noise: float):
        """Log-prob and entropy (N, C, A) of the exposed block's steps of ``chain`` (N, K+1, ch, maxA) given
        the velocities ``vels`` (N, K, ch, maxA) along it."""
        K = vels.shape[1]
        t, delta, sigma = flow_grid(K, noise, chain.device)
        shape = (1, K, 1, 1)
        C, A = self.chunk_size, self.action_dim
        mean, std = sde_step(chain[:, :-1, :C, :A], vels[..., :C, :A], t[:-1].view(shape), delta, sigma.view(shape))
        lp = gaussian_log_prob(chain[:, 1:, :C, :A], mean, std).sum(1)
        return lp, (0.5 + _LOG_SQRT_2PI + std.log()).sum(1)

    def _start(self, n: int, noise: torch.Tensor | None, deterministic: bool) -> torch.Tensor:
        dev = self.state_shift.device
        full = (n, *self.block.shape)
        if noise is None:
            return torch.zeros(full, device=dev) if deterministic else torch.randn(full, device=dev)
        w = torch.as_tensor(noise, dtype=torch.float32, device=dev)
        if tuple(w.shape) == full:
            return w
        if tuple(w.shape) != (n, self.chunk_size, self.action_dim):
            raise ValueError(f"initial noise must be (N, C, A)={(n, self.chunk_size, self.action_dim)} or {full}; "
                             f"got {tuple(w.shape)}")
        x = torch.zeros(full, device=dev)
        x[:, :self.chunk_size, :self.action_dim] = w
        return x

    # -- Policy protocol -----------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Observation, deterministic: bool = False, noise: torch.Tensor | None = None,
            temperature: float = 1.0) -> ActionOutput:
        n = len(obs)
        h, cache, pad = self._prefix(obs)
        if self.noise_policy is not None:  # DSRL: the noise policy picks w, the ODE maps it to the action
            w, log_prob = self.noise_policy.rsample(self._condition(obs, h, pad), deterministic)
            x = self._start(n, w, True)
            t, delta, _ = flow_grid(self.cfg.num_steps, 0.0, pad.device)
            for k in range(self.cfg.num_steps):
                x = x - delta * self._velocity(cache, pad, x, t[k].expand(n))
            return ActionOutput(self._env_actions(x), log_prob, self._value(h, pad), {"w": w})
        a = self.cfg.flow_noise * float(temperature)
        K = self.cfg.num_steps
        t, delta, sigma = flow_grid(K, a, pad.device)
        if deterministic:
            sigma = torch.zeros_like(sigma)
        x = self._start(n, noise, deterministic)
        chain, vels = [x], []
        block = self.block.float()
        for k in range(K):
            v = self._velocity(cache, pad, x, t[k].expand(n))
            mean, std = sde_step(x, v, t[k], delta, sigma[k] * block)
            x = mean + std * torch.randn_like(mean) if sigma[k] > 0 else mean
            chain.append(x)
            vels.append(v)
        chain, vels = torch.stack(chain, 1), torch.stack(vels, 1)
        if a > 0:
            log_prob, _ = self._score(chain, vels, a)
        else:
            log_prob = torch.zeros(n, self.chunk_size, self.action_dim, device=pad.device)
        return ActionOutput(self._env_actions(chain[:, -1]), log_prob, self._value(h, pad), {"chain": chain})

    def evaluate(self, obs: Observation, taken: dict[str, torch.Tensor], temperature: float = 1.0):
        if self.noise_policy is not None:  # act() sampled w, not the SDE chain: these log-probs would not match
            raise UsageError("this policy acts through a DSRL noise policy (dsrl_bound > 0): train it with --algo dsrl, "
                             "or start the other algorithms from the checkpoint it was trained from")
        a = self.cfg.flow_noise * float(temperature)
        if a <= 0:
            raise ValueError(f"{self.family_label}'s sampler is an ODE at noise level 0 and has no log-prob; set "
                             "--policy.flow-noise > 0 (and temperature > 0) for RL")
        chain = taken["chain"].to(self.state_shift.device, torch.float32)
        n, k1 = chain.shape[:2]
        K = self.cfg.num_steps
        if k1 != K + 1 or tuple(chain.shape[2:]) != tuple(self.block.shape):
            raise ValueError(f"stored chain {tuple(chain.shape)} does not match this policy "
                             f"({K} steps, chunk {tuple(self.block.shape)})")
        h, cache, pad = self._prefix(obs)
        t, _, _ = flow_grid(K, a, chain.device)
        cache_r, pad_r = self._repeat(cache, pad, K)
        v = self._velocity(cache_r, pad_r, chain[:, :-1].flatten(0, 1), t[:-1].repeat(n))
        lp, ent = self._score(chain, v.view(n, K, *chain.shape[2:]), a)
        return lp, ent, self._value(h, pad)

    def value(self, obs: Observation) -> torch.Tensor:
        if self.value_net is None:
            raise ValueError("this policy has no value head (built with value_head=False)")
        h, _, pad = self._prefix(obs)
        return self._value(h, pad)

    def sft_loss(self, obs: Observation, expert_actions: torch.Tensor, mask: torch.Tensor | None = None):
        dev = self.state_shift.device
        target = (torch.as_tensor(expert_actions, dtype=torch.float32, device=dev) - self.action_shift) / self.action_scale
        n, C, A = target.shape
        if (C, A) != (self.chunk_size, self.action_dim):
            raise ValueError(f"expert actions {(C, A)} do not match the policy's chunk/action dims "
                             f"{(self.chunk_size, self.action_dim)}")
        x0 = torch.zeros(n, *self.block.shape, device=dev)
        x0[:, :C, :A] = target
        t = torch.distributions.Beta(1.5, 1.0).sample((n,)).to(dev) * 0.999 + 0.001
        x1 = torch.randn_like(x0)
        tb = t.view(n, 1, 1)
        h, cache, pad = self._prefix(obs)
        v = self._velocity(cache, pad, tb * x1 + (1 - tb) * x0, t)
        loss, m = mse_loss(v[:, :C, :A], (x1 - x0)[:, :C, :A], mask)
        return loss, {"sft/flow_mse": m["mse"]}
