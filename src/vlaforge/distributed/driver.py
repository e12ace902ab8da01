"""The Ray backend of ``train()`` (``train/backend.py``): the same loop, with collection spread over
env-worker actors and the update over data-parallel learner actors.

    vlaforge train --algo rloo --suite pointreach --ray --ray.env-workers 2 --ray.learners 2
    vlaforge train --resume runs/train/checkpoint --ray          # resume (also a local run's checkpoint)

What each backend call does here:

- **collect**: ``Cluster.collect`` (``collect_groups``'s ``collect_fn``) splits the contexts, whole
  groups each, over the env workers; each runs the local ``collect()``. A worker that dies is replaced
  (same placement-group bundle, current weights); the episodes it was running are discarded, never
  counted (``rollout/discarded_episodes``, ``ray/env_workers_replaced``).
- **update**: the batch (prepared on the driver over the whole rollout, so group baselines and advantage
  normalisation see every episode) is cut into equal shards, one per learner (at most learners−1 items
  are left out: ``train/dropped_for_sharding``), with the algorithm's ``batch_fields`` divided by the
  number of learners so that one optimizer step still sees about ``minibatch_size`` items. Each learner
  runs the algorithm's ``update()`` with an all-reduce ``sync``.
- **sync**: learner 0's weights go to every env worker (one object in the Ray store) and to the driver.
- **evaluate**: the local evaluation on env worker 0.

Checkpoints are written by the loop in one format, so a Ray run resumes locally and the other way
round. A learner that dies stops the run with ``RunFailed`` naming the last good checkpoint; the
checkpoint is written atomically, so it is intact (tests/test_distributed.py kills actors to check both).

Differences from a local run: with one env worker and one learner the metrics are identical for
the same seed (the driver threads the local run's torch RNG stream through worker 0 and learner 0;
``tests/test_distributed.py`` checks this). With more workers, worker k>0 samples from a seed
derived from (run seed, k, its env seeds), and with L learners a minibatch is the concatenation
of L shards whose masked-mean losses are averaged, not one masked mean: close to, not bit-equal
to, a single learner. GPUs are not used: vlaforge's algorithms run on CPU tensors, so learners
use gloo; NCCL needs device-aware algorithms first.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from vlaforge.algos import get_algo
from vlaforge.distributed.actors import EnvWorker, Learner, derived_seed
from vlaforge.envs import require, suite_spec
from vlaforge.hooks import Hooks
from vlaforge.rollout.collect import CollectStats, group_ids_for
from vlaforge.train.backend import Backend
from vlaforge.train.loop import env_settings
from vlaforge.types import Rollout


def shard_batch(batch, world: int) -> tuple[list, int]:
    """Cut a batch (a StepBatch of decision steps, a PairBatch of preference pairs: anything with ``len()``
    and ``index(idx)``) into ``world`` equal shards, interleaved; returns (shards, items left out). One
    learner gets the batch unchanged."""
    if world == 1:
        return [batch], 0
    n = len(batch)
    per = n // world
    idx = [torch.arange(per) * world + r for r in range(world)]  # empty shards when n < world
    return [batch.index(i) for i in idx], n - per * world


def per_learner_config(acfg, world: int, fields: tuple[str, ...] = ("minibatch_size",)):
    """The algorithm config with its per-step batch sizes (``Algo.batch_fields``) divided over the learners."""
    kw = {name: max(1, math.ceil(getattr(acfg, name) / world)) for name in fields}
    return dataclasses.replace(acfg, **kw) if world > 1 else acfg


def merge_learner_metrics(results: list[dict]) -> dict:
    """Mean over learners; counts of batch items are summed."""
    out = {}
    for k in results[0]:
        vals = [float(r[k]) for r in results]
        out[k] = sum(vals) if k == "train/batch_steps" else sum(vals) / len(vals)
    return out


class _Saved:
    """What ``save_checkpoint`` needs of an optimizer or an algorithm state that lives on learner 0."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


class RunFailed(RuntimeError):
    """A Ray run cannot go on (a learner died, env workers keep dying, the cluster lacks resources).
    The message says what happened and how to resume."""


