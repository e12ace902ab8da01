"""Simulator suites behind one batched interface.

``make_vec_env("metaworld", num_envs=8, tasks="reach-v3,button-press-topdown-v3")`` builds a
``VecEnv`` of the named suite; ``workers > 0`` runs the envs in subprocesses.
Suites other than ``pointreach`` need an optional extra; a missing one raises ``MissingExtra``
with the install command.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

from vlaforge.envs.base import ChunkResult, EnvError, EnvSpec, TaskEnv, TaskSpec, VecEnv, VecStep, check_env

__all__ = ["SUITES", "ChunkResult", "EnvError", "EnvSpec", "MissingExtra", "TaskEnv", "TaskSpec", "VecEnv",
           "VecStep", "check_env", "env_factory", "make_vec_env", "suite_spec"]

# suite name -> (module, class, optional extra that provides it)
SUITES: dict[str, tuple[str, str, str | None]] = {
    "pointreach": ("vlaforge.envs.pointreach", "PointReachEnv", None),
    "metaworld": ("vlaforge.envs.metaworld", "MetaWorldEnv", "metaworld"),
    "kitchen": ("vlaforge.envs.kitchen", "KitchenEnv", "kitchen"),
    "libero": ("vlaforge.envs.libero", "LiberoEnv", "libero"),
    "maniskill": ("vlaforge.envs.maniskill", "ManiSkillEnv", "maniskill"),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


def require(module: str, extra: str):
    """Import an optional dependency or raise a one-line error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"'{module}' is not installed ({e.msg}); install it with: pip install 'vlaforge[{extra}]'") from None


def _env_class(suite: str) -> type:
    if suite not in SUITES:
        raise EnvError(f"unknown suite '{suite}'; choose one of: {', '.join(SUITES)}")
    module, cls, _extra = SUITES[suite]
    return getattr(importlib.import_module(module), cls)


def _build(suite: str, tasks, image_size: int, kwargs: dict) -> TaskEnv:
    return _env_class(suite)(tasks=tasks, image_size=image_size, **kwargs)


def env_factory(suite: str, tasks: str | list[str] | None = None, image_size: int = 64, **kwargs) -> Callable[[], TaskEnv]:
    """A picklable zero-argument constructor of one env (for subprocess workers)."""
    _env_class(suite)  # fail early on unknown suite / missing extra
    return functools.partial(_build, suite, tasks, image_size, kwargs)


def suite_task_names(spec, tasks: str | None) -> list[str]:
    """Resolve a task selection against a built env: names, or 'train' / 'heldout' / 'all'."""
    if tasks in (None, "all"):
        return [t.name for t in spec.tasks]
    if tasks in ("train", "heldout"):
        return [t.name for t in spec.tasks if t.split == tasks]
    names = [n.strip() for n in tasks.split(",")]
    for n in names:
        spec.task_index(n)  # raises a clear EnvError on an unknown name
    return names


def suite_spec(suite: str, tasks: str | list[str] | None = None, image_size: int = 64, **kwargs) -> EnvSpec:
    """The EnvSpec of a suite without keeping an env around."""
    env = env_factory(suite, tasks, image_size, **kwargs)()
    try:
        return env.spec
    finally:
        env.close()


def make_vec_env(suite: str, num_envs: int, tasks: str | list[str] | None = None, image_size: int = 64,
                 workers: int = 0, **kwargs) -> VecEnv:
    """Build N envs of a suite; ``workers=0`` steps them in this process, else in that many subprocesses."""
    from vlaforge.envs.vector import SubprocVecEnv, SyncVecEnv

    if num_envs < 1:
        raise EnvError("num_envs must be >= 1")
    fn = env_factory(suite, tasks, image_size, **kwargs)
    if workers and workers > 0:
        return SubprocVecEnv(fn, num_envs, workers=workers)
    return SyncVecEnv(fn, num_envs)
