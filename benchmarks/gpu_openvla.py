"""OpenVLA-7B on one GPU with random weights at the real sizes: rollout speed and one PPO update's peak memory.

Checks docs/benchmarks.md's projection (17.9 GiB for a PPO update with LoRA r=32 on the Llama's linear
layers + gradient checkpointing + bf16 weights/autocast + a shared critic, micro-batches of 8 decision
steps). The model is built directly on the GPU in bf16 from OpenVLA-7B's config (fused DINOv2-L + SigLIP-so400m
at 224 px, Llama-2-7B, vocabulary 32064); nothing is downloaded. Rollouts come from PointReach rendered at
224 px (2-D actions: 2 action tokens per decision; the update's memory is that of the real token count up to
that). vlaforge's learner code is CPU-first: the collected Rollout is moved to the CPU and the re-scored
log-probs and values are brought there (their gradients flow back to the GPU), as gpu_smolvla.py does.
The rollout is timed after one warm-up collection (CUDA kernels, allocator). Besides PyTorch's peak of
allocated memory, the device memory in use after the update (``torch.cuda.mem_get_info``: CUDA context and
allocator cache included) is recorded, since the projection counts 1.5 GiB for those. Writes
``docs/bench/gpu_openvla.json`` (``--out``).

    python benchmarks/gpu_openvla.py                 # on a GPU (part of benchmarks/gpu_check.sh)
    python benchmarks/gpu_openvla.py --dry-run       # tiny sizes on CPU: checks the script runs (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build(real: bool, device: str, lora: int, tmp: Path, text_tokens: int):
    from vlaforge.policies.openvla import OpenVLAConfig, OpenVLAPolicy
    from vlaforge.policies.openvla.prismatic import PrismaticVLM, read_prismatic_config
    from vlaforge.policies.openvla.tiny import make_tokenizer, tiny_config

    raw = tiny_config(action_dim=2, state_dim=2, key="pointreach", real_size=real, image_size=28)
    (tmp / "config.json").write_text(json.dumps(raw))
    pcfg = read_prismatic_config(tmp)
    make_tokenizer(pcfg.vocab_size).save_pretrained(tmp)
    dtype = torch.bfloat16 if real else torch.float32
    torch.set_default_dtype(dtype)
    with torch.device(device):
        vlm = PrismaticVLM(pcfg).to(dtype)
    torch.set_default_dtype(torch.float32)
    cfg = OpenVLAConfig(path=str(tmp), action_dim=2, state_dim=2, image_size=pcfg.image_sizes[0], lora_rank=lora,
                        gradient_checkpointing=True, autocast=real, weights_dtype="bfloat16" if real else "float32",
                        micro_batch=8, max_text_tokens=text_tokens, head_hidden=256)
    return OpenVLAPolicy(cfg, loaded=(vlm, pcfg)).to(device), pcfg


def to_cpu(r):
    """The Rollout with every tensor (and ``taken`` entry) on the CPU, where the algorithms' batch lives."""
    moved = {}
    for f in dataclasses.fields(r):
        v = getattr(r, f.name)
        if isinstance(v, torch.Tensor):
            moved[f.name] = v.cpu()
        elif isinstance(v, dict):
            moved[f.name] = {k: x.cpu() for k, x in v.items()}
    return dataclasses.replace(r, **moved)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (checks the script, measures nothing)")
    ap.add_argument("--envs", type=int, default=8, help="envs per rollout batch (= decision steps per micro-batch)")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--out", default="docs/bench/gpu_openvla.json")
    a = ap.parse_args(argv)
    from vlaforge.algos import get_algo
    from vlaforge.envs import make_vec_env
    from vlaforge.rollout.collect import collect

    real = not a.dry_run
    device = "cuda" if real else "cpu"
    if real and not torch.cuda.is_available():
        print("gpu_openvla: no CUDA device; run with --dry-run on a CPU")
        return 2
    torch.manual_seed(0)
    import peft
    import transformers

    res: dict = {"machine": platform.node(), "device": torch.cuda.get_device_name() if real else "cpu (dry run)",
                 "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                 "args": vars(a), "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        policy, pcfg = build(real, device, a.lora_rank, Path(d), 76)  # char-level tokenizer: PointReach prompts ~72
        if real:
            torch.cuda.synchronize()
        res["build_s"] = time.perf_counter() - t0
        res["params_total"] = sum(p.numel() for p in policy.parameters())
        res["params_trainable"] = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        if real:
            res["weights_gib"] = torch.cuda.memory_allocated() / 2**30
        venv = make_vec_env("pointreach", a.envs, image_size=pcfg.image_sizes[0], max_steps=2)
        policy.eval()
        collect(policy, venv, np.zeros(a.envs, np.int64), np.arange(a.envs) + a.envs)  # warm-up
        if real:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r, stats = collect(policy, venv, np.zeros(a.envs, np.int64), np.arange(a.envs))
        if real:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        venv.close()
        r = to_cpu(r)
        res["rollout"] = {"decisions": int(r.alive.sum()), "seconds": dt, "decisions_per_s": float(r.alive.sum()) / dt,
                          "policy_seconds": stats.policy_time, "sim_seconds": stats.sim_time}
        algo = get_algo("ppo")
        cfg = algo.config(critic_warmup=0, minibatch_size=a.envs * r.num_steps, epochs=1)
        r.reward[-1] = torch.arange(a.envs) % 2
        batch, _ = algo.prepare(r, cfg)
        scored = policy.evaluate  # bring the re-scored outputs to the CPU batch (gradients flow back)
        policy.evaluate = lambda o, tk: tuple(None if x is None else x.cpu() for x in scored(o, tk))
        opt = policy.optimizer_class()([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
        res["sequence_tokens"] = 1 + policy.vlm.vision_backbone.num_patches + 76 + policy.action_dim
        if real:
            res["before_update_gib"] = torch.cuda.memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        policy.train()
        m = algo.update(policy, opt, batch, cfg, iteration=0, gen=torch.Generator().manual_seed(0))
        if real:
            torch.cuda.synchronize()
            res["update_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            res["update_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
            free, total = torch.cuda.mem_get_info()
            res["device_used_after_update_gib"] = (total - free) / 2**30
        res["update_s"] = time.perf_counter() - t0
        res["update_metrics"] = {k: float(v) for k, v in m.items() if isinstance(v, (int, float, torch.Tensor))}
        res["projection_gib"] = 17.9
    print(json.dumps({k: v for k, v in res.items() if k != "update_metrics"}, indent=1))
    if not res["update_metrics"].get("train/optimizer_steps"):
        print("gpu_openvla: the update took no optimizer step")
        return 1
    if real:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
