"""Host memory of a multi-task Meta-World vec env: each env keeps one simulator and one offscreen renderer per task it
has run (``envs/metaworld.py``), so a multi-task run holds num_envs × tasks of them.

In a fresh process: RSS before the env exists, after ``make_vec_env``, and after every env has been reset into every
task twice over (the state a multi-task rollout reaches within a few iterations); ``mb_per_env_task`` = the growth
over those resets divided by num_envs × the simulators an env keeps (every task's, or ``--cache`` K of them: Meta-World's
``cache`` env option). ``reset_ms_first`` / ``reset_ms_again``: wall milliseconds per (env, task) reset in the first
pass (each builds its simulator) and the second (each reuses it, or with a cache smaller than the task count
rebuilds it: the price of the memory saved). With a cache, RSS may keep some memory of the simulators it closed (the
allocator need not return it), so ``mb_per_env_task`` is then an upper bound.

    MUJOCO_GL=egl python benchmarks/env_memory.py --num-envs 4 --tasks MT10 --label shadowsize0 \\
        --out docs/bench/env_memory.json
    MUJOCO_GL=egl python benchmarks/env_memory.py --num-envs 4 --tasks MT50 --cache 10 --label 'MT50, cache 10'

JSON: ``{"meta": {...}, "rows": [{"label", "suite", "tasks", "num_envs", "n_tasks", "cache", "rss_mb_start",
"rss_mb_made", "rss_mb_all_tasks", "mb_per_env_task", "reset_ms_first", "reset_ms_again", "command"}]}`` (rows
merged with those in ``--out`` by label, tasks, num_envs and cache; rows written before ``--cache`` existed have
neither it nor the reset times, and reset every task once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
from pathlib import Path

import numpy as np

from vlaforge.fsutil import atomic_write_text


def rss_mb() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="MT10", help="a Meta-World benchmark name or comma-separated tasks")
    ap.add_argument("--num-envs", type=int, default=4)
    ap.add_argument("--cache", type=int, default=0, help="simulators kept per env (0: every task's)")
    ap.add_argument("--label", default="", help="what this row measures (e.g. the code version)")
    ap.add_argument("--out", default="docs/bench/env_memory.json")
    a = ap.parse_args(argv)
    if a.num_envs < 1:
        ap.exit(2, f"env_memory.py: error: --num-envs must be >= 1; got {a.num_envs}\n")
    if a.cache < 0:
        ap.exit(2, f"env_memory.py: error: --cache must be >= 0 (0: every task's simulator); got {a.cache}\n")
    from vlaforge.envs import EnvError, make_vec_env

    start = rss_mb()
    try:
        venv = make_vec_env("metaworld", a.num_envs, tasks=a.tasks, **({"cache": a.cache} if a.cache else {}))
    except EnvError as e:
        ap.exit(2, f"env_memory.py: error: {e}\n")
    try:
        made = rss_mb()
        n = len(venv.spec.tasks)
        ms = []
        for _ in range(2):
            t0 = time.perf_counter()
            for t in range(n):
                venv.reset(np.full(a.num_envs, t, dtype=np.int64), np.arange(a.num_envs) + 10_000_000)
            ms.append(round(1000 * (time.perf_counter() - t0) / (a.num_envs * n), 1))
        full = rss_mb()
    finally:
        venv.close()
    command = "python benchmarks/env_memory.py " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(a).items() if v != "")
    kept = min(a.cache, n) if a.cache else n
    row = {"label": a.label, "suite": "metaworld", "tasks": a.tasks, "num_envs": a.num_envs, "n_tasks": n,
           "cache": a.cache, "rss_mb_start": start, "rss_mb_made": made, "rss_mb_all_tasks": full,
           "mb_per_env_task": round((full - made) / (a.num_envs * kept), 1), "reset_ms_first": ms[0],
           "reset_ms_again": ms[1], "command": command}
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.exists() else {"rows": []}
    key = (row["label"], row["tasks"], row["num_envs"], row["cache"])
    data["rows"] = [r for r in data["rows"] if (r["label"], r["tasks"], r["num_envs"], r.get("cache", 0)) != key] + [row]
    data["meta"] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                    "metric": "VmRSS of the process, MiB; software EGL (llvmpipe): GL buffers are host memory"}
    atomic_write_text(out, json.dumps(data, indent=1))
    print(json.dumps(row))
    return row


if __name__ == "__main__":
    main()
