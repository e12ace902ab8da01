"""RL on pixels (issue 15, part 5): the vision tiny VLA, SFT from ≤ 10 scripted demos per task, then
each method, on Meta-World MT1 tasks, over training seeds; success on 50 held-out evaluation seeds.

The actor always reads pixels and proprioception only; methods differ in what training may use:

* ``ppo`` — today's PPO (as in docs/benchmarks.md: lr 1e-4, 64-step minibatches, shaping 1, critic
  warm-up, temperature 1), the image critic.
* ``ppo+priv`` — the same with the asymmetric critic (``--critic privileged``: the value function reads
  ``sim_state`` + proprio).
* ``aux/ppo+priv`` — SFT with the perception readout (``vlaforge sft --aux``), then ``ppo+priv``.
* ``aux/ppo+priv+readout`` — and the readout's loss kept on the rollout frames during RL
  (``--ppo.readout-coef 1``): the encoder keeps learning to localise on every configuration visited.
* ``distill`` — privileged-teacher distillation (``algos/distill.py``): a state-backbone teacher trained from
  scratch by PPO on the privileged state without rendering labels every frame the pixel policy visits
  (DAgger), starting from the pixel policy's SFT. The teacher's CPU time counts in ``cpu_s``.
* ``distill300`` — the same with 300 cloning steps per iteration; ``distill300+tdemos`` — and the teacher starts
  from SFT on the pixel policy's 10 demos recorded again with the privileged state (same seed: same layouts and
  expert), then PPO (``privileged_teacher(demos=10)``): for tasks whose state PPO from scratch fails in this budget.
* ``sft+aux`` … any ``SFT/RL`` pair: the part before ``/`` names the SFT variant (``base``, ``aux``,
  ``shift``, ``aux+shift``), the part after it the RL method; ``none`` as the RL method reports the SFT
  policy itself (a zero-budget row).

Per (task, seed): demos are collected with that seed (seeds never used for evaluation), the SFT variant
is trained once and shared by every method that starts from it, and "before" is that SFT policy on the
same 50 evaluation seeds as "after". ``cpu_s`` is the CPU time of the RL run (process + children).

    python benchmarks/vision_rl.py --tasks reach-v3,button-press-topdown-v3 --methods ppo,ppo+priv,aux/ppo+priv \
        --seeds 0,1,2 --out docs/bench/vision_rl.json --plot docs/bench/vision_rl.png

JSON: ``{"meta": …, "rows": [{"task", "method", "seed", "before": {"successes", "episodes"},
"after": {"successes", "episodes"}, "env_steps", "cpu_s"}], "curves": {"task/method/seed": [[env_steps,
rollout success], …]}, "pooled": …}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from vlaforge.algos.distill import check_teacher
from vlaforge.algos.sft import SFTConfig
from vlaforge.errors import UsageError
from vlaforge.fsutil import atomic_write_text
from vlaforge.pipeline import (
    CollectArgs,
    EvalArgs,
    SFTArgs,
    privileged_teacher,
    run_collect,
    run_eval,
    run_sft,
)
from vlaforge.rollout.evaluate import wilson
from vlaforge.train.loop import TrainConfig, train

SFT_VARIANTS = {"base": {}, "aux": {"aux": True}, "shift": {"shift": 4}, "aux+shift": {"aux": True, "shift": 4}}

# RL methods: TrainConfig fields (and PPO sub-config fields under "ppo")
METHODS: dict[str, dict] = {
    "none": {},
    "ppo": {"algo": "ppo", "ppo": {"minibatch_size": 64, "critic_warmup": 5, "temperature": 1.0}},
    "ppo+priv": {"algo": "ppo", "critic": "privileged", "ppo": {"minibatch_size": 64, "critic_warmup": 2,
                                                                "temperature": 1.0}},
    "ppo+priv+readout": {"algo": "ppo", "critic": "privileged",
                         "ppo": {"minibatch_size": 64, "critic_warmup": 2, "temperature": 1.0, "readout_coef": 1.0}},
    # a state teacher trained by PPO on the privileged state (see teacher()), distilled into the pixel policy by DAgger
    "distill": {"algo": "distill", "lr": 3e-4, "distill": {"steps": 100, "batch_size": 64}},
    "distill300": {"algo": "distill", "lr": 3e-4, "distill": {"steps": 300, "batch_size": 64}},  # 3x the fitting
    # the teacher starts from SFT on the same demos (privileged state, no camera), then PPO
    "distill300+tdemos": {"algo": "distill", "lr": 3e-4, "distill": {"steps": 300, "batch_size": 64},
                          "teacher_demos": True},
}


def teacher(task: str, seed: int, base: Path, a, demos: int = 0) -> tuple[Path, str, float, dict]:
    """The privileged teacher of ``distill``: a state-backbone policy trained by PPO on Meta-World's privileged state
    (hand, object and goal positions) without rendering (~5x the env steps/s), as in docs/benchmarks.md's state PPO
    row (lr 3e-4, shaping 1, 32 episodes per iteration); from scratch (``demos = 0``: no demos) or from SFT on
    ``demos`` episodes of the same seed's expert recorded with the privileged state. Cached per (task, seed, demos).
    Returns (its policy, its --distill.teacher-state indices, CPU s, its held-out success)."""
    name = "teacher" if demos == 0 else f"teacher_demos{demos}"
    tdir = base / name
    final = tdir / "final"
    info = base / f"{name}.json"
    if info.exists():
        d = json.loads(info.read_text())
        return final, d["teacher_state"], d["cpu_s"], d["success"]
    c0 = cpu_seconds()
    priv = {"privileged": 1.0, "render": 0.0}
    _, index = privileged_teacher("metaworld", task, tdir, a.teacher_iterations, seed, a.threads, a.max_steps,
                                  a.num_envs, a.workers, demos=demos, sft_steps=a.teacher_sft_steps,
                                  demo_noise=a.demo_noise)
    cpu = cpu_seconds() - c0
    res, _ = run_eval(EvalArgs(checkpoint=str(final), suite="metaworld", tasks=task, episodes=a.eval_episodes,
                               num_envs=a.num_envs, threads=a.threads, out=str(base / f"eval_{name}.json"),
                               env_kwargs={**priv, "max_steps": a.max_steps}), quiet=True)
    success = counts(res)
    atomic_write_text(info, json.dumps({"cpu_s": cpu, "success": success, "teacher_state": index}))
    return final, index, cpu, success


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def split_method(m: str) -> tuple[str, str]:
    sft, _, rl = m.rpartition("/")
    sft = sft or "base"
    if sft not in SFT_VARIANTS or rl not in METHODS:
        raise SystemExit(f"unknown method '{m}': SFT variant one of {sorted(SFT_VARIANTS)}, RL one of {sorted(METHODS)}")
    return sft, rl


def counts(results) -> dict:
    return {"successes": sum(r.successes for r in results), "episodes": sum(r.episodes for r in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="reach-v3,button-press-topdown-v3")
    ap.add_argument("--methods", default="ppo,ppo+priv,aux/ppo+priv")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--demo-episodes", type=int, default=10)
    ap.add_argument("--demo-noise", type=float, default=0.1)
    ap.add_argument("--sft-steps", type=int, default=800)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--groups", type=int, default=32, help="episodes per iteration")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--shaping", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--teacher-iterations", type=int, default=64, help="distill: the state teacher's PPO iterations")
    ap.add_argument("--teacher-sft-steps", type=int, default=1000, help="+tdemos: the state teacher's SFT steps")
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/vision_rl")
    ap.add_argument("--out", default="docs/bench/vision_rl.json")
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        split_method(m)
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.exists() else {"rows": [], "curves": {}}
    done = {(r["task"], r["method"], r["seed"]) for r in data["rows"]}
    env_kw = {"shaping": a.shaping} if a.shaping else {}
    for task in a.tasks.split(","):
        for seed in [int(s) for s in a.seeds.split(",")]:
            base = work / task / f"seed{seed}"
            demos = base / "demos"
            if not (demos / "meta" / "info.json").exists():
                run_collect(CollectArgs(suite="metaworld", tasks=task, episodes=a.demo_episodes, out=str(demos),
                                        num_envs=min(a.demo_episodes, 10), noise=a.demo_noise, seed=seed), quiet=True)
            ev = EvalArgs(suite="metaworld", tasks=task, episodes=a.eval_episodes, num_envs=a.num_envs,
                          workers=a.workers, threads=a.threads, env_kwargs={"max_steps": a.max_steps})
            before: dict[str, dict] = {}
            for m in methods:
                if (task, m, seed) in done:
                    continue
                sft_name, rl = split_method(m)
                sft_dir = base / f"sft_{sft_name}"
                if not (sft_dir / "model.safetensors").exists():
                    v = SFT_VARIANTS[sft_name]
                    run_sft(SFTArgs(demos=str(demos), out=str(sft_dir), aux=v.get("aux", False), threads=a.threads,
                                    sft=SFTConfig(steps=a.sft_steps, seed=seed, augment_shift=v.get("shift", 0))),
                            quiet=True)
                if sft_name not in before:
                    res, _ = run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(sft_dir),
                                                  "out": str(base / f"eval_sft_{sft_name}.json")}), quiet=True)
                    before[sft_name] = counts(res)
                row = {"task": task, "method": m, "seed": seed, "before": before[sft_name],
                       "after": before[sft_name], "env_steps": 0, "cpu_s": 0.0}
                if rl != "none":
                    spec = dict(METHODS[rl])
                    sub = {k: spec.pop(k) for k in ("ppo", "grpo", "rloo", "distill") if k in spec}
                    teacher_demos = a.demo_episodes if spec.pop("teacher_demos", False) else 0
                    run_dir = base / m.replace("/", "_")
                    cfg = TrainConfig(suite="metaworld", tasks=task, init=str(sft_dir), out=str(run_dir),
                                      iterations=a.iterations, groups=a.groups, num_envs=a.num_envs,
                                      workers=a.workers, max_steps=a.max_steps, env_kwargs=dict(env_kw),
                                      eval_every=0, progress=False, tensorboard=False, seed=seed,
                                      threads=a.threads, **{"lr": a.lr, **spec})
                    for name, fields in sub.items():
                        for k, val in fields.items():
                            setattr(getattr(cfg, name), k, val)
                    teacher_cpu = 0.0
                    if cfg.algo == "distill":
                        tpath, index, teacher_cpu, tsucc = teacher(task, seed, base, a, teacher_demos)
                        cfg.distill.teacher, cfg.distill.teacher_state = str(tpath), index
                        key = f"{task}/{seed}" + (f"/demos{teacher_demos}" if teacher_demos else "")
                        data.setdefault("teachers", {})[key] = tsucc
                        try:  # the same 50 evaluation seeds as the student's "before"
                            check_teacher(tsucc, before[sft_name], f"the teacher of {key}")
                        except UsageError as e:
                            print(f"{task}/{m}/seed {seed}: {e}", flush=True)
                            continue
                    c0 = cpu_seconds()
                    train(cfg)
                    row["cpu_s"] = cpu_seconds() - c0 + teacher_cpu  # the teacher's training counts
                    res, _ = run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(run_dir / "final"),
                                                  "out": str(run_dir / "eval.json")}), quiet=True)
                    row["after"] = counts(res)
                    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
                    curve = [(c["rollout/env_steps"], c["rollout/success"]) for c in lines if "rollout/success" in c]
                    row["env_steps"] = curve[-1][0] if curve else 0
                    data["curves"][f"{task}/{m}/{seed}"] = curve
                data["rows"].append(row)
                print(json.dumps(row), flush=True)
                data["pooled"] = pool(data["rows"])
                data["meta"] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch threads",
                                "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "args": vars(a),
                                "metric": "success_once on 50 fixed evaluation seeds from 10,000,000 (episodes end at "
                                          "first success)"}
                atomic_write_text(out, json.dumps(data, indent=2))
    if a.plot:
        plot(data, a.plot)


def pool(rows: list[dict]) -> list[dict]:
    """Per (task, method): successes summed over training seeds, with Wilson 95% intervals."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"]), []).append(r)
    out = []
    for (task, m), rs in groups.items():
        entry = {"task": task, "method": m, "seeds": sorted(r["seed"] for r in rs)}
        for k in ("before", "after"):
            s, n = sum(r[k]["successes"] for r in rs), sum(r[k]["episodes"] for r in rs)
            entry[k] = {"successes": s, "episodes": n, "rate": s / max(n, 1), "ci95": list(wilson(s, n))}
        out.append(entry)
    return out


def plot(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({k.split("/")[0] for k in data["curves"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        by_method: dict[str, list] = {}
        for k, c in data["curves"].items():
            t, *m, _seed = k.split("/")
            if t == task and c:
                by_method.setdefault("/".join(m), []).append(c)
        for m, curves in sorted(by_method.items()):
            n = min(len(c) for c in curves)
            xs = [curves[0][i][0] for i in range(n)]
            ys = [sum(c[i][1] for c in curves) / len(curves) for i in range(n)]
            ax.plot(xs, ys, label=f"{m} ({len(curves)} seeds)")
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylabel("rollout success (mean over seeds)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
