"""Rollouts: the only code that calls ``env.step``."""

from vlaforge.rollout.collect import CollectStats, collect

__all__ = ["CollectStats", "collect"]
