"""``EnvOptions``: which simulator, which tasks, how many envs and env workers, and the suite's extra env options.

The env options that ``vlaforge collect``, ``eval``, ``train`` and ``demo`` share, with the same flags
(``--suite --tasks --num-envs --workers --env-kwargs``) and the same meaning in each. Each command's
config derives from it and re-declares a field only to change its default (``eval`` evaluates all
tasks, ``train`` steps 16 envs, ``demo`` runs Meta-World's reach-v3 on 2 workers).
``EnvOptions.check`` checks them (every command's check and ``train()`` call it); ``check_env_kwargs`` reads the
suite's options from its env constructor's signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from vlaforge.checks import at_least, finite, need, num_envs, task_list
from vlaforge.envs import SUITES, EnvError, env_class
from vlaforge.errors import UsageError

POSITIVE_ENV_OPTIONS = {"radius", "speed", "max_steps", "cache"}
NONNEG_ENV_OPTIONS = {"shaping", "settle_steps"}


def check_env_kwargs(suite: str, kwargs: dict, name: str = "--env-kwargs", taken: dict[str, str] | None = None) -> dict:
    """``kwargs`` against the keyword options of the suite's env constructor (read with inspect.signature).

    Returns them with whole-number options cast to int (switches stay 0.0 / 1.0, as the config type says).
    ``taken``: option -> the flag that sets it already (``image_size`` -> ``--image-size``)."""
    if suite not in SUITES:
        raise EnvError(f"unknown suite '{suite}'; choose one of: {', '.join(SUITES)}")
    params = inspect.signature(env_class(suite).__init__).parameters
    options = {k: p for k, p in params.items() if k not in ("self", "tasks") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    taken = {"image_size": "--image-size", **(taken or {})}
    out = {}
    for k, v in kwargs.items():
        if k in taken:
            raise UsageError(f"{name} {k}: set it with {taken[k]} instead")
        if k not in options:
            known = ", ".join(o for o in options if o not in taken)
            raise UsageError(f"{name}: suite '{suite}' has no option '{k}'; its options: {known}")
        d = options[k].default
        if isinstance(d, tuple) and d and isinstance(d[0], str):
            raise UsageError(f"{name} {k}: a list option, which --env-kwargs cannot set")
        if isinstance(d, str):  # a text option (ManiSkill's sim_backend): the env checks its value
            need(isinstance(v, str), f"{name} {k} is a text option (e.g. '{d}'); got the number {v}")
            out[k] = v
            continue
        need(not isinstance(v, str), f"{name} {k} must be a number; got '{v}'")
        finite(f"{name} {k}", v)
        if isinstance(d, bool):
            need(v in (0, 1), f"{name} {k} is a switch: pass 0 or 1; got {v}")  # kept a number (dict[str, float])
        elif isinstance(d, int) or (d is None and k == "max_steps"):
            need(float(v).is_integer(), f"{name} {k} must be a whole number; got {v}")
            v = int(v)
        if k in POSITIVE_ENV_OPTIONS:
            need(v > 0, f"{name} {k} must be > 0; got {v}")
        if k in NONNEG_ENV_OPTIONS:
            need(v >= 0, f"{name} {k} must be >= 0; got {v}")
        out[k] = v
    return out


@dataclass
class EnvOptions:
    """The simulator suite, the tasks, the envs stepped in parallel and where they run."""

    suite: str = "pointreach"
    """simulator suite: pointreach | metaworld | kitchen | libero | maniskill (all but pointreach need their
    extra, e.g. pip install 'vlaforge[metaworld]')"""
    tasks: str = "train"
    """comma-separated task names, or a split/benchmark name the suite knows (train / heldout / all)"""
    num_envs: int = 8
    """envs stepped in parallel"""
    workers: int = 0
    """env subprocesses (0 = in process)"""
    env_kwargs: dict[str, float | str] = field(default_factory=dict)
    """extra options of the suite's env constructor, as name value pairs (e.g. PointReach's radius, Meta-World's
    shaping; text options such as ManiSkill's sim_backend gpu)"""

    def check(self, max_steps: int | None = None) -> None:
        """Tasks, envs, workers, env kwargs (cast to their types in place). ``max_steps``: the command's
        ``--max-steps`` when set (then not an env kwarg)."""
        task_list("--tasks", self.tasks)
        num_envs(self.num_envs)
        at_least("--workers", self.workers, 0, " (0 = envs in this process)")
        self.env_kwargs = check_env_kwargs(self.suite, self.env_kwargs,
                                           taken={"max_steps": "--max-steps"} if max_steps else {})
