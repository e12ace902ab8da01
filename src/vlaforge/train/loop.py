"""The RL training loop: sample contexts → collect → rewards → advantages → update → evaluate
→ log → checkpoint.

One ``train(cfg)`` function serves every algorithm (chosen by name from ``vlaforge.algos``) and
every recipe (which only fills the config and may pass hooks). On CPU with a fixed seed a
run resumed from a checkpoint reproduces the uninterrupted run exactly: every source of
randomness (torch RNG, the update-shuffling generator, the task sampler's numpy RNG) is
checkpointed, and env initial states are a function of (task, seed).

    vlaforge train --algo rloo --suite pointreach --init runs/sft --out runs/rl
    vlaforge train --resume runs/rl/checkpoint   # after a crash or SIGKILL
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from vlaforge.algos import get_algo
from vlaforge.algos.common import trajectory_reward
from vlaforge.core.advantages import uniform_groups
from vlaforge.device import precision_context, resolve_device, set_cuda_rng_states, set_deterministic
from vlaforge.envs import env_kwargs, env_tasks, eval_task_names, make_vec_env, suite_info, suite_task_names
from vlaforge.envs.vector import thread_plan
from vlaforge.errors import UsageError
from vlaforge.hooks import NO_HOOKS, Hooks
from vlaforge.policies import load_policy, save_policy
from vlaforge.policies.base import check_fits
from vlaforge.policies.registry import family
from vlaforge.policies.tiny import TinyVLA
from vlaforge.rollout.collect import CollectStats, collect
from vlaforge.rollout.evaluate import evaluate_policy
from vlaforge.rollout.sampling import TaskSampler
from vlaforge.train.backend import Backend, backend_for, register_backend
from vlaforge.train.checkpoint import load_algo_state, load_checkpoint, repair_metrics, save_checkpoint
from vlaforge.train.config import TrainConfig, config_from_dict, config_to_dict
from vlaforge.train.learner import PolicyLearner, make_optimizer, policy_lr, set_policy_lr
from vlaforge.train.logging import RunLogger, StageTimer, progress_bar
from vlaforge.train.resume import resume_point
from vlaforge.types import Rollout

__all__ = ["LocalBackend", "TrainConfig", "config_from_dict", "config_to_dict", "make_optimizer", "policy_lr",
           "set_policy_lr", "train"]


def _split_rates(results) -> dict:
    out = {}
    for split in ("train", "heldout"):
        rs = [r for r in results if r.split == split]
        if rs:
            out[f"eval/success_{split}"] = sum(r.successes for r in rs) / max(sum(r.episodes for r in rs), 1)
    return out


def collect_groups(policy, venv, sampler: TaskSampler, cfg: TrainConfig, K: int, stats: CollectStats,
                   collect_fn=None):
    """One iteration's rollouts: `groups` contexts × K. With dynamic rejection, uniform-reward
    groups are dropped and more contexts drawn until `fill_fraction` of the batch is informative.
    ``collect_fn(task_ids, seeds, stats) -> Rollout`` replaces ``collect(policy, venv, ...)`` (the Ray
    driver spreads the episodes over env workers)."""
    kept: list[Rollout] = []
    n_kept, n_seen, n_rejected, rounds = 0, 0, 0, 0
    target = cfg.groups if not cfg.dynamic_rejection else int(np.ceil(cfg.fill_fraction * cfg.groups))
    all_success = []
    while True:
        rounds += 1
        tids, seeds = sampler.sample(cfg.groups if rounds == 1 else max(cfg.groups - n_kept, 1))
        if collect_fn is not None:
            r = collect_fn(np.repeat(tids, K), np.repeat(seeds, K), stats)
        else:
            r, _ = collect(policy, venv, np.repeat(tids, K), np.repeat(seeds, K), stats=stats, pipeline=cfg.pipeline,
                           temperature=cfg.algo_cfg.temperature)
        sampler.update(r.task_id[r.valid].cpu().numpy(), r.success[r.valid].cpu().numpy())  # a batched sim's are on its device
        all_success.append(r.success[r.valid].float())
        r.group_id = r.group_id + n_seen  # unique across rounds
        n_groups = int(r.group_id.max()) + 1 - n_seen
        n_seen += n_groups
        if cfg.dynamic_rejection:
            uni = uniform_groups(trajectory_reward(r), r.group_id) | ~r.valid
            bad_groups = torch.unique(r.group_id[uni])
            keep = ~torch.isin(r.group_id, bad_groups)
            n_rejected += len(bad_groups)
            r = r.select(torch.nonzero(keep).flatten())
            n_kept += n_groups - len(bad_groups)
        else:
            n_kept += n_groups
        if r.num_episodes:
            kept.append(r)
        if n_kept >= target or not cfg.dynamic_rejection or rounds >= cfg.max_collect_rounds:
            break
    success = torch.cat(all_success)
    info = {"rollout/success": float(success.mean()) if len(success) else 0.0,
            "rollout/rejected_group_share": n_rejected / max(n_seen, 1), "rollout/collect_rounds": rounds,
            "rollout/groups_kept": n_kept}
    return (Rollout.cat(kept) if kept else None), info


def task_rates(sampler: TaskSampler, spec) -> dict:
    """A multi-task run's per-task rollout success over the sampler's window (what ``--curriculum`` weighs):
    ``rollout_task/<name>``; untried tasks are left out. Nothing for one task (``rollout/success`` says it)."""
    if len(sampler.task_ids) < 2:
        return {}
    return {f"rollout_task/{spec.tasks[t].name}": float(np.mean(h)) for t, h in sampler.history.items() if h}


def env_settings(cfg: TrainConfig) -> dict:
    """Keyword arguments of ``make_vec_env`` / ``suite_spec`` for a run's envs (Ray env workers use them
    too). A suite whose envs hold every task is built with all of them and `tasks` selects among them."""
    return dict(tasks=env_tasks(cfg.suite, cfg.tasks), image_size=cfg.image_size,
                **env_kwargs(cfg.env_kwargs, cfg.max_steps))


def fresh_policy(cfg: TrainConfig, spec):
    """A fresh policy of ``--policy NAME`` for the suite ``spec`` (the family's registry entry builds it)."""
    return family(cfg.policy).fn("fresh")(cfg.policy, cfg, spec)


def run_tasks(cfg: TrainConfig, spec, policy) -> tuple[list[int], list[str]]:
    """(training task ids, evaluation task names); raises if the policy does not fit the suite."""
    # Held-out tasks (ML10 test, PointReach's held-out split) are never trained on unless named explicitly.
    named = suite_task_names(spec, cfg.tasks if suite_info(cfg.suite).holds_all_tasks else None)
    train_names = [n for n in named if spec.tasks[spec.task_index(n)].split == "train"] or named
    train_ids = [spec.task_index(n) for n in train_names]
    eval_names = eval_task_names(cfg.suite, spec, cfg.eval_tasks, cfg.image_size)  # names, a split, or MT10
    check_fits(policy, spec, cfg.suite)
    return train_ids, eval_names


def eval_metrics(policy, venv, eval_names: list[str], episodes: int) -> dict:
    """Success per split and per task on the fixed evaluation seeds: deterministic actions (the mode) at
    temperature 1, so the numbers match ``vlaforge eval``'s."""
    res, st = evaluate_policy(policy, venv, eval_names, episodes)
    m = _split_rates(res)
    m.update({f"eval_task/{r.task}": r.rate for r in res})
    return m


def use_privileged_critic(policy, spec) -> None:
    """Give ``policy`` a fresh asymmetric critic on the suite's sim_state (``--critic privileged``)."""
    if not isinstance(policy, TinyVLA):
        raise UsageError("--critic privileged is available for the tiny VLA only; drop it for this policy")
    if not spec.sim_state_names:
        raise UsageError(f"--critic privileged needs a suite with a sim_state channel; '{spec.suite}' has none")
    if policy.cfg.critic != "privileged":  # a resumed or privileged-SFT policy keeps its trained critic
        policy.use_privileged_critic(len(spec.sim_state_names))


def run_threads(cfg: TrainConfig) -> int:
    """``--threads``, or by default the cores the run's env workers leave to the policy (at least one)."""
    return cfg.threads if cfg.threads is not None else thread_plan(cfg.workers).driver


def start_state(cfg: TrainConfig):
    """Where a run starts, after its checks: from ``cfg.resume`` (``train.resume.resume_point``: the saved config
    with the caller's ``CALLER_FIELDS``, state.json read once) or fresh (``cfg.check()``, seeded; policy from
    ``cfg.init`` or None). Returns (cfg, policy, optimizer state, RNG states, iteration, env steps, state.json or
    None); the local loop and the Ray driver share it."""
    trust = cfg.hf.trust_remote_code  # only ever from the caller (the command line), never from a file
    if cfg.resume is None:
        cfg.check()  # the same one-line errors as the CLI's, before any env or file
        cfg = dataclasses.replace(cfg, threads=run_threads(cfg))
        torch.manual_seed(cfg.seed)
        return cfg, (load_policy(cfg.init, trust_remote_code=trust) if cfg.init else None), None, None, 0, 0, None
    # the run's settings come from the checkpoint; where to run, where to write and what to show, from the
    # caller (the CLI sets out to the checkpoint's parent unless --out is given): a crafted state.json
    # never chooses which directory is rewritten
    point = resume_point(cfg)
    policy, opt_state, state, rng = load_checkpoint(point.path, trust_remote_code=trust, state=point.state)
    return point.cfg, policy, opt_state, rng, state["iteration"], state["env_steps"], state


class LocalBackend(Backend):
    """The whole run in this process. The collecting half is one vectorised env (host) and the policy; the learning
    half a ``PolicyLearner`` (train/learner.py) holding the same policy object on ``--device`` with its optimizer
    and the algorithm's state."""

    def __init__(self, cfg: TrainConfig, hooks: Hooks):
        self.cfg, self.acfg = cfg, cfg.algo_cfg
        self.device = resolve_device(cfg.device)
        self.venv = make_vec_env(cfg.suite, cfg.num_envs, workers=cfg.workers, **env_settings(cfg))
        self.spec = self.venv.spec

    def start(self, policy, opt_state, gen, algo_state) -> None:
        self.learner = PolicyLearner(self.cfg, policy, opt_state, gen, algo_state, self.device, spec=self.spec)
        self.policy = self.learner.policy  # the collector acts with the learner's policy: no weight sync
        self.update = self.learner.update  # the learner's own method: one call less from the loop to the loss

    def collect(self, task_ids, seeds, stats: CollectStats) -> Rollout:
        with precision_context(self.cfg.precision, self.device):
            return collect(self.policy, self.venv, task_ids, seeds, stats=stats, pipeline=self.cfg.pipeline,
                           temperature=self.acfg.temperature)[0]

    def update(self, batch, iteration: int) -> dict:  # replaced by the learner's method in start()
        return self.learner.update(batch, iteration)

    def evaluate(self, eval_names: list[str], episodes: int) -> dict:
        with precision_context(self.cfg.precision, self.device):
            return eval_metrics(self.policy, self.venv, eval_names, episodes)

    def train_state(self) -> tuple:
        return self.learner.train_state()

    def close(self) -> None:
        self.venv.close()


register_backend("local", LocalBackend)


def train(cfg: TrainConfig, hooks: Hooks | None = None, policy=None) -> dict:
    """Run RL post-training on the backend ``cfg`` asks for (``--ray``: the ``distributed`` package, else in
    this process). Returns the final metrics (evaluation included).

    ``hooks`` (``vlaforge.hooks.Hooks``): dense reward shaping, ranking scores, per-iteration callbacks.
    ``policy``: start a fresh run from this policy object instead of ``cfg.init`` / ``cfg.policy`` (built in Python,
    e.g. a released VLA's architecture with random weights for a memory check); not with ``cfg.resume``.
    """
    hooks = NO_HOOKS if hooks is None else hooks
    make_backend = backend_for(cfg)
    resuming = cfg.resume is not None
    if policy is not None and (resuming or cfg.init):
        raise UsageError("train(policy=...) starts a fresh run: drop cfg.resume and cfg.init")
    cfg, loaded, opt_state, rng, start_it, env_steps_total, saved_state = start_state(cfg)
    policy = loaded if policy is None else policy
    set_deterministic(cfg.deterministic)
    out = Path(cfg.out)
    torch.set_num_threads(cfg.threads)  # after resolving a resumed config: thread count changes float sums
    algo = get_algo(cfg.algo)
    acfg = cfg.algo_cfg
    backend = make_backend(cfg, hooks)  # writes nothing: bad input and a missing extra fail before any file
    try:  # the loop, once the backend stands
        spec = backend.spec
        if policy is None:
            policy = fresh_policy(cfg, spec)
        if cfg.critic == "privileged":
            use_privileged_critic(policy, spec)
        if getattr(acfg, "readout_coef", 0.0) and not (isinstance(policy, TinyVLA) and policy.aux_head is not None):
            raise UsageError(f"--{cfg.algo}.readout-coef needs a policy with a perception readout (`vlaforge sft --aux`)")
        train_ids, eval_names = run_tasks(cfg, spec, policy)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        sampler = TaskSampler(train_ids, cfg.curriculum, cfg.curriculum_tau, seed=cfg.seed, floor=cfg.curriculum_floor)
        saved_algo_state = None
        if resuming:
            sampler.load_state_dict(saved_state["sampler"])
            gen.set_state(rng["update_gen"])
            if algo.init_state is not None:
                saved_algo_state = load_algo_state(Path(cfg.resume).expanduser(), saved_state)
        backend.start(policy, opt_state, gen, saved_algo_state)
        if resuming:  # after start(): building the optimizer and the algorithm's state may draw random numbers
            torch.set_rng_state(rng["torch_cpu"])
            set_cuda_rng_states(rng)  # a GPU run's generators (absent in CPU checkpoints)
            _truncate_metrics(out / "metrics.jsonl", start_it)
        tb, wandb = cfg.sinks()
        logger = RunLogger(out, cfg.tensorboard and tb, wandb_config=config_to_dict(cfg) if wandb else None)
        (out / "train_config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
        final: dict = {}
        prog, task = progress_bar(f"{cfg.algo} on {cfg.suite}", cfg.iterations, cfg.progress)
        prog.update(task, completed=start_it)
        try:
            with prog:
                if start_it == 0 and cfg.eval_every > 0:
                    final = logger.log(0, backend.evaluate(eval_names, cfg.eval_episodes))
                for it in range(start_it, cfg.iterations):
                    backend.iteration = it
                    timer = StageTimer()
                    stats = CollectStats()
                    with timer("collect"):
                        rollout, info = collect_groups(None, None, sampler, cfg, acfg.group_size, stats,
                                                       collect_fn=backend.collect)
                    metrics = {**info, **task_rates(sampler, spec)}
                    if rollout is not None:
                        with timer("reward"):
                            metrics.update(hooks.shape_rewards(rollout))
                        with timer("advantages"):  # on the learner's device: the rollout crosses once per iteration
                            batch, pinfo = algo.prepare(rollout.to(backend.device), acfg, hooks)
                        metrics.update(pinfo)
                        with timer("update"):
                            metrics.update(backend.update(batch, it))
                        metrics["train/lr"] = policy_lr(cfg, it)
                        metrics["rollout/return"] = float(trajectory_reward(rollout)[rollout.valid].mean())
                        with timer("sync"):
                            backend.sync()
                        metrics.update(hooks.after_iteration(it, policy, rollout))
                    env_steps_total += stats.env_steps
                    metrics.update({"time/env_steps_per_s": stats.env_steps / max(timer.seconds["collect"], 1e-9),
                                    "rollout/env_steps": env_steps_total, "rollout/invalid_episodes": stats.invalid,
                                    **backend.extra_metrics()})
                    if cfg.eval_every > 0 and ((it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations):
                        with timer("eval"):
                            metrics.update(backend.evaluate(eval_names, cfg.eval_episodes))
                    metrics.update(timer.metrics())
                    final = logger.log(it + 1, metrics)
                    if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
                        optimizer, algo_state = backend.train_state()
                        save_checkpoint(out / "checkpoint", policy, optimizer, {
                            "iteration": it + 1, "env_steps": env_steps_total, "sampler": sampler.state_dict(),
                            "config": config_to_dict(cfg)}, gen, algo_state)
                    prog.update(task, advance=1, info=f"success {metrics['rollout/success']:.2f}")
            logger.table("eval/per_task", [{"task": k.removeprefix("eval_task/"), "success": v} for k, v in final.items()
                                           if k.startswith("eval_task/")])
        finally:
            logger.close()
        backend.train_state()  # the final weights into ``policy``
        save_policy(policy, out / "final")
        return final
    finally:
        backend.close()


def _truncate_metrics(path: Path, upto: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (the killed run's tail, a torn line too)."""
    repair_metrics(path, upto)
