"""Shared test setup (imported by the test modules: pytest puts tests/ on sys.path).

    from helpers import one_group_rollout, update_once
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from vlaforge.algos import get_algo
from vlaforge.envs import make_vec_env
from vlaforge.rollout.collect import collect


def benchmark_script(name: str):
    """``benchmarks/<name>.py`` loaded as a fresh module (registered in ``sys.modules``: a script's dataclasses look
    their module up)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def one_group_rollout(policy, n: int = 4, image_size: int = 32):
    """``n`` episodes of one PointReach context (one group), one decision each; half marked successes (reward 1 at
    the last step), the others failures."""
    torch.manual_seed(0)
    venv = make_vec_env("pointreach", n, image_size=image_size, max_steps=policy.chunk_size)
    r, _ = collect(policy, venv, np.zeros(n, np.int64), np.full(n, 7, np.int64))
    venv.close()
    r.success[:] = torch.arange(n) % 2 == 0
    r.reward[:] = 0
    r.reward[r.alive.sum(0) - 1, torch.arange(n)] = r.success.float()
    return r


def update_once(policy, algo: str, r, **cfg_kw):
    """One ``update`` of ``algo`` (config ``cfg_kw``) on rollout ``r`` with AdamW at lr 1e-2; returns (metrics,
    names of the trainable parameters that moved)."""
    a = get_algo(algo)
    cfg = a.config(**cfg_kw)
    if "kl_guard" not in cfg_kw and hasattr(cfg, "kl_guard"):
        # lr 1e-2 takes the first step far outside any trust region (PPO's guard, checked before a step is kept, would
        # undo it); these tests check that gradients reach the parameters, tests/test_rl.py checks the guard
        cfg.kl_guard = None
    batch, _ = a.prepare(r, cfg)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    m = a.update(policy, opt, batch, cfg, iteration=0, gen=torch.Generator().manual_seed(0))
    moved = [n for n, p in policy.named_parameters() if p.requires_grad and not torch.equal(before[n], p)]
    return m, moved


def lora_qwen_policy(path):
    """A tiny random Qwen2-VL (saved with ``save_pretrained`` at ``path``) as an hf policy with LoRA rank 4 and its
    adapters' B matrices moved off zero (so that the adapter changes the model); returns (policy, model dir)."""
    from vlaforge.policies import build_policy
    from vlaforge.policies.hf.tiny import save_tiny_vlm

    d = save_tiny_vlm(path, "qwen2_vl")
    p = build_policy("hf", path=str(d), n_bins=32, max_text_tokens=48, chunk_size=2, lora_rank=4, head_hidden=32)
    with torch.no_grad():
        for n, x in p.named_parameters():
            if "lora_B" in n:
                x.add_(0.05 * torch.randn_like(x))
    return p, d
