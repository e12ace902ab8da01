"""Flow-matching action expert (π0-style) with an SDE sampler that has exact log-probs for RL.

Model. The backbone tokens (N, L, D) are pooled by a TokenLearner into a context vector; a
velocity MLP takes [noisy chunk x_t flattened (C*A), sinusoidal embedding of t, context] and
predicts the velocity v (C*A). Convention: t=1 is noise, t=0 is data,

    x_t = t·x1 + (1−t)·x0,   x1 ~ N(0, I),   target velocity v = dx_t/dt = x1 − x0,

so the model's predicted clean action and noise are ``x0 = x_t − t·v`` and ``x1 = x_t + (1−t)·v``.

SFT (``sft_loss``): flow-matching MSE ‖v_θ(x_t, t) − (x1 − x0)‖² with t ~ U(0, 1) (uniform,
not π0's shifted Beta: the action chunks here are short and uniform t trains every step of
the K-step grid equally), averaged over action dims and over the unmasked chunk steps.

Sampling on the uniform grid t_k = 1 − k/K, k = 0..K (δ = 1/K), from t=1 to t=0.

* Deterministic (``deterministic=True``): Euler ODE ``x ← x − δ·v`` started from x1 = 0,
  the mode of the N(0, I) prior, so evaluation rollouts are reproducible without a seed.
* Stochastic: the marginal-preserving SDE of Flow-GRPO / π_RL. Going down in t, the SDE
  ``dx = [−v + (σ_t²/2)·∇log p_t(x)]·d(−t) + σ_t dW`` has the same marginals p_t as the ODE
  (the Fokker–Planck terms of the extra drift and of the diffusion cancel). For the linear
  path with Gaussian noise, Tweedie gives ``∇log p_t(x) = −E[x1 | x_t]/t ≈ −x1̂/t``. One
  Euler–Maruyama step from t to t−δ, with ``x_t − δ·v = (1−t+δ)·x0̂ + (t−δ)·x1̂``, is

      x_{t−δ} ~ N( (1−t+δ)·x0̂ + (t−δ − σ_t²·δ/(2t))·x1̂ ,  σ_t²·δ·I ),
      σ_t = a·sqrt(t/(1−t)),  a = ``noise``.

  σ is singular at t=1: the first step uses σ at the next grid point t_1 (σ_{t_0} := σ_{t_1});
  1−t and t are clamped away from 0 as a further guard. With σ=0 the step mean is exactly the
  Euler ODE step. Each step is a Gaussian with exact log-density, the whole chain is stored
  in ``taken["chain"]`` (N, K+1, C, A) fp32, and since σ does not depend on the parameters the
  ratio of two policies depends on the step means only. The log-density of the start x1
  under N(0, I) is policy-independent and left out.

``logp_steps`` chooses which denoising steps are scored (summed, element-wise (N, C, A)):
``"all"`` scores every step of an all-SDE chain; ``"one"`` is π_RL's mixed ODE–SDE sampler:
one step per sample, drawn uniformly (``taken["step"]`` (N,) long), is stochastic and scored,
all other steps are ODE steps (deterministic given their input, not scored).

Temperature multiplies the noise level a (hence σ_t, in the mean's score term and in the
std alike, so the sampler stays marginal-preserving); the start stays N(0, I). Sampling and
scoring use the same temperature; the default 1 reproduces the sampling log-probs.

With an effective noise level of 0 the sampler is the ODE: ``sample`` returns log_prob = 0
(a point mass has no density) and ``evaluate`` refuses. A deterministic sample with a>0 is
scored under the SDE kernels (finite, consistent with ``evaluate``). Entropy is the Gaussian
entropy of the scored steps; it does not depend on the parameters (σ is fixed), so an
entropy bonus has no gradient with this head. All SDE maths is done in fp32.
The action returned is the chain's last element clamped to [-1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlaforge.core.losses import mse_loss
from vlaforge.policies.heads.common import TokenLearner, mlp

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_EPS = 1e-6


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x; mean, std²)."""
    return -0.5 * ((x - mean) / std) ** 2 - std.log() - _LOG_SQRT_2PI


