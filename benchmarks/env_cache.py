"""Speed and memory of a multi-task Meta-World vec env whose envs keep a bounded cache of task simulators.

Each Meta-World env keeps one simulator + renderer per task it has run (~94 MiB, docs/bench/env_memory.json), so
MT50 on 4 envs would hold ~19 GB. ``--env-kwargs cache K`` keeps at most K per env (the least recently reset one
is closed), and the vector env resets each episode on an env that still holds its task (``envs.vector.EnvSlots``).
This measures what that costs: episodes of uniformly random tasks (as a multi-task rollout samples them) with
random 4-step action chunks (one render per chunk, episodes of ``--max-steps``), in one process, after a warm-up
of ``--warmup`` batches; per configuration the wall time, env steps per second, the simulators built in the
measured batches, and the process's RSS at the end. ``--no-affinity`` is the ablation: each env runs the episode
at its own position, whatever it holds.

    MUJOCO_GL=egl python benchmarks/env_cache.py --tasks MT50 --num-envs 2 --cache 0 13 --batches 100

JSON ``docs/bench/env_cache.json``: ``{"meta": {...}, "rows": [{"tasks", "num_envs", "cache", "affinity",
"episodes", "sims_built", "env_steps", "wall_s", "env_steps_per_s", "rss_mb", "command"}]}`` (rows merged with
those in ``--out`` by tasks, num_envs, cache and affinity).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from vlaforge.fsutil import atomic_write_text

sys.path.insert(0, str(Path(__file__).parent))
from env_memory import rss_mb  # noqa: E402  (benchmarks/env_memory.py)


def run(tasks: str, num_envs: int, cache: int, affinity: bool, batches: int, warmup: int, max_steps: int,
        seed: int) -> dict:
    """One configuration in this process (call it in a fresh process for a clean RSS)."""
    from vlaforge.envs import make_vec_env

    venv = make_vec_env("metaworld", num_envs, tasks=tasks, max_steps=max_steps, **({"cache": cache} if cache else {}))
    venv.slots.affinity = affinity  # False: the ablation, every env runs its own position
    rng = np.random.default_rng(seed)
    n_tasks = len(venv.spec.tasks)
    try:
        if cache == 0:  # warm: every env holds every task, as a long run without a cache ends up
            for t in range(n_tasks):
                venv.reset(np.full(num_envs, t), np.arange(num_envs))
        built0, steps, t0 = 0, 0, 0.0
        for b in range(warmup + batches):
            if b == warmup:
                built0, t0 = sum(e.sims_built for e in venv.envs), time.perf_counter()
            venv.reset(rng.integers(0, n_tasks, num_envs), rng.integers(0, 1_000_000, num_envs))
            done = np.zeros(num_envs, bool)
            while not done.all():
                st = venv.step(rng.uniform(-1, 1, (num_envs, 4, 4)).astype(np.float32))
                done |= st.done
                if b >= warmup:
                    steps += int(st.steps.sum())
        wall = time.perf_counter() - t0
        built = sum(e.sims_built for e in venv.envs) - built0
    finally:
        rss = rss_mb()
        venv.close()
    return {"tasks": tasks, "num_envs": num_envs, "cache": cache, "affinity": affinity,
            "episodes": batches * num_envs, "sims_built": built, "env_steps": steps, "wall_s": round(wall, 1),
            "env_steps_per_s": round(steps / wall, 1), "rss_mb": rss}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="MT50", help="a Meta-World benchmark name or comma-separated tasks")
    ap.add_argument("--num-envs", type=int, default=2)
    ap.add_argument("--cache", type=int, nargs="+", default=[0, 13], help="simulators kept per env (0: every task's)")
    ap.add_argument("--no-affinity", action="store_true", help="also run each cache > 0 without affinity (ablation)")
    ap.add_argument("--batches", type=int, default=100, help="measured batches of num_envs episodes")
    ap.add_argument("--warmup", type=int, default=20, help="batches before measuring (fills the caches)")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="docs/bench/env_cache.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration, print its row
    a = ap.parse_args(argv)
    for name in ("num_envs", "batches", "max_steps"):
        if getattr(a, name) < 1:
            ap.exit(2, f"env_cache.py: error: --{name.replace('_', '-')} must be >= 1; got {getattr(a, name)}\n")
    if a.warmup < 0 or min(a.cache) < 0:
        ap.exit(2, "env_cache.py: error: --warmup and --cache must be >= 0\n")
    from vlaforge.envs import EnvError
    from vlaforge.envs.metaworld import resolve_tasks

    try:
        resolve_tasks(a.tasks)
    except EnvError as e:
        ap.exit(2, f"env_cache.py: error: {e}\n")
    if a.one:
        cache, affinity = json.loads(a.one)
        print(json.dumps(run(a.tasks, a.num_envs, cache, affinity, a.batches, a.warmup, a.max_steps, a.seed)))
        return {}
    import subprocess

    command = "python benchmarks/env_cache.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    configs = [(c, True) for c in a.cache] + ([(c, False) for c in a.cache if c] if a.no_affinity else [])
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.exists() else {"rows": []}
    base = [sys.executable, __file__, "--tasks", a.tasks, "--num-envs", str(a.num_envs), "--batches", str(a.batches),
            "--warmup", str(a.warmup), "--max-steps", str(a.max_steps), "--seed", str(a.seed)]
    for cache, affinity in configs:  # each in a fresh process: RSS is the configuration's own
        res = subprocess.run(base + ["--one", json.dumps([cache, affinity])], capture_output=True, text=True)
        if res.returncode:
            sys.exit(f"env_cache.py: the run with cache {cache} failed:\n{res.stderr[-2000:]}")
        row = {**json.loads(res.stdout.strip().splitlines()[-1]), "command": command}
        key = (row["tasks"], row["num_envs"], row["cache"], row["affinity"])
        data["rows"] = [r for r in data["rows"]
                        if (r["tasks"], r["num_envs"], r["cache"], r["affinity"]) != key] + [row]
        data["meta"] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                        "note": "one process, one thread; random 4-step chunks; rss_mb: VmRSS at the end"}
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(data, indent=1))
        print(json.dumps(row), flush=True)
    return data


if __name__ == "__main__":
    main()
