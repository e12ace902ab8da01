"""Evaluation: success per task over fixed seeds, Wilson 95% intervals, a manifest, videos.

Evaluation seeds come from ``eval_seeds`` (offset far from the ranges used for demos and
training), so a reported success rate is never measured on a training initial state.

Protocol (what the numbers mean; every table prints the seeds and episode counts with it):

* ``success_once``: the task was solved at some step of the episode. This is ``success_rate`` /
  ``successes`` in manifests and ``eval/success_*`` in training logs.
* ``success_at_end``: the task is solved at the episode's last step (the state the episode ends in).
* An episode cut by the time limit (truncated) is never a success under either metric, and an
  episode of a crashed env worker is not counted at all (``episodes`` counts the valid ones).

Every suite here ends an episode at its first success, so the two agree by construction; they differ
only for an env that keeps running after a success (and then ``success_at_end`` is the stricter one).
Some papers report success-at-end (e.g. ManiSkill's ``success_at_end``); compare like with like.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from vlaforge.envs.base import VecEnv
from vlaforge.fsutil import atomic_path, atomic_write_text
from vlaforge.rollout.collect import collect

EVAL_SEED_BASE = 10_000_000  # demos use seeds < 1e7 (see data/demos.py), training draws from [0, 1e6)


def eval_seeds(n: int, base: int = EVAL_SEED_BASE) -> np.ndarray:
    return np.arange(base, base + n, dtype=np.int64)


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval for a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class TaskResult:
    task: str
    split: str
    successes: int
    """episodes solved at some step (success_once)"""
    episodes: int
    """valid episodes evaluated"""
    successes_at_end: int | None = None
    """episodes solved at their last step (success_at_end); None when not measured"""

    @property
    def rate(self) -> float:
        return self.successes / max(self.episodes, 1)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.successes, self.episodes)

    @property
    def rate_at_end(self) -> float | None:
        return None if self.successes_at_end is None else self.successes_at_end / max(self.episodes, 1)

    def as_dict(self) -> dict:
        lo, hi = self.interval
        return {"task": self.task, "split": self.split, "successes": self.successes, "episodes": self.episodes,
                "success_rate": self.rate, "ci95": [lo, hi], "success_once": self.rate,
                "successes_at_end": self.successes_at_end, "success_at_end": self.rate_at_end}


def last_steps(alive):
    """(N,) index of each episode's last alive step, from ``alive`` (T, N) bools (alive from t=0 to the end)."""
    import torch

    return (alive.long() * torch.arange(alive.shape[0]).unsqueeze(1)).max(0).values


def episode_outcomes(rollout) -> tuple:
    """Per episode (N,) bools ``(once, at_end)`` of a collected ``Rollout``: solved at some step, and solved
    at the last step. An episode whose last step is truncated (time limit) is a success under neither."""
    import torch

    alive = rollout.alive  # (T, N)
    last = last_steps(alive)
    cols = torch.arange(alive.shape[1])
    truncated = rollout.truncated[last, cols]
    once = rollout.success & ~truncated
    at_end = rollout.terminated[last, cols] & rollout.success & ~truncated
    return once, at_end


def evaluate_policy(policy, venv: VecEnv, tasks: list[str], episodes: int, deterministic: bool = True,
                    seed_base: int = EVAL_SEED_BASE, videos: int = 0, video_dir: str | Path | None = None,
                    progress=None):
    """Success per task on ``episodes`` fixed seeds each. Returns (list[TaskResult], stats). ``progress(done,
    total)``: called with the episodes finished after each batch."""
    spec = venv.spec
    tids = np.repeat([spec.task_index(t) for t in tasks], episodes)
    seeds = np.tile(eval_seeds(episodes, seed_base), len(tasks))
    rollout, stats = collect(policy, venv, tids, seeds, deterministic=deterministic, keep_obs=False,
                             record=videos, progress=progress)
    once, at_end = episode_outcomes(rollout)
    results = []
    for t in tasks:
        i = spec.task_index(t)
        m = (rollout.task_id == i) & rollout.valid
        results.append(TaskResult(t, spec.tasks[i].split, int(once[m].sum()), int(m.sum()), int(at_end[m].sum())))
    if videos and video_dir is not None:
        write_videos(stats.frames, video_dir)
    return results, stats


