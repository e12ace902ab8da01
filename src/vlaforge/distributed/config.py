"""Settings of a Ray run (``vlaforge train --ray``). Imports nothing from Ray: every TrainConfig has one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RayConfig:
    """Where and how wide a Ray run is. The rest of the run's settings are the TrainConfig's."""

    enabled: bool = False
    """run the training loop on Ray (`--ray` is short for `--ray.enabled`)"""
    address: str | None = None
    """cluster to join (`auto`, or `HEAD_IP:6379` after `ray start --head`); None starts a local cluster"""
    num_cpus: int | None = None
    """CPUs of a local cluster started by this run (None: all of this machine's); ignored when joining"""
    env_workers: int = 1
    """env-worker actors; each steps its own `--num-envs` envs and runs a copy of the policy on them"""
    learners: int = 1
    """data-parallel learner actors; each trains on 1/learners of every batch, gradients all-reduced (gloo)"""
    env_worker_cpus: float = 1.0
    """CPUs reserved per env worker (fractions let several actors share a core)"""
    learner_cpus: float = 1.0
    """CPUs reserved per learner"""
    placement: Literal["PACK", "SPREAD"] = "PACK"
    """placement-group strategy: PACK fills nodes one by one, SPREAD puts actors on different nodes"""
    max_env_worker_restarts: int = 20
    """give up (with an error) after replacing this many dead env workers in one run"""
    startup_timeout_s: float = 300.0
    """seconds to wait for the cluster to grant the actors' resources"""
    collective_timeout_s: float = 300.0
    """seconds a learner waits in an all-reduce before giving up (a dead peer)"""
