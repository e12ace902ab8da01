"""``EnvOptions``: which simulator, which tasks, how many envs and env workers, and the suite's extra env options.

The env options that ``vlaforge collect``, ``eval``, ``train`` and ``demo`` share, with the same flags
(``--suite --tasks --num-envs --workers --env-kwargs``) and the same meaning in each. Each command's
config derives from it and re-declares a field only to change its default (``eval`` evaluates all
tasks, ``train`` steps 16 envs, ``demo`` runs Meta-World's reach-v3 on 2 workers).
``validate.check_env_options`` checks them for every command.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
