"""The training loop of ``train/loop.py`` on a Ray cluster: the same stages, functions and checkpoints,
with collection spread over env-worker actors and the update over data-parallel learner actors.

    vlaforge train --algo rloo --suite pointreach --ray --ray.env-workers 2 --ray.learners 2
    vlaforge train --resume runs/train/checkpoint --ray          # resume (also a local run's checkpoint)

Per iteration (each stage timed as ``time/<stage>_s``):

- **collect**: ``collect_groups`` (the local function: task sampling, dynamic rejection) with a
  ``collect_fn`` that splits the contexts, whole groups each, over the env workers; each runs the
  local ``collect()``. A worker that dies is replaced (same placement-group bundle, current
  weights); the episodes it was running are discarded, never counted
  (``rollout/discarded_episodes``, ``ray/env_workers_replaced``).
- **reward**: the hooks' ``shape_rewards`` / ``score`` on the driver.
- **advantages**: the algorithm's ``prepare()`` on the driver, over the whole batch (group
  baselines and advantage normalisation see every episode, as in a local run).
- **update**: the batch is cut into equal shards, one per learner (at most learners−1 decision
  steps are left out: ``train/dropped_for_sharding``), with the minibatch size divided by the number
  of learners so that one optimizer step still sees about ``minibatch_size`` steps. Each learner
  runs the algorithm's ``update()``; gradients are averaged with a gloo all-reduce.
- **sync**: learner 0's weights go to every env worker (one object in the Ray store).
- **eval**: the local evaluation on env worker 0.

Checkpoints are written by the driver in the local loop's format (``train/checkpoint.py``), so a
Ray run resumes locally and the other way round. A learner that dies stops the run with
``RunFailed`` naming the last good checkpoint; the checkpoint is written atomically, so it is intact.

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
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from vlaforge.algos import get_algo
from vlaforge.algos.common import trajectory_reward
from vlaforge.hooks import NO_HOOKS
from vlaforge.distributed import RunFailed
from vlaforge.distributed.actors import EnvWorker, Learner, derived_seed
from vlaforge.envs import require, suite_spec
from vlaforge.rollout.collect import CollectStats, group_ids_for
from vlaforge.rollout.sampling import TaskSampler
from vlaforge.train.checkpoint import load_algo_state, save_checkpoint
from vlaforge.train.logging import RunLogger, progress_bar
from vlaforge.train.loop import (
    _truncate_metrics,
    collect_groups,
    config_to_dict,
    env_settings,
    fresh_policy,
    policy_lr,
    run_tasks,
    start_state,
)
from vlaforge.types import Rollout

STAGES = ("collect", "reward", "advantages", "update", "sync", "eval")


class StageTimer:
    """Wall time per stage of one iteration."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def metrics(self) -> dict:
        return {f"time/{k}_s": v for k, v in self.seconds.items()}


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


