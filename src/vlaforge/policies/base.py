"""The Policy protocol every VLA implements, and action normalisation statistics.

    act(obs, deterministic=False) -> ActionOutput(actions (N,C,A), log_prob (N,C,A), value (N,)|None, taken)
    evaluate(obs, taken) -> (log_prob (N,C,A), entropy (N,C,A), value (N,) | None)
    value(obs) -> (N,)
    sft_loss(obs, expert_actions (N,C,A) in env space, mask (N,C) | None) -> (loss, metrics)

Sampling and scoring use one distribution at one temperature (``policy.temperature``).
Parameter groups ``backbone_parameters()``, ``head_parameters()``, ``value_parameters()`` let
recipes freeze the backbone (iRe-VLA's RL stage) or give the critic its own learning rate.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from vlaforge.types import ActionOutput, Observation


@runtime_checkable
class Policy(Protocol):
    chunk_size: int
    action_dim: int
    temperature: float

    def act(self, obs: Observation, deterministic: bool = False) -> ActionOutput: ...

    def evaluate(self, obs: Observation, taken: dict[str, torch.Tensor]): ...

    def value(self, obs: Observation) -> torch.Tensor: ...

    def sft_loss(self, obs: Observation, expert_actions: torch.Tensor, mask: torch.Tensor | None = None): ...


def reads_images(policy) -> bool:
    """False only for the tiny policy's state-only backbone; every other policy looks at the cameras."""
    return getattr(policy.cfg, "backbone", None) != "state"


def check_fits(policy, spec, suite: str) -> None:
    """Raise ValueError when ``policy`` cannot act in envs described by ``spec`` (an ``EnvSpec``)."""
    if (policy.cfg.state_dim, policy.cfg.action_dim) != (spec.state_dim, spec.action_dim):
        raise ValueError(f"policy expects state/action dims {policy.cfg.state_dim}/{policy.cfg.action_dim} but suite "
                         f"'{suite}' has {spec.state_dim}/{spec.action_dim}; pass a checkpoint trained on this suite "
                         "with the same env options (e.g. privileged)")
    if spec.renderer == "none" and reads_images(policy):
        raise ValueError(f"suite '{suite}' runs with render 0 (blank images) but this policy reads images; "
                         "use a state-backbone policy or drop render 0")


def action_stats(actions: np.ndarray, lo_q: float = 1.0, hi_q: float = 99.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension 1st/99th percentiles of demo actions (M, A); degenerate dims get a unit range."""
    a = np.asarray(actions, dtype=np.float64).reshape(-1, actions.shape[-1])
    lo, hi = np.percentile(a, lo_q, axis=0), np.percentile(a, hi_q, axis=0)
    flat = (hi - lo) < 1e-6
    lo[flat], hi[flat] = lo[flat] - 1.0, hi[flat] + 1.0
    return lo.astype(np.float32), hi.astype(np.float32)


def normalize(a: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Env-space actions -> [-1, 1] by the stored percentiles (clipped)."""
    return (2 * (a - lo) / (hi - lo) - 1).clamp(-1, 1)


def denormalize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> env space, then clipped to the env's [-1, 1] box."""
    return ((x + 1) / 2 * (hi - lo) + lo).clamp(-1, 1)
