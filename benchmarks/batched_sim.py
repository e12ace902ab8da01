"""Env steps per second of a batched simulator (envs/batched.py) against the per-scene vector env, with and
without a policy acting: the raw simulator (random action chunks) and ``collect()`` with a tiny VLA.

    OMP_NUM_THREADS=1 python benchmarks/batched_sim.py --suite pointreach --envs 16,64,256 \\
        --backends numpy,torch --out docs/bench/batched_sim.json
    python benchmarks/batched_sim.py --suite maniskill --tasks pick-cube --envs 256 --backends cpu,gpu \\
        --device cuda --out docs/bench/batched_sim_gpu.json      # on a GPU machine

Rows: ``{"suite", "backend", "device", "envs", "raw_steps_per_s", "raw_cpu_ms_per_step", "policy_steps_per_s",
"policy_cpu_ms_per_step"}`` (``backend``: the suite's ``sim_backend`` env option; CPU ms are this process's CPU
time per env step, which a busy machine inflates less than wall time).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.envs import make_vec_env
from vlaforge.fsutil import atomic_write_text
from vlaforge.policies import build_policy
from vlaforge.rollout.collect import collect


def measure(fn, seconds: float) -> tuple[float, float, int]:
    """Run ``fn() -> env steps`` until ``seconds`` of wall time; (steps/s, CPU ms per step, steps)."""
    fn()  # warm-up (first render, allocations)
    steps, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        steps += fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return steps / wall, 1000 * cpu / max(steps, 1), steps


def bench_one(a, backend: str, n: int) -> dict:
    kw = {"sim_backend": backend}
    if a.suite == "pointreach" and backend == "torch":
        kw["sim_device"] = a.device
    venv = make_vec_env(a.suite, n, tasks=a.tasks, image_size=a.image_size, **kw)
    spec, rng = venv.spec, np.random.default_rng(0)
    tids = np.arange(n) % len(spec.tasks)
    episode = [0]

    def raw() -> int:
        venv.reset(tids, np.arange(n) + 1000 * episode[0])
        episode[0] += 1
        steps = 0
        for _ in range(-(-spec.max_steps // a.chunk)):
            act = rng.uniform(-1, 1, (n, a.chunk, spec.action_dim)).astype(np.float32)
            steps += int(venv.step(act).steps.sum())
        return steps

    torch.manual_seed(0)
    pol = build_policy("tiny", state_dim=spec.state_dim, action_dim=spec.action_dim, views=spec.image_shape[0],
                       image_size=a.image_size, chunk_size=a.chunk).to(a.device)

    def with_policy() -> int:
        r, _ = collect(pol, venv, tids, np.arange(n) + 1000 * episode[0])
        episode[0] += 1
        return int(r.env_steps.sum())

    raw_sps, raw_ms, _ = measure(raw, a.seconds)
    pol_sps, pol_ms, _ = measure(with_policy, a.seconds)
    venv.close()
    return {"suite": a.suite, "backend": backend, "device": str(venv.device or "host"), "envs": n,
            "raw_steps_per_s": round(raw_sps, 1), "raw_cpu_ms_per_step": round(raw_ms, 4),
            "policy_steps_per_s": round(pol_sps, 1), "policy_cpu_ms_per_step": round(pol_ms, 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="pointreach")
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--envs", default="16,64,256")
    ap.add_argument("--backends", default="numpy,torch", help="values of the suite's sim_backend option")
    ap.add_argument("--device", default="cpu", help="the policy's device and a batched simulator's (sim_device)")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="docs/bench/batched_sim.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for backend in a.backends.split(","):
        for n in [int(x) for x in a.envs.split(",")]:
            rows.append(bench_one(a, backend, n))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"command": "python benchmarks/batched_sim.py " + " ".join(argv or __import__("sys").argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "cpus": __import__("os").cpu_count(),
            "torch_threads": a.threads, "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "chunk": a.chunk, "image_size": a.image_size, "seconds": a.seconds}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