class Cluster:
    """The actors of one run in one placement group: ``env_workers`` EnvWorkers and ``learners`` Learners."""

    def __init__(self, ray, cfg, policy, opt_state, gen_state, hooks: Hooks, algo_state=None, spec=None):
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.ray, self.cfg, self.rc, self.hooks = ray, cfg, cfg.ray, hooks
        rc = cfg.ray
        if rc.env_workers < 1 or rc.learners < 1:
            raise ValueError("--ray.env-workers and --ray.learners must be at least 1")
        self.iteration = 0
        self.discarded = self.replaced = self.replaced_total = 0
        def bundle(cpus, gpus):
            return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {})}

        bundles = ([bundle(rc.env_worker_cpus, rc.env_worker_gpus)] * rc.env_workers
                   + [bundle(rc.learner_cpus, rc.learner_gpus)] * rc.learners)
        self.pg = placement_group(bundles, strategy=rc.placement)
        try:
            ray.get(self.pg.ready(), timeout=rc.startup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self.pg)
            need, gpus = sum(b["CPU"] for b in bundles), sum(b.get("GPU", 0) for b in bundles)
            have = ray.cluster_resources()
            raise RunFailed(f"the Ray cluster did not grant {need:g} CPUs and {gpus:g} GPUs in {rc.startup_timeout_s:g} "
                            f"s (it has {have.get('CPU', 0):g} and {have.get('GPU', 0):g}); add nodes or lower "
                            "--ray.env-worker-cpus/-gpus / --ray.learner-cpus/-gpus / the actor counts") from None
        self._strategy = lambda i: PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                                    placement_group_bundle_index=i)
        self._Worker = ray.remote(EnvWorker)
        self._Learner = ray.remote(Learner)
        self.policy_ref = ray.put(policy)
        self.weights = ray.put({k: v.detach().cpu() for k, v in policy.state_dict().items()})
        self.workers = [self._new_worker(i) for i in range(rc.env_workers)]
        self.learners = [
            self._Learner.options(num_cpus=rc.learner_cpus, num_gpus=rc.learner_gpus,
                                  scheduling_strategy=self._strategy(rc.env_workers + r))
            .remote(cfg, self.policy_ref, self.weights, r, rc.learners, opt_state, gen_state, algo_state, spec)
            for r in range(rc.learners)]
        try:
            ray.get([w.ready.remote() for w in self.workers])
            if rc.learners > 1:
                url = ray.get(self.learners[0].rendezvous.remote())
                ray.get([lr.init_group.remote(url, rc.collective_timeout_s) for lr in self.learners])
            else:
                ray.get(self.learners[0].ready.remote())
        except ray.exceptions.RayError as e:
            self.close()
            raise RunFailed(f"Ray actors failed to start: {_first_line(e)}") from None

    # -- env workers -------------------------------------------------------------------------------
    def _new_worker(self, i: int):
        return (self._Worker.options(num_cpus=self.rc.env_worker_cpus, num_gpus=self.rc.env_worker_gpus,
                                     scheduling_strategy=self._strategy(i))
                .remote(self.cfg, self.policy_ref, self.weights, i))

    def _replace_worker(self, i: int) -> None:
        self.replaced += 1
        self.replaced_total += 1
        if self.replaced_total > self.rc.max_env_worker_restarts:
            raise RunFailed(f"env workers died {self.replaced_total} times (limit --ray.max-env-worker-restarts "
                            f"{self.rc.max_env_worker_restarts}); see the Ray logs (ray logs / /tmp/ray) for why")
        try:
            self.ray.kill(self.workers[i])
        except Exception:
            pass
        self.workers[i] = self._new_worker(i)

    def collect(self, task_ids: np.ndarray, seeds: np.ndarray, stats: CollectStats) -> Rollout:
        """``collect_fn`` for ``collect_groups``: whole groups to each worker, results joined in order.
        Worker 0 continues the run's torch RNG stream (the driver's); others get derived seeds."""
        ray = self.ray
        groups = group_ids_for(task_ids, seeds)
        chunks = np.array_split(np.arange(groups.max() + 1), len(self.workers))
        shards = [(i, np.isin(groups, c)) for i, c in enumerate(chunks) if len(c)]
        for _attempt in range(3):
            refs = []
            for i, m in shards:
                rng = torch.get_rng_state() if i == 0 else derived_seed(self.cfg.seed, i, *np.unique(seeds[m]))
                refs.append(self.workers[i].collect.remote(task_ids[m], seeds[m], rng))
            parts = []
            for (i, m), ref in zip(shards, refs):
                try:
                    r, st, rng_out = ray.get(ref)
                except ray.exceptions.RayActorError:
                    self.discarded += int(m.sum())  # its unfinished episodes are dropped, not counted
                    self._replace_worker(i)
                    continue
                if i == 0:
                    torch.set_rng_state(rng_out)
                parts.append(r)
                for f in ("env_steps", "decisions", "sim_time", "policy_time", "episodes", "invalid"):
                    setattr(stats, f, getattr(stats, f) + getattr(st, f))
            if parts:
                break
        else:
            raise RunFailed("every env worker died in 3 collection attempts in a row; see the Ray logs for why")
        rollout = Rollout.cat(parts)
        rollout.group_id = torch.from_numpy(group_ids_for(rollout.task_id.numpy(), rollout.seed.numpy()))
        return rollout

    def evaluate(self, eval_names: list[str], episodes: int) -> dict:
        """The local evaluation on env worker 0 (continuing the run's RNG stream)."""
        for _attempt in range(3):
            try:
                m, rng_out = self.ray.get(self.workers[0].evaluate.remote(eval_names, episodes, torch.get_rng_state()))
                torch.set_rng_state(rng_out)
                return m
            except self.ray.exceptions.RayActorError:
                self._replace_worker(0)
        raise RunFailed("env worker 0 died in 3 evaluation attempts in a row; see the Ray logs for why")

    def sync_weights(self) -> None:
        """Learner 0's weights to every env worker; a worker found dead is replaced (with these weights)."""
        self.weights = self._get_learners([self.learners[0].weights.remote()], "weight sync")[0]
        self.weights = self.ray.put(self.weights)
        refs = [w.set_weights.remote(self.weights) for w in self.workers]
        for i, ref in enumerate(refs):
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                self._replace_worker(i)

    def fault_metrics(self) -> dict:
        out = {"rollout/discarded_episodes": self.discarded, "ray/env_workers_replaced": self.replaced}
        self.discarded = self.replaced = 0
        return out

    # -- learners ----------------------------------------------------------------------------------
    def _get_learners(self, refs: list, what: str) -> list:
        """Results of learner calls; a dead learner stops the run with RunFailed (as soon as it is noticed)."""
        ray = self.ray
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                raise RunFailed(f"a learner died during {what} of iteration {self.iteration + 1} "
                                f"({type(e).__name__}); {_checkpoint_note(Path(self.cfg.out) / 'checkpoint')}") from None
        return ray.get(refs)

    def update(self, batch, acfg, it: int) -> dict:
        self.iteration = it
        world = len(self.learners)
        shards, dropped = shard_batch(batch, world)
        lcfg = per_learner_config(acfg, world, get_algo(self.cfg.algo).batch_fields)
        refs = [lr.update.remote(shards[r], lcfg, it, torch.get_rng_state() if r == 0 else
                                 derived_seed(self.cfg.seed, it, r)) for r, lr in enumerate(self.learners)]
        results = self._get_learners(refs, "the update")
        torch.set_rng_state(results[0][1])
        out = merge_learner_metrics([m for m, _ in results])
        out["train/dropped_for_sharding"] = dropped
        return out

    def train_state(self):
        return self._get_learners([self.learners[0].train_state.remote()], "checkpointing")[0]

    def close(self) -> None:
        ray = self.ray
        for w in getattr(self, "workers", []):
            try:
                ray.get(w.close.remote(), timeout=10)
            except Exception:
                pass
        for a in getattr(self, "workers", []) + getattr(self, "learners", []):
            try:
                ray.kill(a)
            except Exception:
                pass
        try:
            ray.util.remove_placement_group(self.pg)
        except Exception:
            pass


