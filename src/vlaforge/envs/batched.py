"""One simulator that steps N scenes at once, on a device, behind the ``VecEnv`` contract (``BatchedVecEnv``).

GPU simulators (ManiSkill3's PhysX-GPU, ``--env-kwargs sim_backend gpu``) hold hundreds of scenes in one process
and keep their state, observations and rewards in device memory. ``BatchedVecEnv`` puts such a simulator behind
the same ``reset(task_ids, seeds)`` / ``step(actions (N, C, A))`` contract as the per-scene vector envs, with two
differences a caller can see, both announced by ``venv.device`` (``None`` for the host vector envs):

- ``Observation.images``, ``.state`` and ``.sim_state`` are torch tensors on ``venv.device`` (same dtypes and
  shapes as the numpy ones): observations never cross to the host; ``collect()`` hands them to the policy and
  stores them in the Rollout where they are. ``step`` takes the policy's actions as a tensor on that device
  (numpy is accepted and moved).
- the per-env scalars of a ``VecStep`` (reward, success, done, truncated, steps, valid) come back to the host as
  numpy once per chunk: ``collect()``'s bookkeeping (which envs are alive) needs them there, and they are 5 x N
  numbers, not frames (with one more sync per chunk: the actions' finiteness check).

What a simulator provides (``BatchedSim``; ``envs/pointreach.py``'s ``PointReachBatch`` is a small one in torch,
``envs/maniskill.py``'s ``ManiSkillBatch`` wraps ManiSkill's batched env):

    spec, num_envs, device
    reset_one(i, task, seed)      put scene i in the initial state of (task name, seed), the one the per-scene env
                                  of the same suite would start from on that backend
    copy_state(src, dst)          scenes dst (index tensor) become copies of scenes src (same length)
    step(actions (N, A))          one simulator step of every scene -> (solved (N,) bool, dense reward (N,) float)
    observe()                     images uint8 (N, V, H, W, 3), state float32 (N, S), sim_state float32 (N, P) | None
    hold(last (N, A))             the action a scene whose episode has ended executes while the others go on
    expert_actions()              the scripted expert's next action of every scene, float32 numpy (N, A)
    close()

Grouped resets: the initial state must be a pure function of (task, seed), but a batched simulator's reset draws
every scene's layout from one random stream (in mani-skill 3.0.1 ``PickCube-v1`` seeds ``torch`` with the first
seed and draws all rows from it), so equal seeds in one batched reset do not start alike. ``reset`` therefore
resets one scene per distinct (task, seed) with ``reset_one`` and copies its state to the rest of its group.

A chunk runs C simulator steps of every scene (no host sync between steps); a scene whose episode ended (success
or time limit), before or inside the chunk, executes ``hold`` actions from then on, counts no steps and earns no
reward; a scene that had ended before the chunk keeps its last observation. A scene that ends inside a chunk is
observed at the chunk's end (one render per chunk), after its ``hold`` steps — the per-scene envs observe it at the
step it ended; the two agree where holding does not move the scene (PointReach exactly; ManiSkill's controller
holds the arm's target, so the arm settles for the remaining steps of the chunk).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from vlaforge.envs.base import EnvError, EnvSpec, VecStep
from vlaforge.types import Observation


class BatchedSim(Protocol):
    spec: EnvSpec
    num_envs: int
    device: torch.device

    def reset_one(self, i: int, task: str, seed: int) -> None: ...

    def copy_state(self, src: torch.Tensor, dst: torch.Tensor) -> None: ...

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def observe(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]: ...

    def hold(self, last: torch.Tensor) -> torch.Tensor: ...

    def expert_actions(self) -> np.ndarray: ...

    def close(self) -> None: ...


class BatchedVecEnv:
    """``VecEnv`` over a ``BatchedSim`` (module docstring). ``groups``: one (nothing to overlap in process)."""

    def __init__(self, sim: BatchedSim):
        self.sim = sim
        self.spec: EnvSpec = sim.spec
        self.num_envs = sim.num_envs
        self.device = torch.device(sim.device)
        self.groups = [slice(0, self.num_envs)]
        n, dev = self.num_envs, self.device
        self._task_ids = np.zeros(n, np.int64)
        self._t = torch.zeros(n, dtype=torch.int64, device=dev)  # simulator steps in each scene's episode
        self._done = torch.ones(n, dtype=torch.bool, device=dev)  # the episode has ended (or none has started)
        self._last: Observation | None = None
        self._last_action = torch.zeros(n, self.spec.action_dim, device=dev)

    def reset(self, task_ids, seeds) -> Observation:
        n = self.num_envs
        task_ids = np.broadcast_to(np.asarray(task_ids, dtype=np.int64), (n,)).copy()
        seeds = np.broadcast_to(np.asarray(seeds, dtype=np.int64), (n,)).copy()
        if task_ids.min() < 0 or task_ids.max() >= len(self.spec.tasks):
            raise EnvError(f"task ids must be in [0, {len(self.spec.tasks)}); got {task_ids.tolist()}")
        first: dict[tuple[int, int], int] = {}
        src, dst = [], []
        for i, key in enumerate(zip(task_ids.tolist(), seeds.tolist())):
            if key in first:
                src.append(first[key])
                dst.append(i)
            else:
                first[key] = i
                self.sim.reset_one(i, self.spec.tasks[key[0]].name, int(key[1]))
        if dst:
            self.sim.copy_state(torch.tensor(src, device=self.device), torch.tensor(dst, device=self.device))
        self._task_ids = task_ids
        self._t.zero_()
        self._done.zero_()
        self._last_action.zero_()
        self._last = self._observation(*self.sim.observe())
        return self._last

    def step(self, actions) -> VecStep:
        a = self._check(actions)
        if self._last is None:
            raise EnvError("call reset(task_ids, seeds) before step")
        n, dev = self.num_envs, self.device
        ended_before = self._done.clone()
        live = ~self._done
        limit = self.spec.max_steps
        reward = torch.zeros(n, dtype=torch.float64, device=dev)  # summed in float64 as SimEnv does, cast once
        success = torch.zeros(n, dtype=torch.bool, device=dev)
        steps = torch.zeros(n, dtype=torch.int64, device=dev)
        for t in range(a.shape[1]):  # every scene steps; ended ones hold (no host sync inside the chunk)
            act = torch.where(live[:, None], a[:, t], self.sim.hold(self._last_action))
            self._last_action = act
            solved, dense = self.sim.step(act)
            steps += live
            self._t += live
            reward += torch.where(live, dense.double() + solved.double(), torch.zeros_like(reward))
            success |= solved & live
            live = live & ~solved & (self._t < limit)
        self._done = self._done | success | (self._t >= limit)
        new = self._observation(*self.sim.observe())
        self._last = _where(ended_before, self._last, new)
        fresh = self._done & ~ended_before  # ended inside this chunk
        host = torch.stack([reward, success.double(), fresh.double(), ended_before.double(), steps.double()])
        r, s, d, e, k = host.cpu().numpy()  # the per-env scalars, once per chunk
        succ, fresh_h = s.astype(bool), d.astype(bool)
        return VecStep(obs=self._last, reward=r.astype(np.float32), success=succ, done=fresh_h | e.astype(bool),
                       truncated=fresh_h & ~succ, steps=k.astype(np.int64), valid=np.ones(n, bool))

    def expert_actions(self) -> np.ndarray:
        return np.asarray(self.sim.expert_actions(), np.float32)

    def close(self) -> None:
        self.sim.close()

    # -- helpers ------------------------------------------------------------------------------------------
    def _check(self, actions) -> torch.Tensor:
        a = torch.as_tensor(actions, device=self.device).float()
        A = self.spec.action_dim
        if a.dim() != 3 or a.shape[0] != self.num_envs or a.shape[2] != A or a.shape[1] == 0:
            raise EnvError(f"actions must have shape (num_envs={self.num_envs}, chunk, action_dim={A}); "
                           f"got {tuple(a.shape)} — reshape your policy output to (N, C, A)")
        if not bool(torch.isfinite(a).all()):
            raise EnvError("actions contain NaN or inf; check the policy output")
        return a.clamp(-1.0, 1.0)

    def _observation(self, images: torch.Tensor, state: torch.Tensor, sim: torch.Tensor | None) -> Observation:
        return Observation(images=images, state=state,
                           instructions=[self.spec.tasks[int(t)].instruction for t in self._task_ids],
                           task_ids=self._task_ids.copy(), sim_state=sim if self.spec.sim_state_names else None)


def _where(keep_old: torch.Tensor, old: Observation, new: Observation) -> Observation:
    """Per scene: ``old`` where ``keep_old``, else ``new`` (tensors on the device, no copy to the host)."""

    def pick(o, x):
        if o is None:
            return x
        m = keep_old.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(m, o, x)

    return Observation(images=pick(old.images, new.images), state=pick(old.state, new.state),
                       instructions=new.instructions, task_ids=new.task_ids,
                       sim_state=None if new.sim_state is None else pick(old.sim_state, new.sim_state))
