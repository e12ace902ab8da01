"""Privileged simulator state at training time only: the asymmetric critic and the perception readout.

Two ways a policy may learn from ``Observation.sim_state`` (the simulator's object/goal poses, named by
``EnvSpec.sim_state_names``) without ever acting on it:

* **Asymmetric critic** (Pinto et al. 2018, "Asymmetric Actor Critic for Image-Based Robot Learning"):
  the value function reads ``[sim_state, proprio]`` while the actor reads pixels and proprio. The value
  is only used for advantages during training, so the saved policy acts without any privileged input.
  ``PrivilegedCritic`` is a LayerNorm MLP (LayerNorm on the input, as RLPD does in its critics, so raw
  positions in metres and joint angles in radians share one scale).
* **Perception auxiliary loss**: a readout head predicts the positions of the things the robot must
  reach (objects, goal, targets; ``perception_targets``) from the image features, standardised by
  statistics of the training data. Its gradient shapes the encoder to localise; the readout is never
  an actor input.

Neither piece is a policy by itself; ``policies/tiny`` builds them from its config.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_TARGET = re.compile(r"(obj\d*|goal|target\d*)_[xyz]")


def perception_targets(names: tuple[str, ...] | list[str]) -> list[int]:
    """Indices of the ``sim_state`` entries worth localising from pixels: positions of objects, goals and
    targets (``obj_x``, ``obj1_y``, ``goal_z``, ``target3_x`` …), not the robot's own (``ee_*``, joints) and
    not the previous step's copies (``prev_*``)."""
    return [i for i, n in enumerate(names) if _TARGET.fullmatch(n)]


class PrivilegedCritic(nn.Module):
    """V(sim_state, proprio): LayerNorm on the concatenated input, then a 3-layer tanh MLP -> (N,)."""

    def __init__(self, sim_state_dim: int, state_dim: int, hidden: int = 256):
        super().__init__()
        if sim_state_dim <= 0:
            raise ValueError("a privileged critic needs a suite with a sim_state channel (sim_state_dim > 0)")
        d = sim_state_dim + state_dim
        self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, sim_state: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """sim_state (N, P), state (N, S) -> value (N,)"""
        return self.net(torch.cat([sim_state, state], -1))[:, 0]


def aux_regression_loss(pred: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor):
    """Mean squared error of standardised positions. pred (N, K) standardised; target (N, K) raw, mu/sd (K,).
    Returns (loss, metrics) with ``aux/mse`` and ``aux/err_m`` (mean Euclidean-per-coordinate error in the
    target's units, i.e. metres for Meta-World)."""
    z = (target - mu) / sd
    loss = ((pred - z) ** 2).mean()
    err = ((pred.detach() * sd + mu) - target).abs().mean()
    return loss, {"aux/mse": loss.detach(), "aux/abs_err": err}
