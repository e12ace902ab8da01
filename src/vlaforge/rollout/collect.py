"""Collect episodes with a policy: N envs in parallel, K rollouts per initial state.

``collect(policy, venv, task_ids, seeds)`` runs one episode per (task_id, seed) entry, in
batches of ``venv.num_envs``; entries with equal (task_id, seed) start from the identical
state and share a ``group_id`` (GRPO / RLOO / RIPT-VLA groups). The returned ``Rollout``
keeps everything needed to score the same actions again under a new policy: the
observations, the head's ``taken`` record and the sampling log-probs, computed with the same
distribution and temperature that sampled them. With ``keep_obs`` it also keeps the suite's
privileged ``sim_state`` per decision (``Rollout.sim_state (T, N, P)``, P = 0 for suites without
one) for reward models; the policy never sees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vlaforge.envs.base import VecEnv
from vlaforge.types import Rollout


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


def _collect_batch(policy, venv: VecEnv, task_ids, seeds, deterministic: bool, keep_obs: bool, stats: CollectStats,
                   record: int):
    n = venv.num_envs
    t0 = time.perf_counter()
    obs = venv.reset(task_ids, seeds)
    stats.sim_time += time.perf_counter() - t0
    alive = np.ones(n, bool)
    steps: list[dict] = []
    env_steps = np.zeros(n, np.int64)
    success = np.zeros(n, bool)
    valid = np.ones(n, bool)
    frames = [[obs.images[i]] for i in range(min(record, n))]
    while alive.any():
        t0 = time.perf_counter()
        out = policy.act(obs, deterministic=deterministic)
        t1 = time.perf_counter()
        st = venv.step(out.actions.detach().cpu().numpy())
        t2 = time.perf_counter()
        stats.policy_time += t1 - t0
        stats.sim_time += t2 - t1
        stats.decisions += int(alive.sum())
        rec = {
            "alive": alive.copy(), "reward": st.reward * alive, "terminated": st.done & ~st.truncated & alive,
            "truncated": st.truncated & alive, "log_prob": out.log_prob.detach(),
            "value": out.value.detach() if out.value is not None else torch.zeros(n),
            "taken": {k: v.detach() for k, v in out.taken.items()},
            "actions": out.actions.detach(), "executed": st.steps * alive,
        }
        if keep_obs:
            rec["images"], rec["state"] = torch.from_numpy(obs.images), torch.from_numpy(obs.state)
            rec["sim_state"] = (torch.from_numpy(np.asarray(obs.sim_state, np.float32)) if obs.sim_state is not None
                                else torch.zeros(n, 0))
        steps.append(rec)
        env_steps += st.steps * alive
        success |= st.success & alive
        valid &= st.valid
        for i in range(len(frames)):
            if alive[i]:
                frames[i].append(st.obs.images[i])
        alive &= ~st.done
        obs = st.obs
    next_value = torch.zeros(n)
    if getattr(policy, "value_net", None) is not None and keep_obs:
        with torch.no_grad():
            next_value = policy.value(obs).detach()
    stats.frames.extend(frames)
    T = len(steps)

    def stack(key):
        return torch.stack([torch.as_tensor(s[key]) for s in steps])

    return Rollout(
        obs_images=stack("images") if keep_obs else torch.zeros(T, n, 0, dtype=torch.uint8),
        obs_state=stack("state") if keep_obs else torch.zeros(T, n, 0),
        instructions=list(obs.instructions),
        taken={k: torch.stack([s["taken"][k] for s in steps]) for k in steps[0]["taken"]},
        actions=stack("actions"), executed=stack("executed"), log_prob=stack("log_prob"), value=stack("value"), next_value=next_value,
        reward=stack("reward").float(), alive=stack("alive"), terminated=stack("terminated"),
        truncated=stack("truncated"), success=torch.from_numpy(success), valid=torch.from_numpy(valid),
        task_id=torch.as_tensor(task_ids, dtype=torch.int64), seed=torch.as_tensor(seeds, dtype=torch.int64),
        group_id=torch.zeros(n, dtype=torch.int64), env_steps=torch.from_numpy(env_steps),
        sim_state=stack("sim_state") if keep_obs else torch.zeros(T, n, 0),
    )


def collect(policy, venv: VecEnv, task_ids, seeds, deterministic: bool = False, keep_obs: bool = True,
            record: int = 0, stats: CollectStats | None = None) -> tuple[Rollout, CollectStats]:
    """Run one episode per (task_id, seed); returns the Rollout (E episodes) and timing stats.

    Episodes from crashed env workers come back with ``valid=False``; callers drop them.
    ``record`` > 0 keeps the image frames of that many episodes per batch (for videos).
    """
    task_ids = np.asarray(task_ids, np.int64)
    seeds = np.asarray(seeds, np.int64)
    E, n = len(task_ids), venv.num_envs
    stats = stats or CollectStats()
    parts = []
    was_training = getattr(policy, "training", False)
    if hasattr(policy, "eval"):
        policy.eval()
    try:
        for start in range(0, E, n):
            tid, sd = task_ids[start:start + n], seeds[start:start + n]
            m = len(tid)
            if m < n:  # pad the last batch; padded episodes are dropped below
                tid = np.concatenate([tid, np.repeat(tid[-1:], n - m)])
                sd = np.concatenate([sd, np.repeat(sd[-1:], n - m)])
            r = _collect_batch(policy, venv, tid, sd, deterministic, keep_obs, stats, record)
            parts.append(r.select(torch.arange(m)) if m < n else r)
    finally:
        if was_training:
            policy.train()
    rollout = Rollout.cat(parts)
    rollout.group_id = torch.from_numpy(group_ids_for(task_ids, seeds))
    stats.env_steps += int(rollout.env_steps.sum())
    stats.episodes += E
    stats.invalid += int((~rollout.valid).sum())
    return rollout, stats
