"""Peer check: vlaforge's PPO and SAC against Stable-Baselines3's on state-based Meta-World, same budget.

Both implementations train from scratch on the *same* environment: vlaforge's Meta-World adapter with
``privileged 1`` (hand xyz, gripper, object and goal xyz: 13 dims), ``render 0``, ``max_steps`` 150 and the
same reward (sparse +1 on success plus potential-based shaping of weight ``--ppo-shaping`` /
``--sac-shaping`` on Meta-World's own dense reward, envs/metaworld.py). SB3 sees it through a small
gymnasium wrapper (``SingleTaskEnv``) that resets each episode with a fresh training seed (< 1e6), as
vlaforge's task sampler does. Per (task, algo, seed) vlaforge runs first; SB3 then gets exactly the env
steps vlaforge used (``total_timesteps``). Both are evaluated by vlaforge's ``evaluate_policy`` on the same
50 held-out seeds (from 10,000,000; deterministic actions), so success counts are directly comparable.
``steps_per_s`` = training env steps / training wall time (updates included, evaluation excluded), one
torch thread each. Rows go to ``--out`` (merged with rows already there, keyed by task/impl/algo/seed):
``{"task", "impl", "algo", "seed", "env_steps", "success", "steps_per_s"}``.

Settings (printed in docs/benchmarks.md):
- vlaforge PPO: tiny policy ``--backbone state``, chunk 4, 16 envs, ``--groups 32``, lr 3e-4 (the run in
  /work/shared/MACHINE-NOTES.md), ``--iterations`` = ``--ppo-iterations``, ``--ppo.epochs`` 10 and
  ``--ppo.minibatch-size`` 64 (SB3's epochs and minibatch; vlaforge's VLA defaults are 2 and 256, which
  take ~20× fewer gradient steps per sample). ``--ppo-log-std`` sets the Gaussian head's initial log-std, as
  ``vlaforge train --log-std-init`` does (default: the tiny VLA's −1, std 0.37, chosen for RL from an SFT start;
  SB3 starts at 0, std 1);
  ``--ppo-critic privileged`` gives the value function its own MLP on the state instead of the actor's
  features; ``--ppo-chunk`` sets the actions per decision.
- SB3 PPO: ``MlpPolicy`` 256×256, 8 envs (DummyVecEnv), n_steps 256, batch 64, 10 epochs, lr 3e-4 (SB3
  defaults otherwise).
- vlaforge SAC: tiny policy ``--backbone state``, chunk 1 (one action per decision, as SB3), 4 envs, UTD
  ``--sac-utd`` per decision, 2 LayerNorm critics, batch 256, lr 3e-4, init alpha 0.01.
- SB3 SAC: ``MlpPolicy`` 256×256, 1 env, train_freq 1, gradient_steps 1, batch 256, lr 3e-4, buffer 100k,
  learning_starts 1000, ent_coef auto (SB3 defaults otherwise).

    pip install -e '.[bench]'   # stable-baselines3
    OMP_NUM_THREADS=1 python benchmarks/peer_sb3.py --tasks reach-v3 --seeds 0 1 2 --algos ppo sac
    # the defaults are the settings behind docs/bench/peer_sb3.json (docs/benchmarks.md, "Peer check")
    OMP_NUM_THREADS=1 python benchmarks/peer_sb3.py --algos ppo --tasks reach-v3 drawer-close-v3 window-close-v3 \
        --ppo-log-std 0 --ppo-chunk 1 --out docs/bench/peer_sb3_chunk1.json
    # SB3's initial std and one action per decision: the settings behind peer_sb3_chunk1.json ("The gap closed")
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
EVAL_EPISODES = 50
MAX_STEPS = 150


def env_kwargs(shaping: float) -> dict:
    return {"privileged": 1.0, "render": 0.0, "shaping": float(shaping)}


# -- SB3 side ----------------------------------------------------------------------------------------

def make_gym_env(task: str, shaping: float, seed: int):
    """vlaforge's Meta-World env (one task) as a gymnasium Env for SB3."""
    import gymnasium as gym

    from vlaforge.envs.metaworld import MetaWorldEnv

    class SingleTaskEnv(gym.Env):
        """Observation = the privileged state (13,), action = one 4-D step; an episode ends on success
        (terminated) or after MAX_STEPS steps (truncated). Each reset draws a fresh training seed."""

        def __init__(self):
            self.env = MetaWorldEnv(tasks=task, max_steps=MAX_STEPS, **{k: v for k, v in env_kwargs(shaping).items()})
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (self.env.spec.state_dim,), np.float32)
            self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
            self.rng = np.random.default_rng(seed)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            _, state = self.env.reset(0, int(self.rng.integers(0, 1_000_000)))
            return state.astype(np.float32), {}

        def step(self, action):
            r = self.env.step_chunk(np.asarray(action, np.float32)[None])
            return r.state.astype(np.float32), float(r.reward), bool(r.success), bool(r.done and not r.success), \
                {"is_success": bool(r.success)}

        def close(self):
            self.env.close()

    return SingleTaskEnv


