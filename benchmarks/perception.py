"""Perception that localises (issue 15, part 1): does the SFT policy put its hand where the target is?

For each variant of the SFT recipe and each Meta-World task: record ≤ 10 scripted-expert demos (with
the privileged ``sim_state``), fine-tune a fresh tiny VLA, then roll it out deterministically on 50
evaluation seeds (disjoint from the demo seeds) and report

* success (solved at any step; episodes end at first success),
* the localisation error: the closest the end effector came to the task's target point during the
  episode (cm; the target is the goal for reach/push-like tasks and the object point — button,
  handle — for the others), median and mean over episodes, and over the failed episodes alone,
* with a perception readout, the readout's own error on the first frame of each evaluation episode (cm),
* the simulator+render and policy cost per env step (ms) of the evaluation rollouts (these move with the
  machine's load; ``--render-cost-only`` times the camera settings back to back in one process instead).

Variants (``--variants``, comma-separated): ``base`` (today's recipe), ``aux`` (the readout's auxiliary
loss), ``shift`` (random ±4 px shifts), ``aux+shift``, ``wrist`` / ``wrist+aux`` (a second, hand-mounted
camera), ``size96`` / ``size96+aux`` (96 px images).

    python benchmarks/perception.py --tasks reach-v3,button-press-topdown-v3 --demo-episodes 10 \
        --sft-steps 800 --variants base,aux,shift,aux+shift --out docs/bench/perception.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vlaforge.algos.sft import SFTConfig
from vlaforge.envs import make_vec_env
from vlaforge.fsutil import atomic_write_text
from vlaforge.pipeline import CollectArgs, SFTArgs, run_collect, run_sft
from vlaforge.rollout.collect import collect
from vlaforge.rollout.evaluate import EVAL_SEED_BASE, eval_seeds, wilson

# the sim_state point the end effector must reach, per task (default: the goal)
TARGET_POINT = {"button-press-topdown-v3": "obj", "button-press-v3": "obj", "drawer-close-v3": "obj",
                "drawer-open-v3": "obj", "door-open-v3": "obj", "door-close-v3": "obj", "handle-press-v3": "obj",
                "coffee-button-v3": "obj", "plate-slide-v3": "obj", "window-open-v3": "obj", "window-close-v3": "obj"}


def variant_settings(v: str) -> dict:
    parts = set(v.split("+"))
    known = {"base", "aux", "shift", "wrist", "size96"}
    if not parts <= known:
        raise SystemExit(f"unknown variant '{v}'; build one from {sorted(known)} joined by +")
    return {"aux": "aux" in parts, "shift": 4 if "shift" in parts else 0, "wrist": "wrist" in parts,
            "image_size": 96 if "size96" in parts else 64}


def localisation(policy, task: str, episodes: int, env_kw: dict, image_size: int, max_steps: int) -> dict:
    venv = make_vec_env("metaworld", 10, tasks=task, image_size=image_size, workers=0, max_steps=max_steps, **env_kw)
    try:
        names = venv.spec.sim_state_names
        ee = [names.index(f"ee_{a}") for a in "xyz"]
        tgt = [names.index(f"{TARGET_POINT.get(task, 'goal')}_{a}") for a in "xyz"]
        seeds = eval_seeds(episodes, EVAL_SEED_BASE)
        r, st = collect(policy, venv, np.zeros(episodes, np.int64), seeds, deterministic=True, keep_obs=True)
    finally:
        venv.close()
    sim = r.sim_state  # (T, N, P) at each decision
    d = torch.linalg.norm(sim[..., ee] - sim[..., tgt], dim=-1)  # (T, N)
    d = torch.where(r.alive, d, torch.full_like(d, float("inf"))).min(0).values * 100  # closest approach, cm
    ok = r.success & r.valid
    out = {"successes": int(ok.sum()), "episodes": int(r.valid.sum()),
           "ci95": list(wilson(int(ok.sum()), int(r.valid.sum()))),
           "closest_cm_median": float(d[r.valid].median()), "closest_cm_mean": float(d[r.valid].mean()),
           "closest_cm_failed_median": float(d[r.valid & ~ok].median()) if bool((r.valid & ~ok).any()) else None,
           "sim_ms_per_step": 1000 * st.sim_time / max(st.env_steps, 1),
           "policy_ms_per_step": 1000 * st.policy_time / max(st.env_steps, 1)}
    if getattr(policy, "aux_head", None) is not None:
        from vlaforge.types import Observation

        first = Observation(r.obs_images[0], r.obs_state[0], list(r.instructions), r.task_id, r.sim_state[0])
        with torch.no_grad():
            pred = policy.aux_predict(first)
        truth = r.sim_state[0][:, policy.cfg.aux_index]
        per_point = (pred - truth).view(len(truth), -1, 3) if truth.shape[1] % 3 == 0 else (pred - truth)[..., None]
        out["readout_cm_mean"] = float(torch.linalg.norm(per_point, dim=-1).mean() * 100)
    return out


def render_cost(task: str, chunks: int = 60, repeats: int = 3) -> list[dict]:
    """ms per 4-step chunk (physics + one render of every view) for each camera setting, measured back to back in
    one process (so machine load affects all settings alike); the median of ``repeats`` runs."""
    from vlaforge.envs.metaworld import MetaWorldEnv

    rows = []
    for name, kw in (("corner 64 px", {}), ("corner 96 px", {"image_size": 96}), ("corner + wrist 64 px", {"wrist": True}),
                     ("no camera (render 0)", {"render": False})):
        env = MetaWorldEnv(tasks=task, **kw)
        times = []
        for r in range(repeats):
            env.reset(0, 123 + r)
            t0 = time.perf_counter()
            for _ in range(chunks):
                if env.done:
                    env.reset(0, 1000 + r)
                env.step_chunk(np.zeros((4, 4), np.float32))
            times.append(1000 * (time.perf_counter() - t0) / chunks)
        env.close()
        rows.append({"setting": name, "ms_per_chunk": float(np.median(times)), "runs_ms": times})
        print(json.dumps(rows[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="reach-v3,button-press-topdown-v3")
    ap.add_argument("--variants", default="base,aux,shift,aux+shift")
    ap.add_argument("--demo-episodes", type=int, default=10)
    ap.add_argument("--sft-steps", type=int, default=800)
    ap.add_argument("--aux-weight", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="runs/perception")
    ap.add_argument("--out", default="docs/bench/perception.json")
    ap.add_argument("--render-cost-only", action="store_true", help="only time the camera settings (no SFT)")
    a = ap.parse_args()
    if a.render_cost_only:
        rows = render_cost(a.tasks.split(",")[0])
        meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                "load_avg": os.getloadavg()[0]}
        atomic_write_text(Path(a.out), json.dumps({"meta": meta, "render_cost": rows}, indent=2))
        return
    torch.set_num_threads(a.threads)
    work = Path(a.work)
    rows = []
    for task in a.tasks.split(","):
        for v in a.variants.split(","):
            s = variant_settings(v)
            env_kw = {"wrist": 1.0} if s["wrist"] else {}
            demos = work / task / f"demos_s{a.seed}_{'wrist' if s['wrist'] else 'corner'}_{s['image_size']}"
            if not (demos / "meta" / "info.json").exists():
                run_collect(CollectArgs(suite="metaworld", tasks=task, episodes=a.demo_episodes, out=str(demos),
                                        num_envs=min(a.demo_episodes, 10), image_size=s["image_size"], seed=a.seed,
                                        env_kwargs=env_kw), quiet=True)
            t0, c0 = time.perf_counter(), time.process_time()
            sft_dir = work / task / f"sft_s{a.seed}_{v}"
            policy, _ = run_sft(SFTArgs(demos=str(demos), out=str(sft_dir), aux=s["aux"], threads=a.threads,
                                        sft=SFTConfig(steps=a.sft_steps, seed=a.seed, augment_shift=s["shift"],
                                                      aux_weight=a.aux_weight)), quiet=True)
            sft_s = time.perf_counter() - t0
            res = localisation(policy, task, a.eval_episodes, env_kw, s["image_size"], a.max_steps)
            row = {"task": task, "variant": v, "seed": a.seed, "demo_episodes": a.demo_episodes,
                   "sft_steps": a.sft_steps, "sft_wall_s": sft_s, "cpu_s": time.process_time() - c0, **res}
            rows.append(row)
            print(json.dumps(row))
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "load_avg_end": os.getloadavg()[0], "args": vars(a)}
    atomic_write_text(Path(a.out), json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