def _first_line(e: BaseException) -> str:
    lines = [x for x in str(e).splitlines() if x.strip() and not x.startswith(("ray::", "Traceback", "  "))]
    return lines[-1] if lines else type(e).__name__


def _connect(ray, rc) -> bool:
    """Join ``--ray.address`` or start a local cluster; returns whether this run started Ray."""
    if ray.is_initialized():
        return False
    kw = {"address": rc.address} if rc.address else {"num_cpus": rc.num_cpus}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, **kw)
    except ConnectionError as e:
        raise RunFailed(f"cannot reach the Ray cluster at '{rc.address}' ({_first_line(e)}); start it with "
                        "`ray start --head` or pass --ray.address HEAD_IP:6379") from None
    return True


def _checkpoint_note(path: Path) -> str:
    try:
        it = json.loads((path / "state.json").read_text())["iteration"]
    except (OSError, ValueError, KeyError):
        return "no checkpoint was written yet; start the run again"
    return f"the last good checkpoint is '{path}' (iteration {it}); resume with: vlaforge train --resume {path} --ray"


class RayBackend(Backend):
    """``train()``'s backend on a Ray cluster (``--ray``): collection on env-worker actors, updates on
    data-parallel learner actors, evaluation on env worker 0. Registered as "ray" by ``vlaforge.distributed``."""

    def __init__(self, cfg, hooks: Hooks):
        self.ray = require("ray", "ray")  # a one-line error without the extra, before anything is written
        self.cfg, self.hooks = cfg, hooks
        self.spec = suite_spec(cfg.suite, **env_settings(cfg))
        self.cluster = None
        self.started = False

    def start(self, policy, opt_state, gen, algo_state) -> None:
        self.policy, self.gen = policy, gen
        self.started = _connect(self.ray, self.cfg.ray)
        self.cluster = Cluster(self.ray, self.cfg, policy, opt_state, gen.get_state(), self.hooks, algo_state,
                               self.spec)

    def collect(self, task_ids, seeds, stats: CollectStats) -> Rollout:
        self.cluster.iteration = self.iteration
        return self.cluster.collect(task_ids, seeds, stats)

    def update(self, batch, iteration: int) -> dict:
        return self.cluster.update(batch, self.cfg.algo_cfg, iteration)  # the learners set the lr (set_policy_lr)

    def sync(self) -> None:
        self.cluster.sync_weights()
        self.policy.load_state_dict(self.ray.get(self.cluster.weights))

    def evaluate(self, eval_names: list[str], episodes: int) -> dict:
        return self.cluster.evaluate(eval_names, episodes)

    def train_state(self) -> tuple:
        weights, opt, gen_state, algo_state = self.cluster.train_state()
        self.policy.load_state_dict(weights)
        self.gen.set_state(gen_state)
        return _Saved(opt), None if algo_state is None else _Saved(algo_state)

    def extra_metrics(self) -> dict:
        return self.cluster.fault_metrics()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        if self.started:
            self.ray.shutdown()
