"""Does a pixel policy go where the goal is? For each policy, one task, the evaluation seeds (from 10,000,000): the
end effector at each episode's last decision and the goal, both read from the suite's privileged ``sim_state``
(never an input of the policy), and per axis the least-squares slope of the final end-effector coordinate on the
goal's (1: the hand follows the goal; 0: it goes to the same place whatever the goal).

The companion of ``goal_pixels.py`` (how many pixels the goal marker covers): a policy that cannot see the goal
ends at one spot; one that sees it follows it.

    MUJOCO_GL=egl python benchmarks/goal_follow.py --task reach-v3 --episodes 50 \\
        --policy base=runs/generalist4/N25_S5000_cos/sft --policy student=DIR/final --out docs/bench/goal_follow.json

JSON: ``{"meta": {...}, "rows": [{"policy", "path", "task", "episodes", "successes", "axes", "slope",
"goal_std", "final_ee_std", "final_dist_mean", "final_dist_failures_mean"}]}`` (``slope``, ``goal_std`` and
``final_ee_std`` are per axis, in the order of ``axes``; distances in the suite's units; ``final_dist_failures_mean``
is null when every episode succeeded).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.envs import env_tasks, make_vec_env, suite_spec
from vlaforge.envs.base import EnvError
from vlaforge.errors import UsageError
from vlaforge.fsutil import atomic_write_text
from vlaforge.policies import load_policy
from vlaforge.rollout.collect import collect
from vlaforge.rollout.evaluate import EVAL_SEED_BASE, episode_outcomes, eval_seeds, last_steps


class BadInput(ValueError):
    """A bad command line: reported in one line before any work."""


def goal_axes(names: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(axis, ee index, goal index) for every axis with both ``ee_<axis>`` and ``goal_<axis>`` in the sim_state."""
    return [(n[3:], names.index(n), names.index("goal_" + n[3:])) for n in names
            if n.startswith("ee_") and "goal_" + n[3:] in names]


def follow_stats(ee: np.ndarray, goal: np.ndarray, success: np.ndarray) -> dict:
    """``ee``, ``goal``: (E, A) final end-effector and goal coordinates; ``success``: (E,) bools. The per-axis slope of
    ee on goal (least squares with an intercept; 0 where the goal does not vary), the spreads and the distances."""
    slope = []
    for k in range(ee.shape[1]):
        g = goal[:, k] - goal[:, k].mean()
        var = float((g * g).sum())
        slope.append(round(float((g * (ee[:, k] - ee[:, k].mean())).sum()) / var, 4) if var > 0 else 0.0)
    dist = np.linalg.norm(ee - goal, axis=1)
    return {"successes": int(success.sum()), "slope": slope, "goal_std": [round(float(v), 5) for v in goal.std(0)],
            "final_ee_std": [round(float(v), 5) for v in ee.std(0)], "final_dist_mean": round(float(dist.mean()), 5),
            "final_dist_failures_mean": round(float(dist[~success].mean()), 5) if (~success).any() else None}


def probe(path: str, suite: str, task: str, episodes: int, num_envs: int, max_steps: int) -> dict:
    """One policy on ``episodes`` evaluation seeds of ``task`` (deterministic actions, in this process): the axes
    and ``follow_stats`` of the sim_state at each episode's last decision."""
    policy = load_policy(path)
    venv = make_vec_env(suite, num_envs, tasks=env_tasks(suite, task), image_size=policy.cfg.image_size,
                        max_steps=max_steps)
    try:
        spec = venv.spec
        axes = goal_axes(tuple(spec.sim_state_names))
        ro, _ = collect(policy, venv, np.full(episodes, spec.task_index(task)), eval_seeds(episodes),
                        deterministic=True, keep_obs=True)
    finally:
        venv.close()
    once, _ = episode_outcomes(ro)
    state = ro.sim_state[last_steps(ro.alive), torch.arange(episodes)].numpy()
    ee = state[:, [i for _, i, _ in axes]]
    goal = state[:, [j for _, _, j in axes]]
    return {"axes": [a for a, _, _ in axes], **follow_stats(ee, goal, once.numpy().astype(bool))}


def check_task(suite: str, task: str, max_steps: int) -> None:
    """Refuse (``BadInput``) a suite or task the suite does not hold, or a suite without ee_*/goal_* state, before
    any policy is loaded: one env is built and closed."""
    try:
        spec = suite_spec(suite, env_tasks(suite, task), max_steps=max_steps)
    except (EnvError, UsageError) as e:
        raise BadInput(str(e)) from None
    names = [t.name for t in spec.tasks]
    if task not in names:
        raise BadInput(f"--task '{task}' is not a task of {suite}; its tasks: {', '.join(names[:12])}")
    if not goal_axes(tuple(spec.sim_state_names)):
        raise BadInput(f"{suite}'s sim_state has no ee_*/goal_* pair: nothing to compare")


def parse_policies(items: list[str]) -> list[tuple[str, str]]:
    """``NAME=DIR`` items as (name, dir) pairs; a malformed item, a folder without config.json or a repeated name is
    a ``BadInput``."""
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise BadInput(f"--policy '{item}' is not NAME=DIR (e.g. base=runs/g/sft)")
        if not (Path(path) / "config.json").is_file():
            raise BadInput(f"--policy {name}: '{path}' holds no policy (no config.json)")
        out.append((name, path))
    if len({n for n, _ in out}) != len(out):
        raise BadInput("--policy names must differ")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", action="append", default=[], help="NAME=DIR, repeated: the policies to probe")
    ap.add_argument("--suite", default="metaworld")
    ap.add_argument("--task", default="reach-v3")
    ap.add_argument("--episodes", type=int, default=50, help="evaluation seeds from 10,000,000")
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/bench/goal_follow.json")
    a = ap.parse_args(argv)
    try:
        if not a.policy:
            raise BadInput("name at least one --policy NAME=DIR")
        policies = parse_policies(a.policy)
        for flag, v in (("--episodes", a.episodes), ("--num-envs", a.num_envs), ("--max-steps", a.max_steps),
                        ("--threads", a.threads)):
            if v < 1:
                raise BadInput(f"{flag} must be >= 1; got {v}")
        if Path(a.out).is_dir() or not Path(a.out).parent.is_dir():
            raise BadInput(f"--out '{a.out}': name a file in an existing folder")
        check_task(a.suite, a.task, a.max_steps)
        torch.set_num_threads(a.threads)
        rows, t0 = [], time.time()
        for name, path in policies:
            rows.append({"policy": name, "path": path, "task": a.task, "episodes": a.episodes,
                         **probe(path, a.suite, a.task, a.episodes, a.num_envs, a.max_steps)})
            print(json.dumps(rows[-1]), flush=True)
    except BadInput as e:
        ap.exit(2, f"goal_follow.py: error: {e}\n")
    meta = {"benchmark": "goal_follow", "issue": "23", "date": time.strftime("%Y-%m-%d"),
            "command": "python benchmarks/goal_follow.py " + shlex.join(sys.argv[1:] if argv is None else argv),
            "seeds": f"{EVAL_SEED_BASE}..{EVAL_SEED_BASE + a.episodes - 1}, deterministic (mode) actions",
            "state": "the sim_state at each episode's last decision (before its last chunk; episodes end at first "
                     "success)", "machine": platform.processor() or platform.machine(), "wall_s": round(time.time() - t0, 1)}
    out = {"meta": meta, "rows": rows}
    atomic_write_text(Path(a.out), json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
