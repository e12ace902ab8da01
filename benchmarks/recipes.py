"""Every recipe on the same Meta-World tasks from the same SFT checkpoint, plus ablations.

One SFT start (scripted-expert demos on the seen tasks), evaluated on fixed held-out seeds;
then each recipe (`vlaforge train --recipe NAME`) from it with the same iteration and group
budget, evaluated on the same seeds; iRe-VLA also reports its three task groups (seen in SFT,
new tasks learned by RL, held-out tasks). Ablations: VLA-RL's process reward on/off and its
curriculum on/off, RIPT-VLA's dynamic rejection on/off (share of rejected groups, env steps
to reach a rollout success level).

    python benchmarks/recipes.py --out docs/bench/recipes.json
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
from rl_common import summarize  # noqa: E402

from vlaforge.algos.sft import SFTConfig  # noqa: E402
from vlaforge.fsutil import atomic_write_text  # noqa: E402
from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs, run_collect, run_eval, run_sft  # noqa: E402
from vlaforge.recipes import recipe_defaults, run_recipe  # noqa: E402

RUNS = {  # name -> (recipe, overrides applied after the preset)
    "ire-vla": ("ire-vla", {}),
    "grape": ("grape", {}),
    "ript-vla": ("ript-vla", {}),
    "vla-rl": ("vla-rl", {}),
    "simplevla-rl": ("simplevla-rl", {}),
    "ript-vla/no-rejection": ("ript-vla", {"dynamic_rejection": False}),
    "vla-rl/no-rprm": ("vla-rl", {"vla_rl.rprm_weight": 0.0}),
    "vla-rl/no-curriculum": ("vla-rl", {"curriculum": "uniform"}),
    "ire-vla/sl-demos-only": ("ire-vla", {"ire_vla.demo_fraction": 1.0}),  # SL stages without the RL successes
}


def _set(cfg, key: str, value) -> None:
    obj = cfg
    *path, last = key.split(".")
    for p in path:
        obj = getattr(obj, p)
    setattr(obj, last, value)


def steps_to_level(curve: list[tuple[int, float]], level: float) -> int | None:
    for steps, s in curve:
        if s >= level:
            return steps
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="reach-v3,button-press-topdown-v3", help="seen tasks (demos, RL)")
    ap.add_argument("--new-tasks", default="drawer-close-v3", help="iRe-VLA: tasks learned by RL only")
    ap.add_argument("--heldout", default="door-close-v3", help="iRe-VLA: tasks never trained on")
    ap.add_argument("--runs", default=",".join(k for k in RUNS if k != "ire-vla/sl-demos-only"),
                    help=f"comma-separated, from: {', '.join(RUNS)}")
    ap.add_argument("--head", default="gaussian",
                    help="action head of the SFT start every recipe but vla-rl shares (vla-rl: tokens, same demos)")
    ap.add_argument("--demo-episodes", type=int, default=30)
    ap.add_argument("--sft-steps", type=int, default=1200)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=120)
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-episodes", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--minibatch-size", type=int, default=0, help="decision steps per optimizer step (0: each algorithm's default)")
    ap.add_argument("--level", type=float, default=0.5, help="rollout success level for 'env steps to reach'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench/recipes")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    env_kw = {"max_steps": a.max_steps}

    def sft_start(head: str) -> Path:
        """One SFT checkpoint per action head, on the same demos with the same settings."""
        d = work / f"sft_{head}"
        if not (d / "model.safetensors").exists():
            if not (work / "demos" / "meta" / "info.json").exists():
                run_collect(CollectArgs(suite="metaworld", tasks=a.tasks, episodes=a.demo_episodes,
                                        out=str(work / "demos"), num_envs=a.num_envs, workers=a.workers), quiet=True)
            run_sft(SFTArgs(demos=str(work / "demos"), out=str(d), threads=a.threads, head=head,
                            sft=SFTConfig(steps=a.sft_steps, seed=a.seed)), quiet=True)
        return d

    ev = EvalArgs(checkpoint="", suite="metaworld", tasks=a.tasks, episodes=a.eval_episodes,
                  num_envs=a.num_envs, workers=a.workers, threads=a.threads, env_kwargs=env_kw)
    starts: dict[str, tuple[Path, dict]] = {}

    def start_for(recipe: str) -> tuple[Path, dict]:
        head = "tokens" if recipe == "vla-rl" else a.head  # VLA-RL is defined on action tokens
        if head not in starts:
            d = sft_start(head)
            res = run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(d), "out": str(work / f"eval_sft_{head}.json")}),
                           quiet=True)[0]
            starts[head] = (d, summarize(res))
            print(f"SFT start ({head} head): {starts[head][1]}", flush=True)
        return starts[head]

    rows = []
    for name in a.runs.split(","):
        recipe, over = RUNS[name]
        sft, before = start_for(recipe)
        cfg = recipe_defaults(recipe)
        cfg.suite, cfg.tasks, cfg.init, cfg.out = "metaworld", a.tasks, str(sft), str(work / name.replace("/", "_"))
        cfg.iterations, cfg.groups, cfg.num_envs, cfg.workers = a.iterations, a.groups, a.num_envs, a.workers
        cfg.max_steps, cfg.eval_every, cfg.progress, cfg.seed, cfg.lr = a.max_steps, 0, False, a.seed, a.lr
        cfg.threads, cfg.eval_episodes = a.threads, a.eval_episodes
        if hasattr(cfg.algo_cfg, "group_size") and cfg.algo != "ppo":
            cfg.algo_cfg.group_size = a.group_size
        if cfg.algo == "ppo":
            cfg.groups = a.groups * a.group_size  # same episodes per iteration
        if recipe == "ire-vla":
            cfg.ire_vla.new_tasks = a.new_tasks
            cfg.eval_tasks = ",".join([a.tasks, a.new_tasks, a.heldout])
            cfg.ire_vla.rl_iterations = max(1, a.iterations // 2)
            cfg.ire_vla.rounds = 2
        if a.minibatch_size and hasattr(cfg.algo_cfg, "minibatch_size"):
            cfg.algo_cfg.minibatch_size = a.minibatch_size
        for k, v in over.items():
            _set(cfg, k, v)
        t1 = time.perf_counter()
        run_recipe(cfg)
        wall = time.perf_counter() - t1
        out_dir = Path(cfg.out)
        row = {"run": name, "recipe": recipe, "start": sft.name, "wall_s": wall}
        if recipe == "ire-vla":
            rep = json.loads((out_dir / "ire_vla.json").read_text())
            row["groups"] = rep["groups"]
            row["stages"] = [{k: v for k, v in s.items() if k != "sl_metrics"} for s in rep["stages"]]
            stage_dirs = [out_dir / f"round{r}" / "rl" for r in range(cfg.ire_vla.rounds)]
        else:
            stage_dirs = [out_dir]
        metrics, curve, env_steps = [], [], 0
        for d in stage_dirs:  # iRe-VLA's RL stages each count env steps from 0: make them cumulative
            ms = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
            curve += [(env_steps + m["rollout/env_steps"], m["rollout/success"]) for m in ms if "rollout/success" in m]
            env_steps += ms[-1]["rollout/env_steps"]
            metrics += ms
        after = summarize(run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(out_dir / "final"),
                                               "out": str(out_dir / "eval_final.json")}), quiet=True)[0])
        rej = [m["rollout/rejected_group_share"] for m in metrics if "rollout/rejected_group_share" in m]
        row.update({"before": before, "after": after, "env_steps": env_steps, "curve": curve,
                    "rejected_group_share": sum(rej) / len(rej) if rej else 0.0,
                    f"env_steps_to_{a.level:g}": steps_to_level(curve, a.level)})
        extra = {k: v for k, v in metrics[-1].items() if k.startswith(("grape/", "rprm/", "vla_rl/"))}
        if extra:
            row["last_metrics"] = extra
        rows.append(row)
        print(f"{name}: before {before.get('train')} after {after.get('train')} env steps {env_steps} "
              f"wall {wall:.0f}s", flush=True)
        result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch threads",
                  "date": time.strftime("%Y-%m-%d"), "args": vars(a),
                  "sft": {h: {"checkpoint": str(d), **b} for h, (d, b) in starts.items()}, "rows": rows}
        if a.out:
            atomic_write_text(a.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
