"""TPO — GRAPE's trajectory-wise preference optimisation (a DPO loss over whole trajectories).

Per initial state (a group of K rollouts with at least one success and one failure), the
top-m successes by score are "chosen" and the bottom-m failures "rejected"; pairs are always
success vs failure from one initial state. The loss is
``−log σ(β·[Σ_t log πθ/πref(chosen) − Σ_t log πθ/πref(rejected)])`` with sums over each
whole trajectory (padding masked, log space), π_ref = the policy that collected the
iteration's rollouts (its log-probs are stored in the rollout, so no second model copy).
The score defaults to the trajectory reward; GRAPE's recipe passes its own
(λ1·R_self + λ2·R_ext + λ3·success).

    vlaforge train --algo tpo --suite pointreach --init runs/sft
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from vlaforge.algos.common import LOCAL, StepSettings, chunk_mask, micro_size, optimize, trajectory_reward
from vlaforge.checks import need
from vlaforge.core.losses import tpo_loss
from vlaforge.hooks import Hooks
from vlaforge.policies.registry import family
from vlaforge.types import Observation, Rollout


@dataclass
class TPOConfig:
    group_size: int = 8
    """rollouts per initial state K"""
    beta: float = 0.1
    """DPO temperature beta"""
    pairs_per_group: int = 2
    """m: top-m successes paired with bottom-m failures"""
    epochs: int = 2
    """passes over the pairs"""
    pairs_per_batch: int = 16
    """preference pairs per optimizer step"""
    grad_clip: float = 1.0
    """max gradient norm"""
    temperature: float = 1.0
    """sampling temperature (scoring uses the same)"""
    reference: Literal["rollout", "base"] = "rollout"
    """pi_ref: the rollout policy (its stored log-probs, GRAPE), or the base model = the same model with its
    LoRA adapters disabled (a fixed reference without a second copy; needs an hf policy with LoRA)"""


def check_run(cfg, init: dict | None) -> None:
    """The registry's ``check_run``: ``--tpo.reference base`` needs LoRA adapters to switch off (``init``: the --init
    policy's config, None for a fresh policy)."""
    if cfg.algo_cfg.reference != "base":
        return
    lora = init.get("lora_rank", 0) if init is not None else (
        cfg.hf.lora_rank if "base_reference" in family(cfg.policy).caps else 0)
    need(lora > 0, "--tpo.reference base needs a policy with LoRA adapters (--policy hf --policy.lora-rank N, "
                   "or an --init checkpoint trained so)")


@dataclass
class PairBatch:
    rollout: Rollout
    chosen: torch.Tensor  # (P,) episode columns
    rejected: torch.Tensor  # (P,)

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    def index(self, idx: torch.Tensor) -> PairBatch:
        return PairBatch(self.rollout, self.chosen[idx], self.rejected[idx])


def make_pairs(success: torch.Tensor, group_id: torch.Tensor, score: torch.Tensor, m: int, valid=None):
    """Success-vs-failure pairs within each group: top-m successes by score vs bottom-m failures.

    Returns (chosen (P,), rejected (P,)) episode indices; groups without both outcomes give none.
    """
    valid = torch.ones_like(success, dtype=torch.bool) if valid is None else valid
    chosen, rejected = [], []
    for g in torch.unique(group_id):
        idx = torch.nonzero((group_id == g) & valid).flatten()
        wins, losses = idx[success[idx]], idx[~success[idx]]
        k = min(m, len(wins), len(losses))
        if k == 0:
            continue
        w = wins[torch.argsort(score[wins], descending=True)[:k]]
        l = losses[torch.argsort(score[losses])[:k]]
        chosen.append(w)
        rejected.append(l)
    if not chosen:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(chosen), torch.cat(rejected)


def prepare(rollout: Rollout, cfg: TPOConfig, hooks: Hooks) -> tuple[PairBatch, dict]:
    """Pairs ranked by ``hooks.score(rollout)`` (GRAPE's score), else by the trajectory reward."""
    score = hooks.score(rollout)
    score = trajectory_reward(rollout) if score is None else score
    chosen, rejected = make_pairs(rollout.success, rollout.group_id, score, cfg.pairs_per_group, rollout.valid)
    groups = len(torch.unique(rollout.group_id))
    return PairBatch(rollout, chosen, rejected), {"train/pairs": float(len(chosen)),
                                                  "train/groups_with_pairs": float(len(torch.unique(rollout.group_id[chosen]))) / max(groups, 1)}


def _traj_logps(policy, r: Rollout, eps: torch.Tensor, reference: str = "rollout", temperature: float = 1.0
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-step chunk log-probs (T, P) under the policy and the reference, and the step mask (T, P)."""
    sub = r.alive[:, eps]  # (T, P)
    t_idx, p_idx = torch.nonzero(sub, as_tuple=True)
    n_idx = eps[p_idx]
    obs = Observation(r.obs_images[t_idx, n_idx], r.obs_state[t_idx, n_idx],
                      [r.instructions[int(n)] for n in n_idx], r.task_id[n_idx],
                      None if r.sim_state is None else r.sim_state[t_idx, n_idx])
    cm = chunk_mask(r.executed[t_idx, n_idx].clamp_min(1), r.log_prob.shape[2]).unsqueeze(-1)
    taken = {k: v[t_idx, n_idx] for k, v in r.taken.items()}
    logp, _, _ = policy.evaluate(obs, taken, temperature=temperature)
    if reference == "base":
        with torch.no_grad(), policy.reference():
            logp_ref = policy.evaluate(obs, taken, temperature=temperature)[0]
    else:
        logp_ref = r.log_prob[t_idx, n_idx]
    new = torch.zeros(sub.shape, device=logp.device)
    ref = torch.zeros(sub.shape, device=logp.device)
    new = new.index_put((t_idx, p_idx), (logp * cm).sum((-1, -2)).float())
    ref = ref.index_put((t_idx, p_idx), (logp_ref * cm).sum((-1, -2)).float())
    return new, ref, sub


def update(policy, optimizer, batch: PairBatch, cfg: TPOConfig, iteration: int, gen=None, sync=LOCAL,
           state=None) -> dict:
    def pair_loss(part: PairBatch):
        new_w, ref_w, m_w = _traj_logps(policy, part.rollout, part.chosen, cfg.reference, cfg.temperature)
        new_l, ref_l, m_l = _traj_logps(policy, part.rollout, part.rejected, cfg.reference, cfg.temperature)
        return tpo_loss(new_w, ref_w, m_w, new_l, ref_l, m_l, cfg.beta)

    # micro-batches of pairs holding about micro_batch decision steps (2 trajectories of <= T steps each)
    micro = micro_size(policy)
    pairs = max(1, micro // (2 * batch.rollout.num_steps)) if micro and len(batch) else 0
    s = StepSettings(epochs=cfg.epochs, minibatch_size=cfg.pairs_per_batch, grad_clip=cfg.grad_clip, micro_batch=pairs)
    return optimize(policy, optimizer, batch, pair_loss, s, gen, sync)
