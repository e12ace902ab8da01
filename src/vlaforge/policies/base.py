"""The Policy base every VLA derives from (next to ``nn.Module``), and action normalisation statistics.

``Policy`` lists everything the trainer, the collector, the algorithms and the recipes touch on a policy;
what has a sensible default has it here, so callers never probe with ``hasattr``:

    act(obs, deterministic=False, temperature=1.0) -> ActionOutput(actions (N,C,A), log_prob (N,C,A), value (N,)|None, taken)
    evaluate(obs, taken, temperature=1.0) -> (log_prob (N,C,A), entropy (N,C,A), value (N,) | None)
    value(obs) -> (N,)
    sft_loss(obs, expert_actions (N,C,A) in env space, mask (N,C) | None) -> (loss, metrics)

Sampling and scoring use one distribution at one temperature, passed in by the caller (the algorithm's
``temperature`` while training, 1 for evaluations); a policy stores none.
Parameter groups ``backbone_parameters()``, ``head_parameters()``, ``value_parameters()`` let
recipes freeze the backbone (iRe-VLA's RL stage) or give the critic its own learning rate.
"""

from __future__ import annotations

import numpy as np
import torch

from vlaforge.errors import CheckpointError
from vlaforge.types import ActionOutput, Observation


class Policy:
    """What every policy offers. Subclasses implement the methods that raise ``NotImplementedError``."""

    chunk_size: int
    """actions per decision C"""
    action_dim: int
    """action dimensions A"""
    micro_batch: int = 0
    """the algorithms split each minibatch into micro-batches of this size (0 = off)"""
    whole_batch: bool = False
    """act() must see the whole vector env at once (collect() never splits the batch into worker groups)"""
    training: bool = False
    """training mode (``nn.Module``'s; collect() acts in eval mode and restores it)"""

    def train(self, mode: bool = True):
        """``nn.Module.train`` for modules; a policy without parameters has no mode."""
        return self

    def eval(self):
        return self.train(False)

    def act(self, obs: Observation, deterministic: bool = False, temperature: float = 1.0) -> ActionOutput:
        raise NotImplementedError

    def evaluate(self, obs: Observation, taken: dict[str, torch.Tensor], temperature: float = 1.0):
        raise NotImplementedError

    def value(self, obs: Observation) -> torch.Tensor:
        raise NotImplementedError

    def sft_loss(self, obs: Observation, expert_actions: torch.Tensor, mask: torch.Tensor | None = None):
        raise NotImplementedError

    def backbone_parameters(self) -> list:
        raise NotImplementedError

    def head_parameters(self) -> list:
        raise NotImplementedError

    def value_parameters(self) -> list:
        """The critic's parameters; none by default (a policy without a value head)."""
        return []

    @property
    def has_value(self) -> bool:
        """The policy has a critic: ``value()`` works and collect() bootstraps truncated episodes with it."""
        return len(self.value_parameters()) > 0

    @property
    def reads_images(self) -> bool:
        """The policy looks at the cameras (False for a state-only backbone)."""
        return True

    def set_action_stats(self, lo, hi) -> None:
        """Store the demo actions' per-dimension percentiles (A,) used to normalise actions."""
        raise NotImplementedError

    def config_dict(self) -> dict:
        """The JSON config that rebuilds this policy (saved with its weights)."""
        raise NotImplementedError

    def optimizer_class(self) -> type:
        """The optimizer the trainer builds over the parameter groups."""
        return torch.optim.AdamW

    def reference(self):
        """Context manager under which the policy scores as TPO's fixed reference (LoRA adapters off)."""
        raise ValueError("TPO reference='base' needs a policy with LoRA adapters (--policy hf --policy.lora-rank N)")


def load_weights(policy: torch.nn.Module, state: dict, path, saved_apart=lambda key: False) -> None:
    """Load a checkpoint's ``state`` into ``policy``. Keys for which ``saved_apart(key)`` holds (a backbone kept
    in its own files) may be absent; any other missing, unexpected or misshapen tensor is the checkpoint's
    fault: ``CheckpointError`` naming ``path``."""
    try:
        missing, unexpected = policy.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise CheckpointError(f"weights in '{path}' do not match its config: {str(e).splitlines()[0]}") from None
    missing = [k for k in missing if not saved_apart(k)]
    if missing or unexpected:
        raise CheckpointError(f"weights in '{path}' do not match its config: missing {missing[:3]}, "
                              f"unexpected {list(unexpected)[:3]}")


def reads_images(policy) -> bool:
    """False only for a state-only backbone; every other policy looks at the cameras."""
    return policy.reads_images


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
