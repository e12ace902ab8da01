"""Action heads under RL: Gaussian, binned tokens and flow matching, each SFT'd then trained with
the same algorithm and budget, success before/after on fixed held-out evaluation seeds.

Default setting: PointReach with the goal offset in the state and the state-only backbone, so
that what differs between rows is the head (its sampling distribution and log-probabilities:
the flow head's are the exact Gaussian densities of its SDE denoising chain). The SFT is short on
purpose (a weak start); RL is PPO with 64-step minibatches.

    python benchmarks/rl_heads.py --sft-steps 4 --out docs/bench/rl_heads_pointreach_ppo_lr1e-4.json
    python benchmarks/rl_heads.py --sft-steps 4 --algo rloo --groups 8 --iterations 40 --out docs/bench/rl_heads_pointreach_rloo.json

Meta-World with the privileged state (object and goal xyz) and no rendering, three training seeds:

    python benchmarks/rl_heads.py --suite metaworld --tasks button-press-topdown-v3 --eval-tasks button-press-topdown-v3 \
        --backbone state --env-kwargs privileged=1,render=0,shaping=1 --max-steps 150 --demo-episodes 30 \
        --sft-steps 200 --iterations 40 --groups 32 --critic-warmup 2 --threads 2 --eval-episodes 50 \
        --seeds 0,1,2 --work runs/bench/heads_mw_button_priv --out docs/bench/rl_heads_metaworld_button_privileged.json

``--seeds 0,1,2`` repeats the whole pipeline per training seed (demos collected with that seed,
SFT, RL) and adds a pooled row per head: the evaluation seeds stay the same fixed held-out set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from rl_common import plot, rate, summarize, write  # noqa: E402

from vlaforge.algos.sft import SFTConfig  # noqa: E402
from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs, run_collect, run_eval, run_sft  # noqa: E402
from vlaforge.train.loop import TrainConfig, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", default="gaussian,tokens,flow")
    ap.add_argument("--algo", default="ppo")
    ap.add_argument("--suite", default="pointreach")
    ap.add_argument("--tasks", default="train")
    ap.add_argument("--eval-tasks", default="all")
    ap.add_argument("--backbone", default="state")
    ap.add_argument("--env-kwargs", default="privileged=1,radius=0.2", help="name=value pairs for the suite's envs")
    ap.add_argument("--demo-episodes", type=int, default=20)
    ap.add_argument("--demo-noise", type=float, default=0.3, help="Gaussian action noise of the scripted expert")
    ap.add_argument("--sft-steps", type=int, default=150)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--groups", type=int, default=64, help="episodes per iteration (PPO) / contexts (group methods)")
    ap.add_argument("--minibatch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-warmup", type=int, default=0, help="iterations of linear policy-lr ramp (0 = off)")
    ap.add_argument("--critic-warmup", type=int, default=1, help="PPO: first iterations that train the value head only")
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds (demos, SFT and RL each)")
    ap.add_argument("--work", default="runs/bench/heads")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env_kw = {k: float(v) for k, v in (p.split("=") for p in a.env_kwargs.split(",") if p)}
    if a.max_steps:
        env_kw["max_steps"] = float(a.max_steps)
    work = Path(a.work)
    ev = EvalArgs(checkpoint="", suite=a.suite, tasks=a.eval_tasks, episodes=a.eval_episodes, num_envs=a.num_envs,
                  workers=a.workers, threads=a.threads, env_kwargs=env_kw)
    seeds = [int(x) for x in a.seeds.split(",") if x]
    rows = []
    for seed in seeds:
        wd = work if seeds == [0] else work / f"seed{seed}"  # a single seed 0 keeps the old layout
        if not (wd / "demos" / "meta" / "info.json").exists():
            run_collect(CollectArgs(suite=a.suite, tasks=a.tasks, episodes=a.demo_episodes, out=str(wd / "demos"),
                                    noise=a.demo_noise, num_envs=a.num_envs, workers=a.workers, seed=seed,
                                    env_kwargs={k: v for k, v in env_kw.items() if k != "max_steps"}), quiet=True)
        for head in a.heads.split(","):
            rows.append(run_head(a, head, seed, wd, ev, env_kw))
            write(report(a, rows, seeds), a.out)
    if len(seeds) > 1:
        for head in a.heads.split(","):
            rs = [r for r in rows if r["head"] == head]
            rows.append({"algo": f"{a.algo} / {head} / {len(rs)} seeds pooled", "head": head,
                         "before": pool([r["before"] for r in rs]), "after": pool([r["after"] for r in rs]),
                         "env_steps": sum(r["env_steps"] for r in rs), "wall_s": sum(r["wall_s"] for r in rs),
                         "curve": []})
        write(report(a, rows, seeds), a.out)
    if a.plot:
        title = f"{a.algo} per action head ({a.suite}, {a.backbone} backbone)"
        plot({"rows": mean_curves(rows, a.algo) if len(seeds) > 1 else rows}, a.plot, title)


def run_head(a, head: str, seed: int, wd: Path, ev: EvalArgs, env_kw: dict) -> dict:
    """SFT one head on ``wd``'s demos, evaluate, train with ``a.algo``, evaluate again."""
    sft = wd / f"sft_{head}"
    if not (sft / "model.safetensors").exists():
        run_sft(SFTArgs(demos=str(wd / "demos"), out=str(sft), head=head, backbone=a.backbone, threads=a.threads,
                        sft=SFTConfig(steps=a.sft_steps, seed=seed)), quiet=True)
    before = summarize(run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(sft),
                                            "out": str(wd / f"eval_sft_{head}.json")}), quiet=True)[0])
    t0 = time.perf_counter()
    cfg = TrainConfig(algo=a.algo, suite=a.suite, tasks=a.tasks, init=str(sft), out=str(wd / f"{a.algo}_{head}"),
                      iterations=a.iterations, groups=a.groups, num_envs=a.num_envs, workers=a.workers,
                      eval_every=0, progress=False, seed=seed, lr=a.lr, lr_warmup=a.lr_warmup, threads=a.threads,
                      env_kwargs={k: v for k, v in env_kw.items() if k != "max_steps"},
                      max_steps=int(env_kw["max_steps"]) if "max_steps" in env_kw else None)
    if hasattr(cfg.algo_cfg, "minibatch_size"):
        cfg.algo_cfg.minibatch_size = a.minibatch_size
    if a.algo == "ppo":
        cfg.ppo.critic_warmup = a.critic_warmup
    train(cfg)
    wall = time.perf_counter() - t0
    after = summarize(run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(Path(cfg.out) / "final"),
                                           "out": str(wd / f"eval_{a.algo}_{head}.json")}), quiet=True)[0])
    ms = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    curve = [(m["rollout/env_steps"], m["rollout/success"]) for m in ms if "rollout/success" in m]
    name = f"{a.algo} / {head}" + (f" / seed {seed}" if a.seeds != "0" else "")
    print(f"{name}: before {before} after {after} wall {wall:.0f}s", flush=True)
    return {"algo": name, "head": head, "seed": seed, "before": before, "after": after,
            "env_steps": curve[-1][0], "wall_s": wall, "curve": curve}


def mean_curves(rows: list[dict], algo: str) -> list[dict]:
    """Per head, the rollout-success curve averaged over seeds, iteration by iteration."""
    out = []
    for head in dict.fromkeys(r["head"] for r in rows if r["curve"]):
        cs = [r["curve"] for r in rows if r["head"] == head and r["curve"]]
        n = min(len(c) for c in cs)
        curve = [(sum(c[i][0] for c in cs) / len(cs), sum(c[i][1] for c in cs) / len(cs)) for i in range(n)]
        out.append({"algo": f"{algo} / {head} (mean of {len(cs)} seeds)", "curve": curve})
    return out


def pool(summaries: list[dict]) -> dict:
    """Sum successes and episodes over seeds per split; Wilson interval of the pooled rate."""
    out = {}
    for split in ("train", "heldout"):
        parts = [s[split] for s in summaries if split in s]
        if parts:
            out[split] = rate(sum(p["successes"] for p in parts), sum(p["episodes"] for p in parts))
    return out


def report(a, rows: list[dict], seeds: list[int]) -> dict:
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch threads",
            "date": time.strftime("%Y-%m-%d"), "args": vars(a), "seeds": seeds, "rows": rows}


if __name__ == "__main__":
    main()
