"""Collect episodes with a policy: N envs in parallel, K rollouts per initial state.

``collect(policy, venv, task_ids, seeds)`` runs one episode per (task_id, seed) entry, in
batches of ``venv.num_envs``; entries with equal (task_id, seed) start from the identical
state and share a ``group_id`` (GRPO / RLOO / RIPT-VLA groups). The returned ``Rollout``
keeps everything needed to score the same actions again under a new policy: the
observations, the head's ``taken`` record and the sampling log-probs, computed with the same
distribution and temperature that sampled them. With ``keep_obs`` it also keeps the suite's
privileged ``sim_state`` per decision (``Rollout.sim_state (T, N, P)``, P = 0 for suites without
one) for reward models; the policy never sees it. The Rollout lives on the host whatever the policy's device
(its outputs come back once per batch); the learner moves it to its device (``Rollout.to``). With a batched
simulator on a device (``venv.device`` set, ``envs/batched.py``) nothing crosses to the host but the per-env
scalars the bookkeeping needs: observations go to the policy and into the Rollout where they are, actions go
back to the simulator as tensors, and the Rollout lives on ``venv.device``.

Pipelining (``pipeline=True``) overlaps policy inference with simulation: a ``SubprocVecEnv``'s envs
form groups (one per worker, ``venv.groups``) and the policy acts for one group while the others
simulate (``step_async`` / ``step_wait``). Both paths act once per group, in the same round-robin
order (group 0, 1, ... at each decision; a group whose episodes have all ended drops out), so the
policy draws the same random numbers on the same inputs and a fixed seed gives the identical Rollout
either way (tests/test_pipelined.py). In-process envs (``SyncVecEnv``) form one group; with one group
there is nothing to overlap and ``pipeline=True`` runs the plain path. A policy that reads the vector
env itself (``ExpertPolicy``: ``whole_batch = True``) always acts for the whole batch at once.

    rollout, stats = collect(policy, venv, task_ids, seeds, pipeline=True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vlaforge.envs.base import VecEnv, VecStep
from vlaforge.envs.vector import SubprocVecEnv
from vlaforge.types import Observation, Rollout


@dataclass
class CollectStats:
    env_steps: int = 0
    decisions: int = 0
    sim_time: float = 0.0
    policy_time: float = 0.0
    episodes: int = 0
    invalid: int = 0
    frames: list = field(default_factory=list)  # per episode list of uint8 images, when recording

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / max(self.sim_time + self.policy_time, 1e-9)


def group_ids_for(task_ids: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Equal (task, seed) pairs -> equal group ids, numbered in order of first appearance."""
    keys: dict[tuple[int, int], int] = {}
    return np.array([keys.setdefault((int(t), int(s)), len(keys)) for t, s in zip(task_ids, seeds)], np.int64)


def act_groups(policy, venv: VecEnv) -> list[slice]:
    """The slices of the batch that ``collect()`` acts for with one ``policy.act`` call each (both paths)."""
    if isinstance(venv, SubprocVecEnv) and not policy.whole_batch:
        return list(venv.groups)
    return [slice(0, venv.num_envs)]


def _cat_obs(parts: list[Observation]) -> Observation:
    if len(parts) == 1:
        return parts[0]
    sims = [o.sim_state for o in parts]
    return Observation(images=np.concatenate([o.images for o in parts]), state=np.concatenate([o.state for o in parts]),
                       instructions=[s for o in parts for s in o.instructions],
                       task_ids=np.concatenate([o.task_ids for o in parts]),
                       sim_state=None if any(x is None for x in sims) else np.concatenate(sims))


def _frame(x) -> np.ndarray:
    """One env's frame as numpy, for videos (a batched simulator's frames copy to the host only here)."""
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


@dataclass
class _Lane:
    """One group of envs of a batch: acted for with one policy call, stepped with one message."""

    sl: slice
    obs: Observation
    alive: np.ndarray  # bool (n_g,)
    steps: list = field(default_factory=list)  # one record per decision of this group
    out: object = None  # the ActionOutput of the decision in flight

    def __post_init__(self):
        n = len(self.alive)
        self.env_steps = np.zeros(n, np.int64)
        self.success = np.zeros(n, bool)
        self.valid = np.ones(n, bool)