def sde_step(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, delta: float, sigma: torch.Tensor):
    """Mean and std of one denoising step from t to t−δ (see the module docstring).

    x, v: (M, ...) ; t, sigma: broadcastable to x. Returns (mean, std), fp32.
    """
    x, v, t, sigma = x.float(), v.float(), t.float(), sigma.float()
    x0 = x - t * v
    x1 = x + (1 - t) * v
    mean = (1 - t + delta) * x0 + (t - delta - sigma ** 2 * delta / (2 * t.clamp_min(_EPS))) * x1
    std = sigma * math.sqrt(delta)
    return mean, std.expand_as(mean)


class FlowHead(nn.Module):
    """π0-style flow-matching action head; see the module docstring."""

    def __init__(self, dim: int, chunk: int, action_dim: int, num_queries: int = 4, hidden: int = 256,
                 steps: int = 5, noise: float = 0.5, logp_steps: str = "all", time_dim: int = 32,
                 **_):
        super().__init__()
        if steps < 2:
            raise ValueError(f"flow head needs steps >= 2 (got {steps}): with one step σ(t=1) is undefined")
        if noise < 0:
            raise ValueError(f"flow noise level must be >= 0 (got {noise})")
        if logp_steps not in ("all", "one"):
            raise ValueError(f"logp_steps must be 'all' or 'one' (got '{logp_steps}')")
        if time_dim % 2:
            raise ValueError("time_dim must be even")
        self.chunk, self.action_dim = chunk, action_dim
        self.steps, self.noise, self.logp_steps, self.time_dim = steps, float(noise), logp_steps, time_dim
        self.pool = TokenLearner(dim, num_queries)
        self.velocity = mlp(chunk * action_dim + time_dim + num_queries * dim, hidden, chunk * action_dim,
                            layers=3)

    # -- pieces ------------------------------------------------------------------------------
    def grid(self, noise: float, device=None) -> tuple[torch.Tensor, float, torch.Tensor]:
        """t (K+1,), δ, σ (K,) for noise level ``noise`` (σ at t=1 taken at the next grid point)."""
        k = self.steps
        t = 1 - torch.arange(k + 1, dtype=torch.float32, device=device) / k
        ts = t[:-1].clone()
        ts[0] = t[1]
        ts = ts.clamp(0.0, 1 - _EPS)
        sigma = noise * (ts / (1 - ts)).sqrt()
        return t, 1.0 / k, sigma

    def context(self, feats: torch.Tensor) -> torch.Tensor:
        return self.pool(feats.to(self.pool.queries.dtype))

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """Sinusoidal features of t ∈ [0, 1], periods from 4e-3 to 4 (as in π0)."""
        half = self.time_dim // 2
        period = 4e-3 * (4 / 4e-3) ** torch.linspace(0, 1, half, device=t.device)
        ang = t.float()[:, None] * (2 * math.pi / period)
        return torch.cat([ang.sin(), ang.cos()], -1)

    def predict_velocity(self, ctx: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """ctx (M, Q*D), x (M, C, A), t (M,) -> v (M, C, A) in fp32."""
        dt = ctx.dtype
        inp = torch.cat([x.flatten(1).to(dt), self.time_embedding(t).to(dt), ctx], -1)
        return self.velocity(inp).float().view(x.shape[0], self.chunk, self.action_dim)

    def rollout(self, ctx: torch.Tensor, x1: torch.Tensor, noise: float,
                stochastic: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Integrate from x1 (N, C, A) at t=1 down to t=0.

        ``stochastic`` (N, K) bool marks the steps that take an SDE step at level ``noise``
        (None: all); the others are ODE steps. Returns chain (N, K+1, C, A) and the velocities
        (N, K, C, A) predicted along it, both fp32.
        """
        n = x1.shape[0]
        t, delta, sigma = self.grid(noise, x1.device)
        x = x1.float()
        chain, vels = [x], []
        for k in range(self.steps):
            v = self.predict_velocity(ctx, x, t[k].expand(n))
            s = sigma[k].expand(n) if stochastic is None else sigma[k] * stochastic[:, k].float()
            s = s.view(n, 1, 1)
            mean, std = sde_step(x, v, t[k], delta, s)
            x = mean + std * torch.randn_like(mean) if noise > 0 else mean
            chain.append(x)
            vels.append(v)
        return torch.stack(chain, 1), torch.stack(vels, 1)

    def _score(self, chain, vels, step, noise):
        """Log-prob and entropy (N, C, A) of the scored steps of ``chain`` (N, K+1, C, A).

        ``step`` None: all steps, ``vels`` (N, K, C, A). ``step`` (N,): that step only, ``vels`` (N, C, A).
        """
        t, delta, sigma = self.grid(noise, chain.device)
        if step is None:  # all steps
            shape = (1, self.steps, 1, 1)
            mean, std = sde_step(chain[:, :-1], vels, t[:-1].view(shape), delta, sigma.view(shape))
            lp = gaussian_log_prob(chain[:, 1:], mean, std).sum(1)
            ent = (0.5 + _LOG_SQRT_2PI + std.log()).sum(1)
            return lp, ent
        idx = torch.arange(chain.shape[0], device=chain.device)
        shape = (-1, 1, 1)
        mean, std = sde_step(chain[idx, step], vels, t[step].view(shape), delta, sigma[step].view(shape))
        return gaussian_log_prob(chain[idx, step + 1], mean, std), 0.5 + _LOG_SQRT_2PI + std.log()

    # -- head interface ----------------------------------------------------------------------
    def sample(self, feats, deterministic: bool = False, temperature: float = 1.0, x1: torch.Tensor | None = None):
        """``x1`` (N, C, A): start the ODE from this initial noise (DSRL's steered noise) instead of N(0, I) or
        its mode; the chain is then deterministic and the log-prob zeros (the noise policy scores w)."""
        n = feats.shape[0]
        noise = self.noise * float(temperature)
        ctx = self.context(feats)
        shape = (n, self.chunk, self.action_dim)
        if x1 is not None:
            chain, _ = self.rollout(ctx, x1, 0.0)
            return chain[:, -1].clamp(-1, 1), torch.zeros(shape, device=feats.device), {"chain": chain}
        step = None
        stochastic = None
        if self.logp_steps == "one":
            step = torch.randint(0, self.steps, (n,), device=feats.device)
            stochastic = torch.nn.functional.one_hot(step, self.steps).bool()
        if deterministic:
            x1 = torch.zeros(shape, device=feats.device)
            chain, vels = self.rollout(ctx, x1, 0.0)
        else:
            x1 = torch.randn(shape, device=feats.device)
            chain, vels = self.rollout(ctx, x1, noise, stochastic)
        if noise > 0:
            if step is not None:
                vels = vels[torch.arange(n, device=feats.device), step]
            log_prob, _ = self._score(chain, vels, step, noise)
        else:
            log_prob = torch.zeros(shape, device=feats.device)
        taken = {"chain": chain}
        if step is not None:
            taken["step"] = step
        return chain[:, -1].clamp(-1, 1), log_prob, taken

    def evaluate(self, feats, taken, temperature: float = 1.0):
        noise = self.noise * float(temperature)
        if noise <= 0:
            raise ValueError("the flow head's sampler is an ODE at noise level 0 and has no log-prob; "
                             "set flow_noise > 0 (and temperature > 0) for RL")
        chain = taken["chain"].float()
        n, k1 = chain.shape[:2]
        if k1 != self.steps + 1:
            raise ValueError(f"stored chain has {k1 - 1} steps but the head uses {self.steps}")
        ctx = self.context(feats)
        t, _, _ = self.grid(noise, chain.device)
        if self.logp_steps == "one":
            if "step" not in taken:
                raise ValueError("logp_steps='one' needs taken['step'] from sample()")
            step = taken["step"].long()
            x = chain[torch.arange(n, device=chain.device), step]
            vels = self.predict_velocity(ctx, x, t[step])
            return self._score(chain, vels, step, noise)
        k = self.steps
        x = chain[:, :-1].flatten(0, 1)  # (N*K, C, A)
        tt = t[:-1].repeat(n)
        vels = self.predict_velocity(ctx.repeat_interleave(k, 0), x, tt)
        vels = vels.view(n, k, self.chunk, self.action_dim)
        return self._score(chain, vels, None, noise)

    def sft_loss(self, feats, target, mask=None):
        """Flow-matching MSE, t ~ U(0, 1), one (t, noise) draw per example."""
        x0 = target.float()
        n = x0.shape[0]
        t = torch.rand(n, device=x0.device)
        x1 = torch.randn_like(x0)
        tb = t.view(n, 1, 1)
        xt = tb * x1 + (1 - tb) * x0
        v = self.predict_velocity(self.context(feats), xt, t)
        loss, m = mse_loss(v, x1 - x0, mask)
        return loss, {"sft/flow_mse": m["mse"]}
