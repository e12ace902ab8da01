"""RPRM as a model: train VLA-RL's process reward model on Meta-World expert and noisy-expert
rollouts, report its progress predictions on held-out seeds (Spearman with time in successes,
success/failure AUC), and check GRAPE's rule-based stages on the same episodes.

    python benchmarks/rprm_eval.py --out docs/bench/rprm.json

Data: for each task, scripted-expert episodes with small action noise (mostly successes) and
with large noise (mostly failures), all collected through ``collect()`` so they carry images,
proprio and sim_state. ``auc_time_baseline`` is the AUC of a predictor that equates progress
with elapsed time (its final value is the episode length): what the RPRM must beat, since
failures run to the time limit. Training seeds are < 1e6, held-out seeds start at 1e7 (never trained on).
Milestones and targets come from sim_state (hand position, gripper opening); the model sees
only images, instruction and proprio. Also reported, on the held-out episodes: the AUC of
GRAPE's R_ext computed with the success flag hidden (do the staged costs alone separate success
from failure?) and the share of stages the rule decomposer finds complete in successes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.envs import make_vec_env
from vlaforge.fsutil import atomic_write_text
from vlaforge.rewards import (
    RPRM,
    RuleDecomposer,
    evaluate_rprm,
    progress_data_from_rollouts,
    staged_cost,
    train_rprm,
)
from vlaforge.rewards.expert import ExpertPolicy
from vlaforge.rewards.grape import external_reward
from vlaforge.rewards.rprm import roc_auc, rollout_milestones
from vlaforge.rollout.collect import collect
from vlaforge.types import Rollout

MILESTONE_KW = {"speed_eps": 0.002, "min_pause": 3, "min_gap": 5}  # metres per simulator step; decisions


def gather(venv, tids: list[int], episodes: int, noise: float, seed0: int, rng_seed: int) -> Rollout:
    task_ids = np.repeat(tids, episodes)
    seeds = seed0 + np.arange(len(task_ids))
    r, _ = collect(ExpertPolicy(venv, noise, seed=rng_seed), venv, task_ids, seeds)
    return r.select(torch.nonzero(r.valid).flatten())


def _nan_to_none(x):
    """JSON has no NaN: undefined metrics (an AUC without failures) are written as null."""
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="pick-place-v3,drawer-open-v3,button-press-topdown-v3,push-v3")
    ap.add_argument("--train-episodes", type=int, default=6, help="per task and noise level")
    ap.add_argument("--test-episodes", type=int, default=5, help="per task and noise level (held-out seeds)")
    ap.add_argument("--low-noise", type=float, default=0.1)
    ap.add_argument("--high-noise", type=float, default=1.5)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--steps", type=int, default=400, help="RPRM training steps")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/bench/rprm.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    venv = make_vec_env("metaworld", a.num_envs, tasks=a.tasks, workers=a.workers, max_steps=a.max_steps)
    spec = venv.spec
    tids = list(range(len(spec.tasks)))
    t0 = time.perf_counter()
    train = [gather(venv, tids, a.train_episodes, a.low_noise, 1_000, 1),
             gather(venv, tids, a.train_episodes, a.high_noise, 2_000, 2)]
    test = [gather(venv, tids, a.test_episodes, a.low_noise, 10_000_000, 3),
            gather(venv, tids, a.test_episodes, a.high_noise, 10_100_000, 4)]
    venv.close()
    t1 = time.perf_counter()
    names = spec.sim_state_names
    data = progress_data_from_rollouts(train, names, **MILESTONE_KW)
    model = RPRM.for_spec(spec)
    fit = train_rprm(model, data, steps=a.steps, batch=a.batch, lr=1e-3)
    t2 = time.perf_counter()
    held = evaluate_rprm(model, test)
    # baseline: "progress = elapsed time", whose final value is the episode length
    lengths = torch.cat([r.alive.sum(0).float() for r in test]).numpy()
    held["auc_time_baseline"] = roc_auc(lengths, torch.cat([r.success for r in test]).numpy())
    per_task = {}
    for ti, t in enumerate(spec.tasks):
        parts = [r.select(torch.nonzero(r.task_id == ti).flatten()) for r in test]
        per_task[t.name] = evaluate_rprm(model, [p for p in parts if p.num_episodes])
    t3 = time.perf_counter()

    # milestones found per successful training episode, per task
    ms_counts: dict[str, list[int]] = {t.name: [] for t in spec.tasks}
    for r in train:
        for n, ms in rollout_milestones(r, names, **MILESTONE_KW).items():
            if bool(r.success[n]):
                ms_counts[spec.tasks[int(r.task_id[n])].name].append(len(ms))
    # GRAPE's rule stages on the held-out episodes, success flag hidden
    dec = RuleDecomposer(names)
    grape_rows = {}
    for ti, t in enumerate(spec.tasks):
        stages = dec.decompose(t.name, t.instruction)
        ext, done, ok = [], [], []
        for r in test:
            sub = r.select(torch.nonzero(r.task_id == ti).flatten())
            if not sub.num_episodes:
                continue
            hidden = sub.select(torch.arange(sub.num_episodes))
            hidden.success = torch.zeros_like(sub.success)
            cost, d = staged_cost(hidden, stages)
            ext += external_reward(cost).tolist()
            done += (d.float() / len(stages)).tolist()
            ok += sub.success.tolist()
        ok_a = np.array(ok, bool)
        grape_rows[t.name] = {"stages": [s.name for s in stages], "r_ext_auc": roc_auc(ext, ok_a),
                              "stages_done_success": float(np.mean(np.array(done)[ok_a])) if ok_a.any() else None,
                              "stages_done_failure": float(np.mean(np.array(done)[~ok_a])) if (~ok_a).any() else None}

    def episodes(rs):
        return {"episodes": sum(r.num_episodes for r in rs), "successes": int(sum(r.success.sum() for r in rs))}

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch threads",
        "date": time.strftime("%Y-%m-%d"), "args": vars(a), "milestone_kw": MILESTONE_KW,
        "train": {**episodes(train), "frames": len(data), "loss_first": fit["loss_first"], "loss_last": fit["loss_last"]},
        "test": {**episodes(test), **held}, "per_task": per_task,
        "milestones_per_success": {k: (float(np.mean(v)) if v else None) for k, v in ms_counts.items()},
        "grape_rule_stages": grape_rows,
        "collect_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2,
    }
    atomic_write_text(a.out, json.dumps(_nan_to_none(result), indent=2))
    print(json.dumps({k: result[k] for k in ("train", "test", "milestones_per_success", "collect_s", "train_s")}, indent=2))
    for k, v in per_task.items():
        print(k, {m: (round(x, 3) if isinstance(x, float) else x) for m, x in v.items()}, grape_rows[k])


if __name__ == "__main__":
    Path("docs/bench").mkdir(parents=True, exist_ok=True)
    main()
