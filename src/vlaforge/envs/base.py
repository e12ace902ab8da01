"""The environment contract: one single-env ``TaskEnv`` per suite, batched by ``vector.py``.

A suite adapter is a ``SimEnv`` (a ``TaskEnv``: one simulator instance) that implements its simulator
calls only; ``SimEnv`` does what every suite does the same way. ``VecEnv`` batches N of them
(in process or in subprocess workers) and is what rollout code talks to:

    obs = venv.reset(task_ids, seeds)        # Observation, images uint8 (N, V, H, W, 3)
    step = venv.step(actions)                # actions float32 (N, C, A) in [-1, 1]

The initial state of an episode is a pure function of ``(task_id, seed)``: K envs reset with
the same pair start from the identical state (grouped resets for GRPO / RLOO / RIPT-VLA).
Episodes end on success (terminated) or after ``max_steps`` simulator steps (truncated);
an env that has ended ignores further actions until the next reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlaforge.types import Observation


class EnvError(ValueError):
    """Bad input to an environment (unknown task, wrong action shape...). Message says what to do."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite: a name, its natural-language instruction, and its split."""

    name: str
    instruction: str
    suite: str
    split: str = "train"  # "train" or "heldout" (never trained on)


@dataclass(frozen=True)
class EnvSpec:
    """Static facts about a suite's envs, shared by every instance."""

    suite: str
    tasks: tuple[TaskSpec, ...]
    image_shape: tuple[int, int, int, int]  # (V, H, W, 3)
    state_dim: int
    action_dim: int
    max_steps: int  # simulator steps per episode
    cameras: tuple[str, ...] = ("default",)
    renderer: str = "numpy"
    extra: dict[str, Any] = field(default_factory=dict)
    sim_state_names: tuple[str, ...] = ()
    """names of the privileged ``sim_state`` vector's entries (empty: the suite has no such channel);
    shared names across suites: ee_x/ee_y/ee_z (end effector), gripper, obj_x.. , goal_x.."""
    sim_state_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """named lists of ``sim_state_names`` a flag may give by one word (Meta-World's ``privileged``: what the
    privileged teacher of ``--algo distill`` reads)"""

    def task_index(self, name: str) -> int:
        for i, t in enumerate(self.tasks):
            if t.name == name:
                return i
        known = ", ".join(t.name for t in self.tasks[:12])
        raise EnvError(f"unknown task '{name}' for suite '{self.suite}'; known tasks: {known}"
                       + (" ..." if len(self.tasks) > 12 else ""))


@dataclass
class ChunkResult:
    """Result of executing one action chunk in one env."""

    image: np.ndarray  # uint8 (V, H, W, 3) observation after the chunk
    state: np.ndarray  # float32 (S,)
    reward: float  # sum of rewards over executed steps (sparse: 1.0 on the success step)
    success: bool  # task solved at some executed step
    done: bool  # episode over (success or time limit)
    truncated: bool  # ended by the time limit without success
    steps: int  # simulator steps executed (< C when the episode ended inside the chunk)
    sim_state: np.ndarray | None = None  # float32 (P,) privileged state after the chunk (filled by the vector env)


