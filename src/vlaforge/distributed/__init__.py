"""Scale-out on Ray: the training loop of ``train/loop.py`` with rollouts spread over env-worker
actors and updates over data-parallel learner actors.

    vlaforge train --algo rloo --suite metaworld --ray --ray.env-workers 8 --ray.learners 2

Ray is an optional extra (``pip install 'vlaforge[ray]'``); this package imports it only when a
run starts. ``RayConfig`` lives in ``config.py`` so that every ``TrainConfig`` can carry one.
See ``driver.py`` for the loop and ``actors.py`` for the two actor roles; docs/distributed.md
for a multi-node launch.
"""

from __future__ import annotations

from vlaforge.distributed.config import RayConfig

__all__ = ["RayConfig", "RunFailed", "train_ray"]


class RunFailed(RuntimeError):
    """A Ray run cannot go on (a learner died, env workers keep dying, the cluster lacks resources).
    The message says what happened and how to resume."""


def train_ray(cfg, hooks=None) -> dict:
    """``train(cfg, hooks)`` on a Ray cluster; see ``vlaforge.distributed.driver``."""
    from vlaforge.distributed.driver import train_ray as _train_ray

    return _train_ray(cfg, hooks)
