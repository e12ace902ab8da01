"""Scale-out on Ray: the Ray backend of ``train()`` — rollouts spread over env-worker actors, updates over
data-parallel learner actors. Importing this package registers it as the "ray" backend
(``train.backend.register_backend``); ``vlaforge train --ray`` then uses it.

    vlaforge train --algo rloo --suite metaworld --ray --ray.env-workers 8 --ray.learners 2

Ray is an optional extra (``pip install 'vlaforge[ray]'``), imported only when a run starts. See
``driver.py`` for the backend and ``actors.py`` for the two actor roles; docs/distributed.md for a
multi-node launch.
"""

from __future__ import annotations

from vlaforge.distributed.driver import RayBackend, RunFailed
from vlaforge.train.backend import RayConfig, register_backend

__all__ = ["RayBackend", "RayConfig", "RunFailed"]

register_backend("ray", RayBackend)