def _collect_batch(policy, venv: VecEnv, task_ids, seeds, deterministic: bool, keep_obs: bool, stats: CollectStats,
                   record: int, pipeline: bool = False, temperature: float = 1.0):
    n = venv.num_envs
    home = venv.device  # None: a host vector env (numpy observations); else the batched simulator's device
    t0 = time.perf_counter()
    obs = venv.reset(task_ids, seeds)
    stats.sim_time += time.perf_counter() - t0
    groups = act_groups(policy, venv)
    lanes = [_Lane(sl, obs if len(groups) == 1 else obs.index(sl), np.ones(sl.stop - sl.start, bool)) for sl in groups]
    frames = [[_frame(obs.images[i])] for i in range(min(record, n))]

    def act(lane: _Lane) -> np.ndarray:
        t0 = time.perf_counter()
        lane.out = policy.act(lane.obs, deterministic=deterministic, temperature=temperature)
        stats.policy_time += time.perf_counter() - t0
        stats.decisions += int(lane.alive.sum())
        a = lane.out.actions.detach()
        a = a.cpu().numpy() if home is None else a  # a batched simulator takes them where they are
        if len(a) != len(lane.alive):
            raise ValueError(f"policy.act returned {len(a)} actions for {len(lane.alive)} envs; a policy that acts "
                             "for the whole vector env must set `whole_batch = True`")
        return a

    def record_step(lane: _Lane, st: VecStep) -> None:
        out, alive, o, m = lane.out, lane.alive, lane.obs, len(lane.alive)
        rec = {
            "alive": alive.copy(), "reward": st.reward * alive, "terminated": st.done & ~st.truncated & alive,
            "truncated": st.truncated & alive, "log_prob": out.log_prob.detach(),
            "value": out.value.detach() if out.value is not None else torch.zeros(m),
            "taken": {k: v.detach() for k, v in out.taken.items()},
            "actions": out.actions.detach(), "executed": st.steps * alive,
        }
        if keep_obs:
            rec["images"], rec["state"], rec["sim_state"] = _obs_tensors(o, m)
        lane.steps.append(rec)
        lane.env_steps += st.steps * alive
        lane.success |= st.success & alive
        lane.valid &= st.valid
        for i in range(lane.sl.start, min(lane.sl.stop, len(frames))):
            if alive[i - lane.sl.start]:
                frames[i].append(_frame(st.obs.images[i - lane.sl.start]))
        lane.alive = alive & ~st.done
        lane.obs = st.obs

    def timed(fn, *args):
        t0 = time.perf_counter()
        r = fn(*args)
        stats.sim_time += time.perf_counter() - t0
        return r

    if len(lanes) == 1:  # one policy call for all envs, one venv.step
        lane = lanes[0]
        while lane.alive.any():
            a = act(lane)
            record_step(lane, timed(venv.step, a))
    else:
        try:
            if pipeline:  # act for group g while the other groups simulate
                for g, lane in enumerate(lanes):
                    timed(venv.step_async, g, act(lane))
                busy = list(range(len(lanes)))
                while busy:
                    for g in list(busy):
                        record_step(lanes[g], timed(venv.step_wait, g))
                        if lanes[g].alive.any():
                            timed(venv.step_async, g, act(lanes[g]))
                        else:
                            busy.remove(g)
            else:  # the same policy calls in the same order; chunks are sent once every group has acted
                while live := [g for g, lane in enumerate(lanes) if lane.alive.any()]:
                    acts = [act(lanes[g]) for g in live]
                    for g, a in zip(live, acts):
                        timed(venv.step_async, g, a)
                    for g in live:
                        record_step(lanes[g], timed(venv.step_wait, g))
        finally:
            venv.drain()  # after an error: leave no answer in flight

    obs = _cat_obs([lane.obs for lane in lanes])
    next_value = torch.zeros(n)
    if policy.has_value and keep_obs:
        with torch.no_grad():
            next_value = policy.value(obs).detach()
        next_value = next_value.cpu() if home is None else next_value
    stats.frames.extend(frames)
    T = max(len(lane.steps) for lane in lanes)

    pads: dict[int, dict] = {}

    def at(lane: _Lane, t: int) -> dict:
        """Decision t of a group; after its episodes ended, a dead step (zeros, its last observation)."""
        if t < len(lane.steps):
            return lane.steps[t]
        if lane.sl.start not in pads:
            pads[lane.sl.start] = dead_step(lane)
        return pads[lane.sl.start]

    def dead_step(lane: _Lane) -> dict:
        last = lane.steps[-1]
        pad = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else np.zeros_like(v)) for k, v in last.items()
               if k != "taken"}
        pad["taken"] = {k: torch.zeros_like(v) for k, v in last["taken"].items()}
        if keep_obs:
            pad["images"], pad["state"], pad["sim_state"] = _obs_tensors(lane.obs, len(lane.alive))
        return pad

    def joined(t: int, key: str, sub: str | None) -> torch.Tensor:
        """Decision t of every group, joined along the env axis; ``sub`` picks an entry of ``taken``."""
        parts = [at(lane, t)[key] for lane in lanes]
        parts = [torch.as_tensor(x if sub is None else x[sub]) for x in parts]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def stack(key, sub=None):  # policy outputs come back to the host once per batch (no copy on the CPU)
        out = torch.stack([joined(t, key, sub) for t in range(T)])
        return out.cpu() if home is None else out.to(home)

    def cat_lanes(attr) -> np.ndarray:
        return np.concatenate([getattr(lane, attr) for lane in lanes])

    rollout = Rollout(
        obs_images=stack("images") if keep_obs else torch.zeros(T, n, 0, dtype=torch.uint8),
        obs_state=stack("state") if keep_obs else torch.zeros(T, n, 0),
        instructions=list(obs.instructions),
        taken={k: stack("taken", k) for k in lanes[0].steps[0]["taken"]},
        actions=stack("actions"), executed=stack("executed"), log_prob=stack("log_prob"), value=stack("value"), next_value=next_value,
        reward=stack("reward").float(), alive=stack("alive"), terminated=stack("terminated"),
        truncated=stack("truncated"), success=torch.from_numpy(cat_lanes("success")),
        valid=torch.from_numpy(cat_lanes("valid")),
        task_id=torch.as_tensor(task_ids, dtype=torch.int64), seed=torch.as_tensor(seeds, dtype=torch.int64),
        group_id=torch.zeros(n, dtype=torch.int64), env_steps=torch.from_numpy(cat_lanes("env_steps")),
        sim_state=stack("sim_state") if keep_obs else torch.zeros(T, n, 0),
    )
    return rollout if home is None else rollout.to(home)


