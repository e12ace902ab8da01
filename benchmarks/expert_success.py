"""Success rate of a suite's scripted expert, per task, over seeded episodes (physics only, no rendering).

    python benchmarks/expert_success.py --suite maniskill --tasks pick-cube,stack-cube,place-sphere --episodes 20 \
        --out docs/bench/expert_maniskill.json
    python benchmarks/expert_success.py --suite libero --tasks object-0,object-1,object-2,spatial-0,spatial-1,spatial-2 \
        --episodes 3 --out docs/bench/expert_libero.json

Seeds start at 1,000,000 (the demo range). One action per ``step_chunk`` call, as ``vlaforge collect``
queries the expert. Writes JSON (``--out``) and prints one line per task.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from vlaforge.envs import env_factory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", required=True)
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    env = env_factory(a.suite, a.tasks, render=False)()
    rows = []
    try:
        for tid, task in enumerate(env.spec.tasks):
            wins, steps, t0 = 0, 0, time.perf_counter()
            for ep in range(a.episodes):
                env.reset(tid, 1_000_000 + ep)
                res = None
                while not env.done:
                    res = env.step_chunk(env.expert_action()[None])
                    steps += res.steps
                wins += bool(res.success)
            wall = time.perf_counter() - t0
            rows.append({"task": task.name, "instruction": task.instruction, "successes": wins,
                         "episodes": a.episodes, "env_steps": steps, "wall_s": wall})
            print(f"{task.name:<14} {wins}/{a.episodes} ({task.instruction}) {wall:.0f}s", flush=True)
    finally:
        env.close()
    if a.out:
        from vlaforge.fsutil import atomic_write_text

        atomic_write_text(a.out, json.dumps({"benchmark": "expert_success", "suite": a.suite, "date": time.strftime("%Y-%m-%d"),
                                             "machine": f"{platform.machine()}", "args": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
