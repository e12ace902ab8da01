"""Supervised fine-tuning on demonstrations (behaviour cloning of action chunks).

Each sample is the observation at a demo frame and the next C expert actions (masked past the
episode's end). Loss: regression of the Gaussian head's mean, cross-entropy over action bins
for the token head, flow matching for the flow head. Action statistics (1st/99th percentile
per dim) are computed from the demos and stored in the policy before training.

    vlaforge sft --demos runs/demos --out runs/sft
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from vlaforge.algos.common import accumulate, micro_size
from vlaforge.checks import at_least, check_seed, learning_rate, need, positive
from vlaforge.data.demos import DemoData
from vlaforge.device import module_device, precision_context, to_device
from vlaforge.policies.base import action_stats
from vlaforge.policies.tiny import TinyVLA
from vlaforge.types import Observation


@dataclass
class SFTConfig:
    steps: int = 2000
    """gradient steps"""
    batch_size: int = 64
    """frames per step"""
    lr: float = 1e-3
    """AdamW learning rate (the peak rate with ``--sft.schedule cosine``)"""
    schedule: Literal["constant", "cosine"] = "constant"
    """learning-rate schedule over the steps: constant at --sft.lr, or cosine from --sft.lr at the first step down to
    --sft.min-lr at the last (``sft_lr``)"""
    min_lr: float = 1e-5
    """the last step's rate with ``--sft.schedule cosine`` (unused when constant)"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """max gradient norm"""
    augment_shift: int = 0
    """random image shift in pixels (0 = off). Off by default: the state carries absolute positions,
    so shifting the image alone breaks the image/state correspondence the policy relies on"""
    aux_weight: float = 1.0
    """weight of the perception readout's loss (fresh policies built with `--aux`)"""
    seed: int = 0
    """sampling seed"""

    def check(self) -> None:
        """``--sft.*`` (``vlaforge sft``; iRe-VLA's SL stages reuse the steps)."""
        at_least("--sft.steps", self.steps, 1)
        at_least("--sft.batch-size", self.batch_size, 1)
        learning_rate("--sft.lr", self.lr)
        if self.schedule == "cosine":
            at_least("--sft.min-lr", self.min_lr, 0)
            need(self.min_lr <= self.lr, f"--sft.min-lr {self.min_lr:g} must not exceed --sft.lr {self.lr:g} "
                                         "(the cosine schedule decays from --sft.lr to --sft.min-lr)")
        at_least("--sft.weight-decay", self.weight_decay, 0)
        positive("--sft.grad-clip", self.grad_clip)
        at_least("--sft.augment-shift", self.augment_shift, 0)
        check_seed("--sft.seed", self.seed)
        at_least("--sft.aux-weight", self.aux_weight, 0)


def sft_lr(step: int, cfg: SFTConfig) -> float:
    """The rate of 0-based ``step`` of ``cfg.steps``. constant: ``lr``. cosine:
    ``min_lr + (lr - min_lr) * (1 + cos(pi * step / (steps - 1))) / 2`` -- ``lr`` at the first step, ``min_lr`` at
    the last, their mean half-way (one step: ``lr``)."""
    if cfg.schedule == "constant" or cfg.steps <= 1:
        return cfg.lr
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * step / (cfg.steps - 1)))