def _obs_tensors(o: Observation, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, state, sim_state) of a decision as tensors where they are (numpy: shared, no copy)."""
    sim = (torch.as_tensor(np.asarray(o.sim_state, np.float32)) if isinstance(o.sim_state, np.ndarray)
           else o.sim_state.float() if o.sim_state is not None
           else torch.zeros(m, 0, device=o.state.device if isinstance(o.state, torch.Tensor) else None))
    return torch.as_tensor(o.images), torch.as_tensor(o.state), sim


def collect(policy, venv: VecEnv, task_ids, seeds, deterministic: bool = False, keep_obs: bool = True,
            record: int = 0, stats: CollectStats | None = None, pipeline: bool = False,
            temperature: float = 1.0, progress=None) -> tuple[Rollout, CollectStats]:
    """Run one episode per (task_id, seed); returns the Rollout (E episodes) and timing stats.

    The policy samples at ``temperature`` (the algorithm's while training; evaluations use 1).
    Episodes from crashed env workers come back with ``valid=False``; callers drop them.
    ``record`` > 0 keeps the image frames of that many episodes per batch (for videos).
    ``pipeline`` overlaps the policy with simulation (module doc); the Rollout is the same either way.
    ``progress(done, total)`` is called after each batch of ``venv.num_envs`` episodes.
    """
    task_ids = np.asarray(task_ids, np.int64)
    seeds = np.asarray(seeds, np.int64)
    E, n = len(task_ids), venv.num_envs
    stats = stats or CollectStats()
    parts = []
    was_training = policy.training
    policy.eval()
    try:
        for start in range(0, E, n):
            tid, sd = task_ids[start:start + n], seeds[start:start + n]
            m = len(tid)
            if m < n:  # pad the last batch; padded episodes are dropped below
                tid = np.concatenate([tid, np.repeat(tid[-1:], n - m)])
                sd = np.concatenate([sd, np.repeat(sd[-1:], n - m)])
            r = _collect_batch(policy, venv, tid, sd, deterministic, keep_obs, stats, record, pipeline, temperature)
            parts.append(r.select(torch.arange(m)) if m < n else r)
            if progress is not None:
                progress(start + m, E)
    finally:
        if was_training:
            policy.train()
    rollout = Rollout.cat(parts)
    rollout.group_id = torch.from_numpy(group_ids_for(task_ids, seeds)).to(rollout.task_id.device)
    stats.env_steps += int(rollout.env_steps.sum())
    stats.episodes += E
    stats.invalid += int((~rollout.valid).sum())
    return rollout, stats
