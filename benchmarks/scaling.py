"""Ray scale-out on one machine: env steps/s and update time with 1 vs 2 env workers and 1 vs 2
learners, next to the local loop, and the per-stage timers of an iteration.

    python benchmarks/scaling.py --out docs/bench/scaling.json

Every setting runs the same PPO job (PointReach, tiny vision VLA, 8 contexts × 8 rollouts =
64 episodes per iteration, 16 envs per env worker, 1 torch thread per process) for
``--iterations`` iterations; the first iteration is dropped as warm-up and the table shows
medians of the others. Ray settings share one local cluster of ``--cpus`` CPUs; each actor
reserves half a CPU so that 2 env workers + 2 learners fit in 2 CPUs. Stages run one after
another (collect, then update), so on 2 cores two env workers can at best halve collection
time, and two learners the update time.

Writes JSON (``--out``) and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

STAGES = ("collect", "reward", "advantages", "update", "sync")


def job(out: str, iterations: int, ray=None):
    from vlaforge.train.loop import TrainConfig

    cfg = TrainConfig(algo="ppo", suite="pointreach", groups=8, num_envs=16, iterations=iterations, eval_every=0,
                      progress=False, tensorboard=False, out=out, threads=1, checkpoint_every=1000)
    cfg.ppo.group_size = 8
    cfg.ppo.critic_warmup = 0
    if ray is not None:
        cfg.ray = ray
    return cfg


def run_setting(name: str, iterations: int, env_workers: int = 0, learners: int = 0) -> dict:
    from vlaforge.distributed import RayConfig
    from vlaforge.train.loop import train

    with tempfile.TemporaryDirectory() as d:
        ray = None if env_workers == 0 else RayConfig(enabled=True, env_workers=env_workers, learners=learners,
                                                      env_worker_cpus=0.5, learner_cpus=0.5)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        train(job(d, iterations, ray))
        wall = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/collect_s" in r][1:]  # drop the warm-up iteration
    med = lambda k: statistics.median(r.get(k, 0.0) for r in rows)  # noqa: E731
    stages = {s: med(f"time/{s}_s") for s in STAGES}
    if env_workers == 0:  # the local loop times collect and (prepare + update) only
        stages = {"collect": med("time/collect_s"), "update": med("time/update_s")}
    return {"setting": name, "env_workers": env_workers, "learners": learners, "iterations_timed": len(rows),
            "env_steps_per_s": med("time/env_steps_per_s"), "stages_s": stages,
            "iteration_s": sum(stages.values()), "batch_steps": med("train/batch_steps"),
            "optimizer_steps": med("train/optimizer_steps"), "wall_s_incl_startup": wall,
            "loadavg_1min_before": load0, "loadavg_1min_after": os.getloadavg()[0], "last_iteration": {k: v for k, v in rows[-1].items() if k.startswith("time/")}}


def table(d: dict) -> str:
    lines = [f"Machine: {d['machine']}; date {d['date']}; command `{d['command']}`", "",
             "| setting | env steps/s | collect s | reward s | advantages s | update s | sync s | iteration s | "
             "decision steps / update | load before/after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["rows"]:
        s = r["stages_s"]
        cell = lambda k, s=s: f"{s[k]:.3f}" if k in s else "–"  # noqa: E731
        lines.append(f"| {r['setting']} | {r['env_steps_per_s']:.0f} | {cell('collect')} | {cell('reward')} | "
                     f"{cell('advantages')} | {cell('update')} | {cell('sync')} | {r['iteration_s']:.2f} | "
                     f"{r['batch_steps']:.0f} | {r['loadavg_1min_before']:.1f} / {r['loadavg_1min_after']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--out", default="docs/bench/scaling.json")
    args = ap.parse_args()
    import ray
    import torch

    from vlaforge.fsutil import atomic_write_text

    torch.set_num_threads(1)
    rows = [run_setting("local loop (no Ray)", args.iterations)]
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    try:
        for e, l in ((1, 1), (2, 1), (1, 2), (2, 2)):
            rows.append(run_setting(f"Ray: {e} env worker{'s' * (e > 1)}, {l} learner{'s' * (l > 1)}",
                                    args.iterations, e, l))
            print(rows[-1]["setting"], f"{rows[-1]['iteration_s']:.2f} s/iteration", flush=True)
    finally:
        ray.shutdown()
    d = {"benchmark": "scaling", "date": time.strftime("%Y-%m-%d"),
         "machine": f"{platform.machine()}, {os.cpu_count()} cores, Ray cluster of {args.cpus} CPUs",
         "command": f"python benchmarks/scaling.py --iterations {args.iterations} --cpus {args.cpus}",
         "args": vars(args), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(d, indent=2))
    print(table(d))


if __name__ == "__main__":
    main()
