"""Rollout throughput: env steps/s of the raw simulator with random actions under the same
render schedule (one render per action chunk) versus with the tiny VLA choosing the actions.

    python benchmarks/rollout_throughput.py --out docs/bench/rollout_throughput.json
    python benchmarks/rollout_throughput.py --suites libero,maniskill --out docs/bench/rollout_throughput_libero_maniskill.json
    python benchmarks/rollout_throughput.py --suites metaworld --env-kwargs privileged=1,render=0 --backbone state \
        --out docs/bench/rollout_throughput_metaworld_norender.json

Also reports the time to build the vector env, its first reset (which may build simulators or
compile shaders) and the median of three later resets to new initial states (all envs at once).
LIBERO and ManiSkill use fewer envs than ``--num-envs`` (``SUITES``): a LIBERO simulator takes
~10-15 s and ~0.5 GB to build.

Writes JSON (``--out``) from which docs/benchmarks.md's table is made; prints the table too.
The ratio policy/raw is the share of simulator speed kept with the policy in the loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from vlaforge.envs import make_vec_env
from vlaforge.policies import build_policy

SUITES = {
    "pointreach": {"tasks": None},
    "metaworld": {"tasks": "reach-v3,button-press-topdown-v3"},
    "kitchen": {"tasks": None},
    # LIBERO: one simulator per env (~10-15 s to build each), two cameras; ManiSkill: CPU PhysX + lavapipe
    "libero": {"tasks": "object-0", "num_envs": 2},
    "maniskill": {"tasks": "pick-cube,stack-cube", "num_envs": 4},
}


def run(suite: str, tasks, num_envs: int, workers: int, chunk: int, seconds: float, head: str,
        backbone: str = "vision", env_kw: dict | None = None) -> dict:
    t0 = time.perf_counter()
    venv = make_vec_env(suite, num_envs, tasks=tasks, workers=workers, **(env_kw or {}))
    spec = venv.spec
    create_s = time.perf_counter() - t0
    ids = np.arange(num_envs) % len(spec.tasks)
    t0 = time.perf_counter()
    venv.reset(ids, np.arange(num_envs))  # the first reset may build simulators / compile shaders
    first_reset_s = time.perf_counter() - t0
    reset_s = []
    for k in range(3):  # later resets: new seeds (initial states), same tasks
        t0 = time.perf_counter()
        venv.reset(ids, np.arange(num_envs) + 100 * (k + 1))
        reset_s.append(time.perf_counter() - t0)
    policy = build_policy(head=head, backbone=backbone, state_dim=spec.state_dim, action_dim=spec.action_dim, chunk_size=chunk,
                          views=spec.image_shape[0], image_size=spec.image_shape[1])
    rng = np.random.default_rng(0)
    out = {}
    for mode in ("raw", "policy"):
        steps, sim_t, pol_t = 0, 0.0, 0.0
        ep = 0
        t_start = time.perf_counter()
        obs = venv.reset(np.arange(num_envs) % len(spec.tasks), np.arange(num_envs) + 1000 * ep)
        while time.perf_counter() - t_start < seconds:
            t0 = time.perf_counter()
            if mode == "raw":
                a = rng.uniform(-1, 1, (num_envs, chunk, spec.action_dim)).astype(np.float32)
            else:
                a = policy.act(obs).actions.numpy()
            t1 = time.perf_counter()
            st = venv.step(a)
            t2 = time.perf_counter()
            steps += int(st.steps.sum())
            pol_t += t1 - t0
            sim_t += t2 - t1
            obs = st.obs
            if st.done.all():
                ep += 1
                obs = venv.reset(np.arange(num_envs) % len(spec.tasks), np.arange(num_envs) + 1000 * ep)
        wall = time.perf_counter() - t_start
        out[mode] = {"env_steps": steps, "wall_s": wall, "steps_per_s": steps / wall,
                     "policy_ms_per_env_step": 1000 * pol_t / max(steps, 1),
                     "sim_ms_per_env_step": 1000 * sim_t / max(steps, 1)}
    venv.close()
    return {"suite": suite, "num_envs": num_envs, "workers": workers, "chunk": chunk, "head": head,
            "backbone": backbone, "env_kwargs": env_kw or {},
            "image": list(spec.image_shape), "renderer": spec.renderer, "create_s": create_s,
            "first_reset_s": first_reset_s, "reset_s": float(np.median(reset_s)), **out,
            "ratio": out["policy"]["steps_per_s"] / out["raw"]["steps_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default="pointreach,metaworld")
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="env subprocesses for simulator suites (pointreach: 0)")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--head", default="gaussian")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the policy")
    ap.add_argument("--backbone", default="vision", help="tiny policy backbone (state: ignores the images)")
    ap.add_argument("--env-kwargs", default="", help="name=value pairs for the suites' envs, e.g. privileged=1,render=0")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    env_kw = {k: float(v) for k, v in (p.split("=") for p in a.env_kwargs.split(",") if p)}
    rows = []
    for s in a.suites.split(","):
        workers = 0 if s == "pointreach" else a.workers
        r = run(s, SUITES[s]["tasks"], SUITES[s].get("num_envs", a.num_envs), workers, a.chunk, a.seconds, a.head,
                a.backbone, env_kw)
        rows.append(r)
        print(f"{s:<11} raw {r['raw']['steps_per_s']:8.0f} steps/s | with policy {r['policy']['steps_per_s']:8.0f} "
              f"steps/s | ratio {r['ratio']:.2f} | policy {r['policy']['policy_ms_per_env_step']:.3f} ms/step, "
              f"sim {r['policy']['sim_ms_per_env_step']:.3f} ms/step | create {r['create_s']:.1f} s, first reset "
              f"{r['first_reset_s']:.1f} s, reset {r['reset_s']:.2f} s ({r['num_envs']} envs)", flush=True)
    result = {"benchmark": "rollout_throughput", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {__import__('os').cpu_count()} cores",
              "args": vars(a), "rows": rows}
    if a.out:
        from vlaforge.fsutil import atomic_write_text

        atomic_write_text(a.out, json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
