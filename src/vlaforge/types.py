"""The data that flows through vlaforge: observations, policy outputs, rollouts.

Shapes use N = envs in a batch, V = camera views, H/W = image size, S = state dims,
C = action-chunk length, A = action dims, T = decision steps (one action chunk each).
Envs produce numpy; policies and algorithms work in torch (``Observation.to_torch``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from vlaforge.device import to_device

Array = np.ndarray | torch.Tensor


@dataclass
class Observation:
    """A batch of observations.

    images: uint8 (N, V, H, W, 3)
    state: float32 (N, S) proprioception
    instructions: list[str] of length N
    task_ids: int64 (N,) index into the suite's task list
    sim_state: float32 (N, P) privileged simulator state (object/goal poses...; layout in
        ``EnvSpec.sim_state_names``) for reward models only — policies must never read it. None
        when the suite has no such channel.
    """

    images: Array
    state: Array
    instructions: list[str]
    task_ids: Array
    sim_state: Array | None = None

    def __len__(self) -> int:
        return len(self.instructions)

    def to_torch(self, device: torch.device | str = "cpu") -> Observation:
        return Observation(
            images=torch.as_tensor(self.images, device=device),
            state=torch.as_tensor(self.state, dtype=torch.float32, device=device),
            instructions=list(self.instructions),
            task_ids=torch.as_tensor(self.task_ids, dtype=torch.int64, device=device),
            sim_state=None if self.sim_state is None else torch.as_tensor(self.sim_state, dtype=torch.float32,
                                                                            device=device),
        )

    def to_numpy(self) -> Observation:
        """The batch as host numpy arrays (a batched simulator's device tensors copied; numpy kept as it is): for
        what leaves the run, demos on disk and videos."""
        def host(x):
            return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x

        return Observation(images=host(self.images), state=host(self.state), instructions=list(self.instructions),
                           task_ids=host(self.task_ids), sim_state=host(self.sim_state))

    def index(self, idx) -> Observation:
        """Select a subset of the batch (an index array, a mask or a slice)."""
        if isinstance(idx, slice):
            instr = self.instructions[idx]
        else:
            ii = np.asarray(idx.cpu() if isinstance(idx, torch.Tensor) else idx)
            if ii.dtype == bool:
                ii = np.nonzero(ii)[0]
            instr = [self.instructions[int(i)] for i in ii]
            idx = torch.as_tensor(ii) if isinstance(self.images, torch.Tensor) else ii
        sim = None if self.sim_state is None else self.sim_state[idx]
        return Observation(self.images[idx], self.state[idx], instr, self.task_ids[idx], sim)


@dataclass
class ActionOutput:
    """What ``Policy.act`` returns for a batch of N observations.

    actions: float32 (N, C, A) in the env's action space ([-1, 1])
    log_prob: float32 (N, C, A) element-wise log-probabilities of ``taken`` under the sampling
        distribution (sum over the last axes for per-action / per-chunk levels)
    value: float32 (N,) or None when the policy has no value head
    taken: dict of tensors, each with leading dim N, enough to score the same action again
    """

    actions: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor | None
    taken: dict[str, torch.Tensor] = field(default_factory=dict)


EPISODE_FIELDS = ("next_value", "success", "valid", "task_id", "seed", "group_id", "env_steps")


@dataclass
class Rollout:
    """Episodes collected with one policy, time-major, one decision (action chunk) per step.

    obs_images uint8 (T, N, V, H, W, 3), obs_state (T, N, S), instructions list[str] (N,)
    taken: dict of (T, N, ...) tensors; log_prob (T, N, C, A) from the sampling policy
    actions (T, N, C, A) env-space actions sent; executed (T, N) simulator steps of each chunk run
    value (T, N) (zeros if the policy has none), last_value (N,) bootstrap value after the last step
    reward (T, N); alive (T, N) bool: the step happened (episode not yet over)
    terminated (T, N) bool: episode ended at this step with success/failure (no bootstrap)
    truncated (T, N) bool: episode cut by the time limit at this step (bootstrap from value)
    success (N,) bool, valid (N,) bool (False: worker crashed, never count the episode)
    task_id (N,), seed (N,), group_id (N,): rollouts sharing (task, seed) share a group id
    env_steps (N,) simulator steps executed
    sim_state (T, N, P) privileged simulator state at each decision (reward models only; P = 0 when
        the suite has none; None in rollouts built by hand)
    """

    obs_images: torch.Tensor
    obs_state: torch.Tensor
    instructions: list[str]
    taken: dict[str, torch.Tensor]
    actions: torch.Tensor
    executed: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    next_value: torch.Tensor
    reward: torch.Tensor
    alive: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    success: torch.Tensor
    valid: torch.Tensor
    task_id: torch.Tensor
    seed: torch.Tensor
    group_id: torch.Tensor
    env_steps: torch.Tensor
    sim_state: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:
        return int(self.reward.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.reward.shape[1])

    def select(self, episodes: torch.Tensor) -> Rollout:
        """Keep only some episodes (an index tensor over N)."""
        episodes = torch.as_tensor(episodes, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                out[f.name] = None
            elif f.name == "instructions":
                out[f.name] = [v[int(i)] for i in episodes]
            elif f.name == "taken":
                out[f.name] = {k: x[:, episodes] for k, x in v.items()}
            elif f.name in EPISODE_FIELDS:
                out[f.name] = v[episodes]
            else:
                out[f.name] = v[:, episodes]
        return Rollout(**out)

    def to(self, device: torch.device | str) -> Rollout:
        """Every tensor of the rollout on ``device`` (the learner's: advantages and batches are computed there).
        A tensor already on ``device`` is kept as it is (no copy: on the CPU this is the rollout itself); to CUDA
        the copies are non-blocking from pinned host memory."""
        device = torch.device(device)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v if f.name == "instructions" else to_device(v, device)
        return Rollout(**out)

    @staticmethod
    def cat(rollouts: list[Rollout]) -> Rollout:
        """Join rollouts along the episode axis, padding time with dead steps."""
        T = max(r.num_steps for r in rollouts)
        def pad(x: torch.Tensor, value=0) -> torch.Tensor:
            if x.shape[0] == T:
                return x
            shape = (T - x.shape[0],) + tuple(x.shape[1:])
            return torch.cat([x, torch.full(shape, value, dtype=x.dtype, device=x.device)])
        out = {}
        for f in fields(Rollout):
            vals = [getattr(r, f.name) for r in rollouts]
            if any(v is None for v in vals):  # an optional field (sim_state) missing in any part
                out[f.name] = None
            elif f.name == "instructions":
                out[f.name] = [s for v in vals for s in v]
            elif f.name == "taken":
                out[f.name] = {k: torch.cat([pad(v[k]) for v in vals], 1) for k in vals[0]}
            elif f.name in EPISODE_FIELDS:
                out[f.name] = torch.cat(vals)
            else:
                out[f.name] = torch.cat([pad(v) for v in vals], 1)
        return Rollout(**out)
