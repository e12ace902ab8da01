"""SmolVLA on one GPU with random weights at the real size: rollout actions/s and one PPO update.

The policy is built directly on the GPU from SmolVLA's architecture (SmolVLM2-500M cut to its first 16
text layers, SigLIP at 512 px with 64 tokens per image, an expert 0.75x as wide, chunk 50, 10 denoising
steps, max state/action dims 32; ``vlaforge.policies.smolvla.configs(real_size=True)``), in LIBERO's
shape: two 256 px cameras (agent view + wrist), 8-D state, 7-D actions, all 50 actions of a chunk
executed (LeRobot's ``n_action_steps``). Nothing is downloaded; observations are synthetic (random
images, LIBERO-style instructions), since only the policy's cost is measured.

* rollout: ``policy.act`` on a batch of ``--envs`` observations with the RL sampler (SDE chain with
  log-probs, value head), bf16 autocast with the frozen VLM stored in bf16; decisions/s and
  actions/s (= decisions x 50).
* update: one PPO update (1 epoch, one minibatch of ``--steps`` x ``--envs`` decisions, micro-batches
  of ``--micro-batch``) with LeRobot's fine-tuning split (VLM frozen, expert + projections + value head
  train), gradient checkpointing; seconds and peak GPU memory. The algorithms' batch lives on the CPU
  (vlaforge's learner code is CPU-first); the re-scored log-probs and values are moved there, and their
  gradients flow back to the GPU.

Writes ``docs/bench/gpu_smolvla.json``.

    python benchmarks/gpu_smolvla.py               # on a GPU (part of benchmarks/gpu_check.sh)
    python benchmarks/gpu_smolvla.py --dry-run     # a tiny size on CPU: checks the script runs (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

INSTRUCTIONS = ["put the black bowl on the plate", "open the top drawer of the cabinet",
                "pick up the alphabet soup and place it in the basket", "turn on the stove"]


def build(real: bool, device: str):
    from vlaforge.policies.smolvla import SmolVLA, SmolVLAConfig, configs

    if real:
        lr, vlm, tok = configs(state_dim=8, action_dim=7, views=2, image_size=256, chunk_size=50, num_steps=10,
                               real_size=True)
        cfg = SmolVLAConfig(lerobot=lr, vlm=vlm.to_dict(), autocast=True, weights_dtype="bfloat16",
                            gradient_checkpointing=True, micro_batch=0)
    else:
        lr, vlm, tok = configs(state_dim=8, action_dim=7, views=2, image_size=32, chunk_size=6, num_steps=3)
        cfg = SmolVLAConfig(lerobot=lr, vlm=vlm.to_dict(), gradient_checkpointing=True)
    with torch.device(device):
        policy = SmolVLA(cfg, tok)
    return policy.to(device)


def observations(n: int, size: int, seed: int):
    from vlaforge.types import Observation

    g = torch.Generator().manual_seed(seed)
    return Observation(torch.randint(0, 256, (n, 2, size, size, 3), dtype=torch.uint8, generator=g),
                       torch.randn(n, 8, generator=g), [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)],
                       torch.zeros(n, dtype=torch.long))


def rollout_of(outs, obs_list):
    """A time-major Rollout of T decisions x N envs from act outputs (the last decision times out)."""
    from vlaforge.types import Rollout

    T, n = len(outs), len(obs_list[0])
    C = outs[0].actions.shape[1]
    stack = lambda xs: torch.stack([x.detach().cpu() for x in xs])  # noqa: E731
    alive = torch.ones(T, n, dtype=torch.bool)
    trunc = torch.zeros(T, n, dtype=torch.bool)
    trunc[-1] = True
    return Rollout(obs_images=stack([o.images for o in obs_list]), obs_state=stack([o.state for o in obs_list]),
                   instructions=list(obs_list[0].instructions),
                   taken={"chain": stack([o.taken["chain"] for o in outs])}, actions=stack([o.actions for o in outs]),
                   executed=torch.full((T, n), C), log_prob=stack([o.log_prob for o in outs]),
                   value=stack([o.value for o in outs]), next_value=torch.zeros(n),
                   reward=(torch.arange(n) % 2).float().expand(T, n).clone() * trunc, alive=alive,
                   terminated=torch.zeros(T, n, dtype=torch.bool), truncated=trunc,
                   success=torch.arange(n) % 2 == 0, valid=torch.ones(n, dtype=torch.bool),
                   task_id=torch.zeros(n, dtype=torch.long), seed=torch.arange(n), group_id=torch.zeros(n, dtype=torch.long),
                   env_steps=torch.full((n,), T * C))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny size on CPU (checks the script, measures nothing)")
    ap.add_argument("--envs", type=int, default=32, help="observations per act call (a batch of envs)")
    ap.add_argument("--steps", type=int, default=2, help="decisions per env in the PPO batch")
    ap.add_argument("--micro-batch", type=int, default=16, help="decisions per backward pass in the update")
    ap.add_argument("--repeats", type=int, default=3, help="timed act calls (after one warm-up)")
    ap.add_argument("--out", default="docs/bench/gpu_smolvla.json")
    a = ap.parse_args(argv)
    from vlaforge.algos import get_algo

    real = not a.dry_run
    device = "cuda" if real else "cpu"
    if real and not torch.cuda.is_available():
        print("gpu_smolvla: no CUDA device; run with --dry-run on a CPU")
        return 2
    if not real:
        a.envs, a.steps, a.micro_batch, a.repeats = 4, 2, 2, 1
    sync = torch.cuda.synchronize if real else (lambda: None)
    torch.manual_seed(0)
    res: dict = {"machine": platform.node(), "device": torch.cuda.get_device_name() if real else "cpu (dry run)",
                 "torch": torch.__version__, "args": vars(a), "date": time.strftime("%Y-%m-%d")}
    t0 = time.perf_counter()
    policy = build(real, device)
    sync()
    res["build_s"] = time.perf_counter() - t0
    res["params_total"] = sum(p.numel() for p in policy.parameters())
    res["params_trainable"] = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    res["chunk_executed"], res["denoising_steps"] = policy.chunk_size, policy.cfg.num_steps
    if real:
        res["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    size = policy.cfg.image_size
    obs_list = [observations(a.envs, size, s) for s in range(a.steps)]
    policy.eval()
    policy.act(obs_list[0])  # warm-up (kernels, allocator)
    sync()
    t0 = time.perf_counter()
    for i in range(a.repeats):
        policy.act(obs_list[i % a.steps])
    sync()
    dt = (time.perf_counter() - t0) / a.repeats
    res["rollout"] = {"envs": a.envs, "seconds_per_act": dt, "decisions_per_s": a.envs / dt,
                      "actions_per_s": a.envs * policy.chunk_size / dt}
    outs = [policy.act(o) for o in obs_list]
    r = rollout_of(outs, obs_list)
    algo = get_algo("ppo")
    cfg = algo.config(critic_warmup=0, minibatch_size=a.envs * a.steps, epochs=1)
    batch, _ = algo.prepare(r, cfg)
    policy.micro_batch = a.micro_batch
    scored = policy.evaluate  # the algorithms' batch lives on the CPU: bring the re-scored outputs there
    policy.evaluate = lambda o, tk: tuple(None if x is None else x.cpu() for x in scored(o, tk))
    opt = policy.optimizer_class()([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    if real:
        res["before_update_gib"] = torch.cuda.memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    policy.train()
    t0 = time.perf_counter()
    m = algo.update(policy, opt, batch, cfg, iteration=0, gen=torch.Generator().manual_seed(0))
    sync()
    res["update"] = {"decisions": a.envs * a.steps, "micro_batch": a.micro_batch, "seconds": time.perf_counter() - t0,
                     "optimizer_steps": float(m.get("train/optimizer_steps", 0))}
    if real:
        res["update"]["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["update"]["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    res["update_metrics"] = {k: float(v) for k, v in m.items() if isinstance(v, (int, float, torch.Tensor))}
    print(json.dumps({k: v for k, v in res.items() if k != "update_metrics"}, indent=1))
    if not res["update"]["optimizer_steps"]:
        print("gpu_smolvla: the update took no optimizer step")
        return 1
    if real:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
