"""Shared driver of the RL benchmarks: one SFT start, then each algorithm from it, evaluated on
fixed held-out seeds before and after, with a learning-curve PNG and a JSON of every figure."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from vlaforge.algos.sft import SFTConfig
from vlaforge.fsutil import atomic_write_text
from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs, run_collect, run_eval, run_sft
from vlaforge.train.loop import TrainConfig, train


def rate(successes: int, episodes: int) -> dict:
    """One success count as the JSON files store it: rate and Wilson 95% interval."""
    from vlaforge.rollout.evaluate import wilson

    return {"successes": successes, "episodes": episodes, "rate": successes / episodes,
            "ci95": list(wilson(successes, episodes))}


def summarize(results) -> dict:
    out = {}
    for split in ("train", "heldout"):
        rs = [r for r in results if r.split == split]
        if rs:
            out[split] = rate(sum(r.successes for r in rs), sum(r.episodes for r in rs))
    out["per_task"] = {r.task: r.rate for r in results}
    return out


def sft_start(a, work: Path, suite: str, tasks: str, env_kw: dict) -> tuple[Path, float]:
    t0 = time.perf_counter()
    if a.backbone == "state" and a.sft_steps == 0:  # the state-only baseline from scratch (no demos needed)
        from vlaforge.envs import env_tasks, suite_spec
        from vlaforge.policies import build_policy, save_policy

        spec = suite_spec(suite, env_tasks(suite, tasks), **env_kw)
        torch.manual_seed(a.seed)
        save_policy(build_policy(backbone="state", state_dim=spec.state_dim, action_dim=spec.action_dim),
                    work / "init")
        return work / "init", time.perf_counter() - t0
    sft_dir = work / "sft"
    if not (sft_dir / "model.safetensors").exists():
        run_collect(CollectArgs(suite=suite, tasks=tasks, episodes=a.demo_episodes, out=str(work / "demos"),
                                num_envs=a.num_envs, workers=a.workers, noise=a.demo_noise,
                                env_kwargs={k: float(v) for k, v in env_kw.items() if k == "privileged"}), quiet=True)
        run_sft(SFTArgs(demos=str(work / "demos"), out=str(sft_dir), head=a.head, backbone=a.backbone,
                        threads=a.threads, sft=SFTConfig(steps=a.sft_steps, seed=a.seed)), quiet=True)
    return sft_dir, time.perf_counter() - t0


def run_algos(a, work: Path, suite: str, tasks: str, eval_tasks: str, env_kw: dict, train_kw: dict) -> dict:
    torch.set_num_threads(a.threads)
    sft_dir, sft_time = sft_start(a, work, suite, tasks, env_kw)
    ev = EvalArgs(checkpoint=str(sft_dir), suite=suite, tasks=eval_tasks, episodes=a.eval_episodes,
                  num_envs=a.num_envs, workers=a.workers, out=str(work / "eval_sft.json"), env_kwargs=env_kw)
    before, _ = run_eval(ev, quiet=True)
    rows = []
    for algo in a.algos.split(","):
        t0 = time.perf_counter()
        cfg = TrainConfig(algo=algo, suite=suite, tasks=tasks, init=str(sft_dir), out=str(work / algo),
                          iterations=a.iterations, groups=a.groups, num_envs=a.num_envs, workers=a.workers,
                          eval_every=0, progress=False, seed=a.seed, lr=a.lr, threads=a.threads,
                          env_kwargs={k: float(v) for k, v in env_kw.items() if k != "max_steps"}, **train_kw)
        if hasattr(cfg.algo_cfg, "group_size") and algo != "ppo":
            cfg.algo_cfg.group_size = a.group_size
        for k in ("minibatch_size", "epochs", "temperature", "critic_warmup"):  # 0 keeps the algorithm's default
            if getattr(a, k, 0) and hasattr(cfg.algo_cfg, k):
                setattr(cfg.algo_cfg, k, getattr(a, k))
        if algo == "ppo":
            cfg.groups = a.groups * a.group_size  # same episodes per iteration, one per initial state
        train(cfg)
        wall = time.perf_counter() - t0
        after, _ = run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(work / algo / "final"),
                                        "out": str(work / f"eval_{algo}.json")}), quiet=True)
        curve = [json.loads(x) for x in (work / algo / "metrics.jsonl").read_text().splitlines()]
        curve = [(c["rollout/env_steps"], c["rollout/success"]) for c in curve if "rollout/success" in c]
        rows.append({"algo": algo, "before": summarize(before), "after": summarize(after), "env_steps": curve[-1][0],
                     "wall_s": wall, "curve": curve})
        print(f"{algo}: before {rows[-1]['before']} after {rows[-1]['after']} env steps {curve[-1][0]} wall {wall:.0f}s",
              flush=True)
    return {"sft_time_s": sft_time, "rows": rows,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch threads",
            "date": time.strftime("%Y-%m-%d"), "args": vars(a)}


def plot(result: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in result["rows"]:
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, label=r["algo"])
    ax.set_xlabel("env steps")
    ax.set_ylabel("rollout success (training contexts)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write(result: dict, out: str | None) -> None:
    if out:
        atomic_write_text(out, json.dumps(result, indent=2))


def add_args(ap, **defaults) -> None:
    d = {"algos": "ppo,grpo,rloo,tpo", "iterations": 20, "groups": 8, "group_size": 8, "demo_episodes": 30,
         "sft_steps": 500, "eval_episodes": 20, "num_envs": 16, "workers": 0, "head": "gaussian", "lr": 3e-5,
         "threads": 2, "seed": 0, "demo_noise": 0.3, "backbone": "vision", "minibatch_size": 0, "epochs": 0,
         "temperature": 0.0, "critic_warmup": 0}
    d.update(defaults)
    for k, v in d.items():
        ap.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    ap.add_argument("--work", default="runs/bench")
    ap.add_argument("--out", default=None, help="JSON results file")
    ap.add_argument("--plot", default=None, help="learning-curve PNG")