@runtime_checkable
class TaskEnv(Protocol):
    """One simulator instance of a suite."""

    spec: EnvSpec

    def reset(self, task_id: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Reset to the initial state fixed by (task_id, seed); returns (image (V,H,W,3), state (S,))."""
        ...

    def step_chunk(self, actions: np.ndarray) -> ChunkResult:
        """Execute an action chunk float32 (C, A) in [-1, 1]; render once at the end."""
        ...

    def expert_action(self) -> np.ndarray:
        """The scripted expert's next action (A,) in [-1, 1] for the current state."""
        ...

    def cached_tasks(self) -> frozenset[str] | None:
        """Names of the tasks whose simulators this env holds now, when it holds a bounded number of them and
        its episodes are a function of (task, seed) and actions alone, whichever instance runs them (Meta-World's
        ``cache``). None: episodes stay on the env at their batch position (every task's simulator is kept, or
        the adapter does not promise that; LIBERO's ``cache`` is not offered). The vector envs read it to reset
        each episode on an env that already holds its task (``envs.vector.EnvSlots``)."""
        ...

    # Optional: ``sim_state() -> float32 (P,)``, the privileged simulator state now (layout in
    # ``spec.sim_state_names``), for reward models (GRAPE costs, RPRM milestones), never for policies.

    def close(self) -> None: ...


@dataclass
class VecStep:
    """Batched result of ``VecEnv.step``; every array has leading dim N."""

    obs: Observation
    reward: np.ndarray  # float32 (N,)
    success: np.ndarray  # bool (N,)
    done: np.ndarray  # bool (N,)
    truncated: np.ndarray  # bool (N,)
    steps: np.ndarray  # int64 (N,)
    valid: np.ndarray  # bool (N,): False if the env's worker crashed during this episode


class VecEnv(Protocol):
    spec: EnvSpec
    num_envs: int
    device: Any
    """None: observations are numpy on the host (the per-scene vector envs); a ``torch.device``: a batched
    simulator's, whose observations are tensors on it (``envs/batched.py``)"""

    def reset(self, task_ids, seeds) -> Observation: ...

    def step(self, actions: np.ndarray) -> VecStep: ...

    def expert_actions(self) -> np.ndarray: ...

    def close(self) -> None: ...


def validate_chunk(actions: np.ndarray, action_dim: int, suite: str) -> np.ndarray:
    """Check one env's action chunk; returns float32 (C, A). Raises EnvError saying what is wrong."""
    a = np.asarray(actions, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != action_dim or a.shape[0] == 0:
        raise EnvError(f"{suite} expects an action chunk of shape (C, {action_dim}) with C >= 1; got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise EnvError(f"{suite} actions contain NaN or inf; check the policy output")
    return a


class SimEnv:
    """Base of the simulator suite adapters (``TaskEnv``): what every suite does the same way.

    It checks the shared constructor options, range-checks ``reset``'s task id, runs ``step_chunk``'s
    open-loop chunk (validation, an ended episode executes nothing, clipping to [-1, 1], the success reward,
    the time limit) and ``close``. An adapter sets ``suite``, ``tasks`` (via ``__init__``) and ``spec``, and
    implements its simulator calls only:

        _reset(task, seed)   put the simulator in the initial state fixed by (task name, seed)
        _step(a_t)           advance one simulator step with a clipped action (A,) -> (solved, dense reward)
        _observe()           the observation now: (image uint8 (V, H, W, 3), state float32 (S,))
        _close()             release the simulator (optional)
        _limit()             steps allowed in the current episode (optional; default ``max_steps``)
    """

    suite: str = ""
    min_image_size: int = 8

    def __init__(self, tasks: list[TaskSpec], image_size: int, max_steps: int | None, shaping: float = 0.0):
        if image_size < self.min_image_size:
            raise EnvError(f"{self.suite} image_size must be >= {self.min_image_size}; got {image_size}")
        if max_steps is not None and max_steps < 1:
            raise EnvError(f"{self.suite} max_steps must be >= 1; got {max_steps}")
        if not np.isfinite(shaping) or shaping < 0:
            raise EnvError(f"{self.suite} shaping must be a finite weight >= 0; got {shaping}")
        self.tasks = tasks
        self.size = int(image_size)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.shaping = float(shaping)
        self.t = 0  # simulator steps in this episode
        self.done = True  # the episode has ended (or none has started)
        self._task: str | None = None  # name of the current episode's task; None before the first reset
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # observation after the last reset/chunk

    def reset(self, task_id: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= int(task_id) < len(self.tasks):
            raise EnvError(f"task_id {task_id} out of range for {len(self.tasks)} {self.suite} tasks")
        self._task = self.tasks[int(task_id)].name
        self.done = True  # until the new episode stands: a reset that raises leaves no episode to step
        self._reset(self._task, int(seed))
        self.t, self.done = 0, False
        self._last = self._observe()
        return self._last

    def step_chunk(self, actions: np.ndarray) -> ChunkResult:
        """Execute the chunk open-loop; stop at success (reward +1) or at the time limit. The reward is the
        sum of the dense rewards (0 unless the suite shapes) plus the success reward."""
        a = validate_chunk(actions, self.spec.action_dim, self.suite)
        if self._task is None:
            raise EnvError("call reset(task_id, seed) before step_chunk")
        if self.done:
            return ChunkResult(*self._last, 0.0, False, True, False, 0)
        limit = self._limit()
        reward, success, n = 0.0, False, 0
        for a_t in np.clip(a, -1.0, 1.0):
            success, dense = self._step(a_t)
            self.t += 1
            n += 1
            reward += dense
            if success:
                reward += 1.0
                break
            if self.t >= limit:
                break
        self.done = success or self.t >= limit
        self._last = self._observe()
        return ChunkResult(*self._last, reward, success, self.done, self.done and not success, n)

    def close(self) -> None:
        self._close()
        self._task = None
        self.done = True

    def cached_tasks(self) -> frozenset[str] | None:
        """``TaskEnv.cached_tasks``: None here (every task's simulator is kept); an adapter with a bounded cache
        of simulators overrides it."""
        return None

    def _limit(self) -> int:
        return self.max_steps

    def _close(self) -> None:
        pass


def validate_actions(actions: np.ndarray, num_envs: int, action_dim: int) -> np.ndarray:
    """Check a batched action chunk; returns float32 (N, C, A) clipped to [-1, 1]."""
    a = np.asarray(actions, dtype=np.float32)
    if a.ndim != 3 or a.shape[0] != num_envs or a.shape[2] != action_dim:
        raise EnvError(f"actions must have shape (num_envs={num_envs}, chunk, action_dim={action_dim}); "
                       f"got {tuple(a.shape)} — reshape your policy output to (N, C, A)")
    if not np.all(np.isfinite(a)):
        raise EnvError("actions contain NaN or inf; check the policy output")
    return np.clip(a, -1.0, 1.0)


def check_env(venv: VecEnv, chunk: int = 2, steps: int = 3, seed: int = 0) -> None:
    """Contract test every suite must pass. Raises AssertionError with what is wrong.

    Checks observation dtypes and shapes, instructions, grouped resets (same (task, seed)
    gives the identical first observation), reset determinism, action validation, and that
    an ended episode stays ended. A batched simulator's observations (``venv.device`` set) must be tensors on
    that device, with the same dtypes and shapes.
    """
    spec = venv.spec
    dev = venv.device

    def host(x):  # the checks compare on the host
        if dev is None:
            return x
        import torch

        assert isinstance(x, torch.Tensor) and x.device == dev, \
            f"a batched simulator's observations must stay on {dev}; got {type(x).__name__} " \
            f"{getattr(x, 'device', '')}"
        return x.cpu().numpy()

    n = venv.num_envs
    assert n >= 2, "check_env needs at least 2 envs to test grouped resets"
    V, H, W, three = spec.image_shape
    assert three == 3
    task_ids = np.zeros(n, dtype=np.int64)
    task_ids[n // 2:] = min(1, len(spec.tasks) - 1)
    seeds = np.full(n, seed, dtype=np.int64)
    seeds[n // 2:] = seed + 1
    obs = venv.reset(task_ids, seeds)

    def check_obs(o: Observation) -> None:
        o = Observation(host(o.images), host(o.state), o.instructions, o.task_ids,
                        None if o.sim_state is None else host(o.sim_state))
        assert isinstance(o.images, np.ndarray) and o.images.dtype == np.uint8, "images must be uint8 numpy"
        assert o.images.shape == (n, V, H, W, 3), f"images shape {o.images.shape} != {(n, V, H, W, 3)}"
        assert o.state.dtype == np.float32 and o.state.shape == (n, spec.state_dim), "state must be float32 (N, S)"
        assert np.all(np.isfinite(o.state)), "state has non-finite values"
        assert len(o.instructions) == n and all(isinstance(s, str) and s for s in o.instructions)
        assert o.task_ids.dtype == np.int64 and o.task_ids.shape == (n,)
        P = len(spec.sim_state_names)
        if P:
            assert o.sim_state is not None and o.sim_state.dtype == np.float32 and o.sim_state.shape == (n, P), \
                f"sim_state must be float32 (N, {P}) as named by spec.sim_state_names"
            assert np.all(np.isfinite(o.sim_state)), "sim_state has non-finite values"
        else:
            assert o.sim_state is None, "sim_state given but spec.sim_state_names is empty"

    check_obs(obs)
    obs = Observation(host(obs.images), host(obs.state), obs.instructions, obs.task_ids)
    for i in range(n):
        assert obs.instructions[i] == spec.tasks[task_ids[i]].instruction
    # grouped resets: identical (task, seed) -> identical first observation
    half = n // 2
    for i in range(1, half):
        assert np.array_equal(obs.images[0], obs.images[i]) and np.array_equal(obs.state[0], obs.state[i]), \
            "grouped reset: envs reset with the same (task, seed) differ"
    again = venv.reset(task_ids, seeds)
    assert np.array_equal(host(again.images), obs.images) and np.array_equal(host(again.state), obs.state), \
        "reset is not deterministic in (task, seed)"
    # wrong action shapes are refused
    for bad in (np.zeros((n, spec.action_dim), np.float32), np.zeros((n, chunk, spec.action_dim + 1), np.float32)):
        try:
            venv.step(bad)
        except EnvError:
            pass
        else:
            raise AssertionError(f"an action of shape {bad.shape} was accepted")
    rng = np.random.default_rng(seed)
    ended = np.zeros(n, dtype=bool)
    for _ in range(steps):
        a = rng.uniform(-1, 1, size=(n, chunk, spec.action_dim)).astype(np.float32)
        st = venv.step(a)
        check_obs(st.obs)
        assert st.reward.shape == (n,) and st.success.dtype == bool and st.done.dtype == bool
        assert np.all(st.steps[ended] == 0), "an ended episode executed steps"
        assert np.all((st.steps <= chunk) & (st.steps >= 0))
        ended |= st.done
    ex = venv.expert_actions()
    assert ex.shape == (n, spec.action_dim) and np.all(np.abs(ex) <= 1.0 + 1e-6), "expert actions out of range"
