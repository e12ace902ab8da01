"""SFT success: scripted demos → SFT of the tiny VLA → evaluation on fixed seeds, per task,
with the held-out split reported separately.

    python benchmarks/sft_success.py --suite pointreach --out docs/bench/sft_pointreach.json
    python benchmarks/sft_success.py --suite metaworld --tasks reach-v3,button-press-topdown-v3 \
        --demo-episodes 30 --sft-steps 1200 --workers 2 --out docs/bench/sft_metaworld.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from vlaforge.algos.sft import SFTConfig
from vlaforge.envs import suite_info
from vlaforge.fsutil import atomic_write_text
from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs, run_collect, run_eval, run_sft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="pointreach")
    ap.add_argument("--tasks", default="train", help="tasks to collect demos on")
    ap.add_argument("--eval-tasks", default=None, help="default: all of the suite's tasks for pointreach, else --tasks")
    ap.add_argument("--demo-episodes", type=int, default=150)
    ap.add_argument("--demo-noise", type=float, default=0.3)
    ap.add_argument("--sft-steps", type=int, default=1500)
    ap.add_argument("--head", default="gaussian")
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--work", default="runs/bench")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(a.work) / f"sft_{a.suite}_{a.head}"
    t0 = time.perf_counter()
    run_collect(CollectArgs(suite=a.suite, tasks=a.tasks, episodes=a.demo_episodes, out=str(work / "demos"),
                            noise=a.demo_noise, num_envs=a.num_envs, workers=a.workers), quiet=True)
    t1 = time.perf_counter()
    run_sft(SFTArgs(demos=str(work / "demos"), out=str(work / "sft"), head=a.head, sft=SFTConfig(steps=a.sft_steps)),
            quiet=True)
    t2 = time.perf_counter()
    eval_tasks = a.eval_tasks or ("all" if suite_info(a.suite).holds_all_tasks else a.tasks)
    res, man = run_eval(EvalArgs(checkpoint=str(work / "sft"), suite=a.suite, tasks=eval_tasks,
                                 episodes=a.eval_episodes, num_envs=a.num_envs, workers=a.workers), quiet=False)
    out = {"benchmark": "sft_success", "suite": a.suite, "head": a.head, "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "args": vars(a),
           "collect_s": t1 - t0, "sft_s": t2 - t1, "eval_s": time.perf_counter() - t2,
           "results": [r.as_dict() for r in res],
           "policy_ms_per_env_step": 1000 * man["policy_s_per_env_step"],
           "sim_ms_per_env_step": 1000 * man["sim_s_per_env_step"]}
    for split in ("train", "heldout"):
        rs = [r for r in res if r.split == split]
        if rs:
            from vlaforge.rollout.evaluate import wilson

            s, n = sum(r.successes for r in rs), sum(r.episodes for r in rs)
            out[split] = {"successes": s, "episodes": n, "rate": s / n, "ci95": list(wilson(s, n))}
            print(f"{split}: {s}/{n} = {s / n:.2f}")
    if a.out:
        atomic_write_text(a.out, json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