def random_shift(images: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shift uint8 images (B, V, H, W, 3) by up to ``pad`` pixels (edge-replicated), one shift per sample."""
    if pad <= 0:
        return images
    B, V, H, W, _ = images.shape
    x = images.permute(0, 1, 4, 2, 3).reshape(B, V * 3, H, W).float()
    x = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=gen)
    rows = (dy[:, None] + torch.arange(H)[None])  # (B, H)
    cols = (dx[:, None] + torch.arange(W)[None])  # (B, W)
    x = x[torch.arange(B)[:, None, None, None], torch.arange(V * 3)[None, :, None, None],
          rows[:, None, :, None], cols[:, None, None, :]]
    return x.reshape(B, V, 3, H, W).permute(0, 1, 3, 4, 2).to(torch.uint8)


class DemoSampler:
    """Draws (observation, action chunk, mask) batches from demos; one torch Generator, resumable."""

    def __init__(self, demos: DemoData, chunk: int, task_index: dict[str, int], seed: int = 0):
        self.demos, self.chunk = demos, chunk
        self.task_ids = np.array([task_index[n] for n in demos.task_names], np.int64)
        self.gen = torch.Generator().manual_seed(seed)

    def batch(self, size: int, shift: int = 0) -> tuple[Observation, torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(self.demos), (size,), generator=self.gen).numpy()
        acts, mask = self.demos.chunk_targets(idx, self.chunk)
        images = random_shift(torch.from_numpy(self.demos.images[idx]), shift, self.gen)
        sim = None if self.demos.sim_state is None else torch.from_numpy(self.demos.sim_state[idx])
        obs = Observation(images, torch.from_numpy(self.demos.state[idx]),
                          [self.demos.instructions[i] for i in idx], torch.from_numpy(self.task_ids[idx]), sim)
        return obs, torch.from_numpy(acts), torch.from_numpy(mask)


def sft_step(policy, optimizer, obs, actions, mask, grad_clip: float) -> dict:
    """One supervised step; skips the optimizer step on a non-finite loss. With ``policy.micro_batch``
    set, gradients are accumulated over micro-batches (``vlaforge.algos.common.accumulate``)."""
    optimizer.zero_grad(set_to_none=True)
    loss, metrics, pending = accumulate(
        lambda idx: policy.sft_loss(obs.index(idx), actions[idx], None if mask is None else mask[idx]),
        len(obs), micro_size(policy), lambda idx: idx)
    if not torch.isfinite(loss):
        optimizer.zero_grad(set_to_none=True)
        return {**metrics, "sft/skipped_nonfinite": 1.0}
    if pending:
        loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
    optimizer.step()
    return {**metrics, "sft/loss": loss.detach(), "sft/grad_norm": gn}


def train_sft(policy, demos: DemoData, cfg: SFTConfig, task_index: dict[str, int], logger=None, progress=None,
              set_stats: bool = True, precision: str = "fp32") -> dict:
    """Fit ``policy`` to demos for ``cfg.steps`` steps on the policy's device (batches drawn on the host, moved
    there). Returns the last metrics."""
    torch.manual_seed(cfg.seed)
    if set_stats:
        policy.set_action_stats(*action_stats(demos.actions))
    aux_index = list(policy.cfg.aux_index) if isinstance(policy, TinyVLA) else []
    if aux_index:  # the perception readout learns from the demos' privileged positions
        if demos.sim_state is None:
            raise ValueError("the policy has a perception readout but the demos recorded no sim_state; "
                             "re-collect them with this version of `vlaforge collect`")
        if set_stats:
            targets = demos.sim_state[:, aux_index]
            policy.set_aux_stats(targets.mean(0), targets.std(0))
    device = module_device(policy)  # the caller placed the policy (``vlaforge sft --device``)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    sampler = DemoSampler(demos, policy.chunk_size, task_index, cfg.seed)
    policy.train()
    metrics: dict = {}
    for step in range(cfg.steps):
        obs, acts, mask = to_device(sampler.batch(cfg.batch_size, cfg.augment_shift), device)  # drawn on the host
        if cfg.schedule != "constant":  # constant leaves the optimizer as built (the rate it was made with)
            for g in opt.param_groups:
                g["lr"] = sft_lr(step, cfg)
        with precision_context(precision, device):
            metrics = sft_step(policy, opt, obs, acts, mask, cfg.grad_clip)
        if logger is not None and (step % 50 == 0 or step == cfg.steps - 1):
            logger.log(step, {**metrics, "sft/lr": opt.param_groups[0]["lr"]})
        if progress is not None:
            progress(step + 1, cfg.steps, metrics)
    policy.eval()
    return {k: float(v) for k, v in metrics.items()}