class _SavedOptimizer:
    """What ``save_checkpoint`` needs of an optimizer, for one that lives on learner 0."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class _SavedAlgoState:
    """What ``save_checkpoint`` needs of an algorithm state, for one that lives on learner 0."""

    def __init__(self, state: tuple):
        self._state = state

    def state_dict(self) -> tuple:
        return self._state


class LearnerDied(Exception):
    pass


class Cluster:
    """The actors of one run in one placement group: ``env_workers`` EnvWorkers and ``learners`` Learners."""

    def __init__(self, ray, cfg, policy, opt_state, gen_state, hooks=NO_HOOKS, algo_state=None):
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.ray, self.cfg, self.rc, self.hooks = ray, cfg, cfg.ray, hooks
        rc = cfg.ray
        if rc.env_workers < 1 or rc.learners < 1:
            raise ValueError("--ray.env-workers and --ray.learners must be at least 1")
        self.iteration = 0
        self.discarded = self.replaced = self.replaced_total = 0
        bundles = [{"CPU": rc.env_worker_cpus}] * rc.env_workers + [{"CPU": rc.learner_cpus}] * rc.learners
        self.pg = placement_group(bundles, strategy=rc.placement)
        try:
            ray.get(self.pg.ready(), timeout=rc.startup_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(self.pg)
            need = sum(b["CPU"] for b in bundles)
            raise RunFailed(f"the Ray cluster did not grant {need:g} CPUs in {rc.startup_timeout_s:g} s "
                            f"(it has {ray.cluster_resources().get('CPU', 0):g}); add nodes or lower "
                            "--ray.env-worker-cpus / --ray.learner-cpus / the actor counts") from None
        self._strategy = lambda i: PlacementGroupSchedulingStrategy(placement_group=self.pg,
                                                                    placement_group_bundle_index=i)
        self._Worker = ray.remote(EnvWorker)
        self._Learner = ray.remote(Learner)
        self.policy_ref = ray.put(policy)
        self.weights = ray.put({k: v.detach().cpu() for k, v in policy.state_dict().items()})
        self.workers = [self._new_worker(i) for i in range(rc.env_workers)]
        self.learners = [
            self._Learner.options(num_cpus=rc.learner_cpus, scheduling_strategy=self._strategy(rc.env_workers + r))
            .remote(cfg, self.policy_ref, self.weights, r, rc.learners, opt_state, gen_state, algo_state)
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
        return (self._Worker.options(num_cpus=self.rc.env_worker_cpus, scheduling_strategy=self._strategy(i))
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

    def _after_submit(self, stage: str) -> None:
        """Testing aid: ``hooks.after_submit(stage, iteration, cluster)`` runs while the stage's calls are
        in flight (the fault tests kill an actor there)."""
        self.hooks.after_submit(stage, self.iteration, self)

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
            self._after_submit("collect")
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
        self._after_submit("sync")
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
        """Results of learner calls; a dead learner raises LearnerDied (as soon as it is noticed)."""
        ray = self.ray
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                raise LearnerDied(f"a learner died during {what} of iteration {self.iteration + 1} "
                                  f"({type(e).__name__})") from None
        return ray.get(refs)

    def update(self, batch, acfg, it: int) -> dict:
        world = len(self.learners)
        shards, dropped = shard_batch(batch, world)
        lcfg = per_learner_config(acfg, world, get_algo(self.cfg.algo).batch_fields)
        refs = [lr.update.remote(shards[r], lcfg, it, torch.get_rng_state() if r == 0 else
                                 derived_seed(self.cfg.seed, it, r)) for r, lr in enumerate(self.learners)]
        self._after_submit("update")
        results = self._get_learners(refs, "the update")
        torch.set_rng_state(results[0][1])
        out = merge_learner_metrics([m for m, _ in results])
        out["train/dropped_for_sharding"] = dropped
        return out

    def train_state(self):
        return self._get_learners([self.learners[0].train_state.remote()], "checkpointing")[0]

    def digests(self) -> list[str]:
        return self._get_learners([lr.digest.remote() for lr in self.learners], "a weight check")

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


def train_ray(cfg, hooks=None) -> dict:
    """``train(cfg, hooks)`` with ``cfg.ray``'s actors. Returns the final metrics (evaluation included)."""
    ray = require("ray", "ray")
    hooks = NO_HOOKS if hooks is None else hooks
    resuming = cfg.resume is not None
    cfg, policy, opt_state, rng, start_it, env_steps_total, sampler_state = start_state(cfg)
    out = Path(cfg.out)
    torch.set_num_threads(cfg.threads)
    algo = get_algo(cfg.algo)
    acfg = cfg.algo_cfg
    K = acfg.group_size
    spec = suite_spec(cfg.suite, **env_settings(cfg))
    if policy is None:
        policy = fresh_policy(cfg, spec)
    train_ids, eval_names = run_tasks(cfg, spec, policy)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    sampler = TaskSampler(train_ids, cfg.curriculum, cfg.curriculum_tau, seed=cfg.seed)
    if resuming:
        sampler.load_state_dict(sampler_state)
        torch.set_rng_state(rng["torch_cpu"])  # the run's RNG stream, handed to worker 0 / learner 0
        gen.set_state(rng["update_gen"])
        _truncate_metrics(out / "metrics.jsonl", start_it)
    policy.temperature = acfg.temperature
    started = _connect(ray, cfg.ray)
    cluster = None
    try:
        algo_state = load_algo_state(cfg.resume) if resuming and algo.init_state is not None else None
        cluster = Cluster(ray, cfg, policy, opt_state, gen.get_state(), hooks, algo_state)
        logger = RunLogger(out, cfg.tensorboard)
        (out / "train_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
        final: dict = {}
        prog, task = progress_bar(f"{cfg.algo} on {cfg.suite} (Ray)", cfg.iterations, cfg.progress)
        prog.update(task, completed=start_it)
        try:
            with prog:
                if start_it == 0 and cfg.eval_every > 0:
                    final = logger.log(0, cluster.evaluate(eval_names, cfg.eval_episodes))
                for it in range(start_it, cfg.iterations):
                    cluster.iteration = it
                    timer = StageTimer()
                    stats = CollectStats()
                    with timer("collect"):
                        rollout, info = collect_groups(None, None, sampler, cfg, K, stats, collect_fn=cluster.collect)
                    metrics = dict(info)
                    if rollout is not None:
                        with timer("reward"):
                            metrics.update(hooks.shape_rewards(rollout))
                        with timer("advantages"):
                            batch, pinfo = algo.prepare(rollout, acfg, hooks)
                        metrics.update(pinfo)
                        with timer("update"):
                            metrics.update(cluster.update(batch, acfg, it))
                        metrics["train/lr"] = policy_lr(cfg, it)  # the learners set it (set_policy_lr)
                        metrics["rollout/return"] = float(trajectory_reward(rollout)[rollout.valid].mean())
                        with timer("sync"):
                            cluster.sync_weights()
                        policy.load_state_dict(ray.get(cluster.weights))
                        metrics.update(hooks.after_iteration(it, policy, rollout))
                    env_steps_total += stats.env_steps
                    metrics.update({"time/env_steps_per_s": stats.env_steps / max(timer.seconds["collect"], 1e-9),
                                    "rollout/env_steps": env_steps_total, "rollout/invalid_episodes": stats.invalid,
                                    **cluster.fault_metrics()})
                    if cfg.eval_every > 0 and ((it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations):
                        with timer("eval"):
                            metrics.update(cluster.evaluate(eval_names, cfg.eval_episodes))
                    metrics.update(timer.metrics())
                    final = logger.log(it + 1, metrics)
                    if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
                        weights, opt, gen_state, astate = cluster.train_state()
                        policy.load_state_dict(weights)
                        gen.set_state(gen_state)
                        save_checkpoint(out / "checkpoint", policy, _SavedOptimizer(opt), {
                            "iteration": it + 1, "env_steps": env_steps_total, "sampler": sampler.state_dict(),
                            "config": config_to_dict(cfg)}, gen, None if astate is None else _SavedAlgoState(astate))
                    prog.update(task, advance=1, info=f"success {metrics['rollout/success']:.2f}")
        except LearnerDied as e:
            raise RunFailed(f"{e}; {_checkpoint_note(out / 'checkpoint')}") from None
        finally:
            logger.close()
        policy.load_state_dict(cluster.train_state()[0])
    finally:
        if cluster is not None:
            cluster.close()
        if started:
            ray.shutdown()
    from vlaforge.policies import save_policy

    save_policy(policy, out / "final")
    return final
