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
from typing import NamedTuple

from vlaforge.envs.base import ChunkResult, EnvError, EnvSpec, TaskEnv, TaskSpec, VecEnv, VecStep, check_env

__all__ = ["SUITES", "ChunkResult", "EnvError", "EnvSpec", "MissingExtra", "Suite", "TaskEnv", "TaskSpec", "VecEnv",
           "VecStep", "check_env", "env_class", "env_factory", "env_kwargs", "env_tasks", "eval_task_names", "make_vec_env", "suite_info", "suite_spec"]


class Suite(NamedTuple):
    """What the rest of vlaforge may know about a suite without importing its simulator."""

    module: str
    """module that defines the env class"""
    cls: str
    """the TaskEnv class"""
    extra: str | None
    """optional dependency group that provides the simulator (None: always installed)"""
    holds_all_tasks: bool = False
    """one env holds every task of the suite and a run selects among them (its envs are built with
    ``tasks=None``); otherwise envs are built with the selected tasks only"""
    batched: tuple[str, str] | None = None
    """``("module:wants", "module:make")``: ``wants(env_kwargs) -> bool`` says whether the env options ask for one
    simulator stepping every env at once on a device (``envs/batched.py``), and ``make(num_envs, tasks,
    image_size, **env_kwargs) -> VecEnv`` builds it"""


SUITES: dict[str, Suite] = {
    "pointreach": Suite("vlaforge.envs.pointreach", "PointReachEnv", None, holds_all_tasks=True,
                        batched=("vlaforge.envs.pointreach:wants_batched",
                                 "vlaforge.envs.pointreach:batched_vec_env")),
    "metaworld": Suite("vlaforge.envs.metaworld", "MetaWorldEnv", "metaworld"),
    "kitchen": Suite("vlaforge.envs.kitchen", "KitchenEnv", "kitchen"),
    "libero": Suite("vlaforge.envs.libero", "LiberoEnv", "libero"),
    "maniskill": Suite("vlaforge.envs.maniskill", "ManiSkillEnv", "maniskill",
                       batched=("vlaforge.envs.maniskill:wants_batched",
                                "vlaforge.envs.maniskill:batched_vec_env")),
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


def require(module: str, extra: str):
    """Import an optional dependency or raise a one-line error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"'{module}' is not installed ({e.msg}); install it with: pip install 'vlaforge[{extra}]'") from None


def suite_info(name: str) -> Suite:
    """The registry entry of a suite; an unknown name raises ``EnvError`` listing the known ones."""
    if name not in SUITES:
        raise EnvError(f"unknown suite '{name}'; choose one of: {', '.join(SUITES)}")
    return SUITES[name]


def env_class(name: str) -> type:
    """The suite's ``TaskEnv`` class (imports its simulator: ``MissingExtra`` without it)."""
    s = suite_info(name)
    return getattr(importlib.import_module(s.module), s.cls)


def _ref(ref: str):
    mod, name = ref.split(":")
    return getattr(importlib.import_module(mod), name)


def wants_batched(suite: str, kwargs: dict) -> bool:
    """Whether ``--env-kwargs`` ask this suite for its batched simulator (``Suite.batched``)."""
    b = suite_info(suite).batched
    return b is not None and bool(_ref(b[0])(kwargs))


def env_tasks(name: str, tasks: str | list[str] | None) -> str | list[str] | None:
    """The ``tasks`` to build a suite's envs with: None for a suite that holds all its tasks, else ``tasks``."""
    return None if suite_info(name).holds_all_tasks else tasks


def env_kwargs(extra: dict, max_steps: int | None) -> dict:
    """Env constructor keywords: ``--env-kwargs`` plus ``--max-steps`` when set (0/None: the suite's default)."""
    return {**extra, **({"max_steps": max_steps} if max_steps else {})}


def _build(suite: str, tasks, image_size: int, kwargs: dict) -> TaskEnv:
    return env_class(suite)(tasks=tasks, image_size=image_size, **kwargs)


def env_factory(suite: str, tasks: str | list[str] | None = None, image_size: int = 64, **kwargs) -> Callable[[], TaskEnv]:
    """A picklable zero-argument constructor of one env (for subprocess workers)."""
    env_class(suite)  # fail early on unknown suite / missing extra
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


def eval_task_names(suite: str, spec, tasks: str | None, image_size: int = 64) -> list[str]:
    """``--eval-tasks`` against a run's built envs (``spec``): what ``suite_task_names`` resolves, or -- for a suite
    whose envs are built with their selection -- one benchmark name the suite knows ("MT10"), resolved as ``--tasks``
    is; every task it names must be among the run's (the evaluation uses the run's envs)."""
    try:
        return suite_task_names(spec, tasks)
    except EnvError:
        if suite_info(suite).holds_all_tasks or not tasks or "," in tasks:
            raise
    names = [t.name for t in suite_spec(suite, tasks, image_size=image_size).tasks]
    for n in names:
        spec.task_index(n)  # the same one-line EnvError as a name outside the run's tasks
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
    """Build N envs of a suite; ``workers=0`` steps them in this process, else in that many subprocesses. A suite
    whose env options ask for batched simulation (``Suite.batched``: ManiSkill's ``sim_backend gpu``) gets one
    simulator of N scenes instead (``envs/batched.py``; its observations stay on its device)."""
    from vlaforge.envs.vector import SubprocVecEnv, SyncVecEnv

    if num_envs < 1:
        raise EnvError("num_envs must be >= 1")
    fn = env_factory(suite, tasks, image_size, **kwargs)
    if wants_batched(suite, kwargs):
        if workers and workers > 0:
            raise EnvError(f"{suite} with these env options simulates every env in one batched process; "
                           "drop --workers (or use the per-scene simulator)")
        return _ref(suite_info(suite).batched[1])(num_envs, tasks, image_size, **kwargs)
    if workers and workers > 0:
        return SubprocVecEnv(fn, num_envs, workers=workers)
    return SyncVecEnv(fn, num_envs)
