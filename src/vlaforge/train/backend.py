"""Where the training loop's work runs: the backend seam of ``train()``.

``train(cfg)`` (``train/loop.py``) is the one loop — sampling contexts, hooks, the algorithm's
``prepare``, logging, checkpoints, evaluation schedule — for every backend. A backend does the four
things that depend on where the work runs:

- ``collect(task_ids, seeds, stats) -> Rollout``: roll the current policy out;
- ``update(batch, iteration) -> metrics``: the algorithm's ``update`` (with the policy-lr ramp);
- ``sync()``: make the policy that collects and the loop's ``policy`` object hold the updated weights;
- ``evaluate(eval_names, episodes) -> metrics``; and ``train_state()`` for checkpoints.

``LocalBackend`` (``train/loop.py``) runs all of it in this process. The Ray backend
(the ``distributed`` package, ``--ray``) spreads collection over env-worker actors and updates over
data-parallel learners; it registers itself here with ``register_backend("ray", ...)`` when
the ``distributed`` package is imported (the CLI does), so nothing under ``train/`` imports it.

    vlaforge train --algo rloo --suite pointreach              # local
    vlaforge train --algo rloo --suite pointreach --ray        # Ray (docs/distributed.md)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from vlaforge.checks import at_least, finite, need, positive
from vlaforge.rollout.collect import CollectStats
from vlaforge.types import Rollout


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
    learner_gpus: float = 0.0
    """GPUs per learner (1: each learner trains on its own GPU, gradients all-reduced with NCCL; 0: on the CPU with
    gloo). Ray assigns the GPU (CUDA_VISIBLE_DEVICES), so every learner sees it as cuda:0"""
    env_worker_gpus: float = 0.0
    """GPUs per env worker for its copy of the policy (fractions share a GPU between workers; 0: the CPU)"""
    placement: Literal["PACK", "SPREAD"] = "PACK"
    """placement-group strategy: PACK fills nodes one by one, SPREAD puts actors on different nodes"""
    max_env_worker_restarts: int = 20
    """give up (with an error) after replacing this many dead env workers in one run"""
    startup_timeout_s: float = 300.0
    """seconds to wait for the cluster to grant the actors' resources"""
    collective_timeout_s: float = 300.0
    """seconds a learner waits in an all-reduce before giving up (a dead peer)"""

    def check(self) -> None:
        """``--ray.*`` (taken from the command line on resume too)."""
        if not self.enabled:
            return
        at_least("--ray.env-workers", self.env_workers, 1)
        at_least("--ray.learners", self.learners, 1)
        positive("--ray.env-worker-cpus", self.env_worker_cpus)
        positive("--ray.learner-cpus", self.learner_cpus)
        for name, g in (("--ray.learner-gpus", self.learner_gpus), ("--ray.env-worker-gpus", self.env_worker_gpus)):
            finite(name, g)
            need(0 <= g <= 1, f"{name} must be in [0, 1] (a fraction shares one GPU; a learner or worker uses one "
                              f"device: for more GPUs add learners with --ray.learners N); got {g}")
        if self.num_cpus is not None:
            at_least("--ray.num-cpus", self.num_cpus, 1)
        at_least("--ray.max-env-worker-restarts", self.max_env_worker_restarts, 0)
        positive("--ray.startup-timeout-s", self.startup_timeout_s)
        positive("--ray.collective-timeout-s", self.collective_timeout_s)


class Backend:
    """The backend seam. ``__init__(cfg, hooks)`` must not write anything (bad input fails first) and
    sets ``spec`` (the suite's ``EnvSpec``); ``start`` receives the run's policy and state; the loop
    sets ``iteration`` (0-based) before each iteration's calls."""

    spec = None
    iteration: int = 0
    device: torch.device = torch.device("cpu")
    """where ``prepare`` runs (advantages, batches): the learner's device locally; the driver's host on Ray, whose
    learners move their shard to their own device"""

    def start(self, policy, opt_state: dict | None, gen: torch.Generator, algo_state: tuple | None) -> None:
        """Build the optimizer (restored from ``opt_state``) and the algorithm's state (restored from
        ``algo_state`` = (tensors, JSON)); ``gen`` is the run's update generator."""
        raise NotImplementedError

    def collect(self, task_ids, seeds, stats: CollectStats) -> Rollout:
        raise NotImplementedError

    def update(self, batch, iteration: int) -> dict:
        raise NotImplementedError

    def sync(self) -> None:
        """After an update: the collecting policy and the loop's ``policy`` get the new weights."""

    def evaluate(self, eval_names: list[str], episodes: int) -> dict:
        raise NotImplementedError

    def train_state(self) -> tuple:
        """(optimizer, algorithm state or None) for ``save_checkpoint``, with the loop's ``policy`` and ``gen``
        brought up to date (objects with ``state_dict()``)."""
        raise NotImplementedError

    def extra_metrics(self) -> dict:
        """Per-iteration metrics of the backend itself (e.g. replaced Ray actors); reset on reading."""
        return {}

    def close(self) -> None:
        pass


BACKENDS: dict[str, Callable[..., Backend]] = {}
"""name -> ``factory(cfg, hooks) -> Backend``; "local" is registered by ``train/loop.py``, "ray" by
the ``distributed`` package."""


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    BACKENDS[name] = factory


def backend_for(cfg) -> Callable[..., Backend]:
    """The backend factory a config asks for (``--ray`` → "ray")."""
    name = "ray" if cfg.ray.enabled else "local"
    if name not in BACKENDS:
        raise ValueError(f"the '{name}' training backend is not loaded; import the distributed package first "
                         "(the vlaforge CLI does)")
    return BACKENDS[name]