def sb3_policy(model):
    """An SB3 model behind vlaforge's ``Policy`` contract so ``evaluate_policy`` scores it on the same seeds."""
    from vlaforge.policies.base import Policy

    class SB3Policy(Policy):
        chunk_size, action_dim = 1, 4

        def act(self, obs, deterministic: bool = False, temperature: float = 1.0):
            return _sb3_act(model, obs, deterministic)

    return SB3Policy()


def _sb3_act(model, obs, deterministic: bool):
    from vlaforge.types import ActionOutput

    a, _ = model.predict(np.asarray(obs.state, np.float32), deterministic=deterministic)
    a = torch.as_tensor(a, dtype=torch.float32).view(len(obs), 1, 4)
    return ActionOutput(a, torch.zeros_like(a), None, {})


def run_sb3(task: str, algo: str, seed: int, env_steps: int, shaping: float) -> tuple[object, float]:
    from stable_baselines3 import PPO, SAC
    from stable_baselines3.common.vec_env import DummyVecEnv

    torch.manual_seed(seed)
    if algo == "ppo":
        venv = DummyVecEnv([make_gym_env(task, shaping, seed * 100 + i) for i in range(8)])
        model = PPO("MlpPolicy", venv, n_steps=256, batch_size=64, n_epochs=10, learning_rate=3e-4, seed=seed,
                    policy_kwargs={"net_arch": [256, 256]}, device="cpu", verbose=0)
    else:
        venv = DummyVecEnv([make_gym_env(task, shaping, seed * 100)])
        model = SAC("MlpPolicy", venv, learning_rate=3e-4, buffer_size=100_000, batch_size=256, learning_starts=1000,
                    train_freq=1, gradient_steps=1, seed=seed, policy_kwargs={"net_arch": [256, 256]}, device="cpu",
                    verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=env_steps)
    wall = time.perf_counter() - t0
    venv.close()
    return sb3_policy(model), wall


# -- vlaforge side -----------------------------------------------------------------------------------

def run_vlaforge(task: str, algo: str, seed: int, args, out: Path) -> tuple[object, int, float]:
    from vlaforge.policies import load_policy
    from vlaforge.train.loop import TrainConfig, train

    shaping = args.ppo_shaping if algo == "ppo" else args.sac_shaping
    common = dict(algo=algo, suite="metaworld", tasks=task, backbone="state", env_kwargs=env_kwargs(shaping),
                  max_steps=MAX_STEPS, eval_every=0, progress=False, tensorboard=False, out=str(out), threads=1,
                  seed=seed, lr=3e-4, checkpoint_every=10_000)
    if algo == "ppo":  # --ppo-log-std: a fresh tiny policy whose Gaussian starts at that log-std (train's flag)
        cfg = TrainConfig(**common, groups=32, num_envs=16, iterations=args.ppo_iterations,
                          chunk_size=args.ppo_chunk, critic=args.ppo_critic, log_std_init=args.ppo_log_std)
        cfg.ppo.epochs, cfg.ppo.minibatch_size = args.ppo_epochs, args.ppo_minibatch
    else:
        cfg = TrainConfig(**common, groups=4, num_envs=4, iterations=args.sac_iterations, chunk_size=1)
        cfg.sac.utd = args.sac_utd
    t0 = time.perf_counter()
    train(cfg)
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    env_steps = int(rows[-1]["rollout/env_steps"])
    return load_policy(out / "final"), env_steps, wall


