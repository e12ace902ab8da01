"""``Hooks``: the points where a recipe (or a test) plugs into ``train(cfg, hooks)``, each a no-op by default.

Subclass and override what you need; the loop calls every method on every iteration, so nothing is
probed with ``hasattr``.

    class Shaping(Hooks):
        def shape_rewards(self, rollout):
            rollout.reward += 0.1 * rollout.alive  # in place, before advantages
            return {"shaping/bonus": 0.1}

    train(cfg, hooks=Shaping())

Order within one iteration: collect → ``shape_rewards`` → the algorithm's ``prepare`` (which may call
``score``) → ``update`` → ``after_iteration``.
"""

from __future__ import annotations

import torch

from vlaforge.types import Rollout


class Hooks:
    """No-op hooks; subclasses override some of them."""

    def shape_rewards(self, rollout: Rollout) -> dict:
        """Change ``rollout.reward (T, N)`` in place (dense rewards) before advantages; returns metrics."""
        return {}

    def score(self, rollout: Rollout) -> torch.Tensor | None:
        """(N,) per-episode ranking scores for preference algorithms (TPO); None = the trajectory reward."""
        return None

    def after_iteration(self, iteration: int, policy, rollout: Rollout) -> dict:
        """After the update of ``iteration`` (0-based), with the updated policy; returns metrics."""
        return {}


NO_HOOKS = Hooks()