def write_videos(frames: list, video_dir: str | Path, fps: int = 10, scale: int = 4) -> list[Path]:
    import imageio.v3 as iio

    video_dir = Path(video_dir)
    video_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ep in enumerate(frames):
        arr = np.stack([np.concatenate(list(f), 1) for f in ep])  # views side by side
        arr = arr.repeat(scale, 1).repeat(scale, 2)
        p = video_dir / f"episode_{i:03d}.mp4"
        with atomic_path(p) as tmp:
            iio.imwrite(tmp, arr, fps=fps, codec="libx264", macro_block_size=1)
        paths.append(p)
    return paths


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("vlaforge", "torch", "numpy", "mujoco", "metaworld", "gymnasium", "gymnasium-robotics"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def manifest(spec, tasks: list[str], episodes: int, seed_base: int, checkpoint_hash: str | None,
             results: list[TaskResult], extra: dict | None = None) -> dict:
    V, H, W, _ = spec.image_shape
    total = sum(r.successes for r in results), sum(r.episodes for r in results)
    at_end = sum(r.successes_at_end or 0 for r in results)
    return {
        "suite": spec.suite, "tasks": tasks, "episodes_per_task": episodes,
        "seeds": {"base": seed_base, "count": episodes, "rule": "seed_base + k, k < episodes, same for every task"},
        "renderer": spec.renderer, "camera": list(spec.cameras), "image_size": [H, W], "views": V,
        "max_steps": spec.max_steps, "checkpoint_sha256_16": checkpoint_hash, "versions": _versions(),
        "results": [r.as_dict() for r in results],
        "overall": {"successes": total[0], "episodes": total[1], "success_rate": total[0] / max(total[1], 1),
                    "ci95": list(wilson(*total)), "success_once": total[0] / max(total[1], 1),
                    "successes_at_end": at_end, "success_at_end": at_end / max(total[1], 1),
                    "ci95_at_end": list(wilson(at_end, total[1]))},
        "metrics": {"success_rate": "success_once: solved at some step of the episode",
                    "success_once": "solved at some step of the episode",
                    "success_at_end": "solved at the episode's last step",
                    "truncated": "an episode ended by the time limit is never a success",
                    "episodes": "valid episodes (crashed env workers' episodes are not counted)"},
        **(extra or {}),
    }


def write_manifest(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def protocol_line(episodes: int, seed_base: int = EVAL_SEED_BASE, deterministic: bool = True) -> str:
    """The evaluation protocol in one line: printed under every table of results."""
    return (f"eval: {episodes} episodes per task on seeds {seed_base}..{seed_base + episodes - 1} (same for every "
            f"task), {'deterministic (mode)' if deterministic else 'sampled'} actions; success_once = solved at "
            "some step, success_at_end = solved at the last step; truncated episodes never count")


def format_table(results: list[TaskResult], title: str = "", episodes: int | None = None,
                 seed_base: int = EVAL_SEED_BASE, deterministic: bool = True) -> str:
    """A plain-text table of success per task (success_once with its Wilson interval, and success_at_end),
    followed by the protocol line (seeds and episode counts) when ``episodes`` is given."""
    lines = [title] if title else []
    w = max([len(r.task) for r in results] + [4])
    lines.append(f"{'task':<{w}}  {'split':<7}  {'once':>9}  {'rate':>5}  {'95% CI':<12}  {'at_end':>6}")
    for r in results:
        lo, hi = r.interval
        end = "-" if r.rate_at_end is None else f"{r.rate_at_end:.2f}"
        lines.append(f"{r.task:<{w}}  {r.split:<7}  {r.successes:>4}/{r.episodes:<4}  {r.rate:5.2f}  "
                     f"[{lo:.2f}, {hi:.2f}]  {end:>6}")
    lost = [r for r in results if episodes is not None and r.episodes < episodes]
    if episodes is not None:
        lines.append(protocol_line(episodes, seed_base, deterministic))
    if lost:
        lines.append(f"warning: {sum(episodes - r.episodes for r in lost)} episodes lost to crashed env workers "
                     "(not counted)")
    return "\n".join(lines)