def evaluate(policy, task: str, shaping: float) -> int:
    from vlaforge.envs import make_vec_env
    from vlaforge.rollout.evaluate import evaluate_policy

    venv = make_vec_env("metaworld", 10, tasks=task, max_steps=MAX_STEPS, **env_kwargs(shaping))
    try:
        res, _ = evaluate_policy(policy, venv, [task], EVAL_EPISODES)
    finally:
        venv.close()
    return res[0].successes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["reach-v3"])
    p.add_argument("--algos", nargs="+", default=["ppo", "sac"], choices=["ppo", "sac"])
    p.add_argument("--impls", nargs="+", default=["vlaforge", "sb3"], choices=["vlaforge", "sb3"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--ppo-iterations", type=int, default=30, help="vlaforge PPO iterations (sets the env steps)")
    p.add_argument("--ppo-epochs", type=int, default=10, help="vlaforge PPO epochs (SB3's default 10; vlaforge's 2)")
    p.add_argument("--ppo-minibatch", type=int, default=64, help="vlaforge PPO minibatch in decisions (SB3: 64 steps)")
    p.add_argument("--ppo-chunk", type=int, default=4, help="vlaforge PPO actions per decision (SB3: 1)")
    p.add_argument("--ppo-critic", default="image", choices=["image", "privileged"],
                   help="vlaforge PPO value head: on the actor's features (image) or its own MLP on the state")
    p.add_argument("--ppo-log-std", type=float, default=None,
                   help="initial log-std of vlaforge's Gaussian head (default: the tiny VLA's -1; SB3 starts at 0)")
    p.add_argument("--sac-iterations", type=int, default=25, help="vlaforge SAC iterations (4 episodes each)")
    p.add_argument("--sac-utd", type=float, default=0.25)
    p.add_argument("--ppo-shaping", type=float, default=1.0)
    p.add_argument("--sac-shaping", type=float, default=10.0)
    p.add_argument("--out", default=str(ROOT / "docs" / "bench" / "peer_sb3.json"))
    p.add_argument("--workdir", default="runs/peer_sb3")
    args = p.parse_args(argv)
    from vlaforge.errors import UsageError
    from vlaforge.policies.options import PolicyShape

    try:  # the checks `vlaforge train` runs on --chunk-size and --log-std-init, before any work
        PolicyShape(chunk_size=args.ppo_chunk, log_std_init=args.ppo_log_std).check()
    except UsageError as e:
        p.error(str(e).replace("--chunk-size", "--ppo-chunk").replace("--log-std-init", "--ppo-log-std"))
    torch.set_num_threads(1)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []

    def put(row: dict) -> None:
        key = tuple(row[k] for k in ("task", "impl", "algo", "seed"))
        rows[:] = [r for r in rows if tuple(r[k] for k in ("task", "impl", "algo", "seed")) != key] + [row]
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        tmp.replace(out)
        print(json.dumps(row), flush=True)

    for task in args.tasks:
        for algo in args.algos:
            shaping = args.ppo_shaping if algo == "ppo" else args.sac_shaping
            for seed in args.seeds:
                steps = None
                if "vlaforge" in args.impls:
                    pol, steps, wall = run_vlaforge(task, algo, seed, args, Path(args.workdir) / f"{task}_{algo}_{seed}")
                    put({"task": task, "impl": "vlaforge", "algo": algo, "seed": seed, "env_steps": steps,
                         "success": evaluate(pol, task, shaping) / EVAL_EPISODES, "steps_per_s": round(steps / wall, 1)})
                if "sb3" in args.impls:
                    if steps is None:  # match an earlier vlaforge row's budget
                        prev = [r for r in rows if (r["task"], r["impl"], r["algo"], r["seed"]) == (task, "vlaforge", algo, seed)]
                        if not prev:
                            sys.exit(f"no vlaforge row for {task}/{algo}/seed {seed} in {out}: run --impls vlaforge first")
                        steps = prev[0]["env_steps"]
                    pol, wall = run_sb3(task, algo, seed, steps, shaping)
                    put({"task": task, "impl": "sb3", "algo": algo, "seed": seed, "env_steps": steps,
                         "success": evaluate(pol, task, shaping) / EVAL_EPISODES, "steps_per_s": round(steps / wall, 1)})


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
