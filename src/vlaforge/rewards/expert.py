"""Scripted-expert rollouts through ``collect()``, so that they carry observations and sim_state.

Reward models learn from labelled trajectories: ``ExpertPolicy`` plays a suite's scripted
expert (``venv.expert_actions()``), optionally with Gaussian action noise (a noisy expert fails
sometimes: the failures the RPRM must tell apart), behind the ``Policy.act`` interface, so the
ordinary ``collect`` records its episodes as a ``Rollout`` with images, proprio and sim_state.

    venv = make_vec_env("metaworld", 8, tasks="pick-place-v3")
    rollout, _ = collect(ExpertPolicy(venv, noise=0.5, seed=1), venv, task_ids, seeds)
"""

from __future__ import annotations

import numpy as np
import torch

from vlaforge.policies.base import Policy
from vlaforge.types import ActionOutput, Observation


class ExpertPolicy(Policy):
    """The vector env's scripted expert as a policy (chunk of 1; log-probs are zeros: not a model)."""

    whole_batch = True  # reads venv.expert_actions() for all envs: collect() must not split the batch into groups

    def __init__(self, venv, noise: float = 0.0, seed: int = 0):
        if noise < 0:
            raise ValueError(f"noise must be >= 0; got {noise}")
        self.venv, self.noise = venv, float(noise)
        self.rng = np.random.default_rng(seed)

    def act(self, obs: Observation, deterministic: bool = False, temperature: float = 1.0) -> ActionOutput:
        a = self.venv.expert_actions()  # (N, A) for the envs' current states
        if self.noise and not deterministic:
            a = a + self.noise * self.rng.standard_normal(a.shape).astype(np.float32)
        a = torch.from_numpy(np.clip(a, -1.0, 1.0).astype(np.float32))[:, None]  # (N, 1, A)
        return ActionOutput(a, torch.zeros_like(a), None, {})
