"""Shared machinery of the policy-gradient algorithms: flattening rollouts into step batches
and one clipped-surrogate update used by PPO, GRPO and RLOO/LOOP (they differ only in how
advantages are formed and in their defaults).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from vlaforge.core.advantages import reduce_log_prob
from vlaforge.core.losses import entropy_bonus, masked_mean, ppo_clip_loss, value_loss
from vlaforge.types import Observation, Rollout


@dataclass
class StepBatch:
    """Flattened decision steps (B of them) with what the losses need."""

    images: torch.Tensor  # uint8 (B, V, H, W, 3)
    state: torch.Tensor  # (B, S)
    instructions: list[str]
    task_ids: torch.Tensor  # (B,)
    taken: dict[str, torch.Tensor]  # (B, ...)
    actions: torch.Tensor  # (B, C, A)
    chunk_mask: torch.Tensor  # (B, C) bool: chunk entries the simulator executed
    logp_old: torch.Tensor  # (B, C, A)
    v_old: torch.Tensor  # (B,)
    adv: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,)
    episode: torch.Tensor  # (B,) column in the rollout
    t: torch.Tensor  # (B,) decision index within the episode

    def __len__(self) -> int:
        return int(self.adv.shape[0])

    def obs(self) -> Observation:
        return Observation(self.images, self.state, self.instructions, self.task_ids)

    def index(self, idx: torch.Tensor) -> StepBatch:
        out = {}
        for k, v in self.__dict__.items():
            if k == "instructions":
                out[k] = [v[int(i)] for i in idx]
            elif k == "taken":
                out[k] = {a: b[idx] for a, b in v.items()}
            else:
                out[k] = v[idx]
        return StepBatch(**out)


def chunk_mask(executed: torch.Tensor, chunk: int) -> torch.Tensor:
    """(…,) executed step counts -> (…, C) bool mask of executed chunk entries."""
    return torch.arange(chunk) < executed.unsqueeze(-1)


def flatten_steps(rollout: Rollout, keep: torch.Tensor, adv: torch.Tensor, returns: torch.Tensor | None = None) -> StepBatch:
    """Gather the decision steps where ``keep (T, N)`` is true into a StepBatch."""
    t_idx, n_idx = torch.nonzero(keep, as_tuple=True)
    C = rollout.log_prob.shape[2]
    executed = rollout.executed[t_idx, n_idx]
    return StepBatch(
        images=rollout.obs_images[t_idx, n_idx], state=rollout.obs_state[t_idx, n_idx],
        instructions=[rollout.instructions[int(n)] for n in n_idx], task_ids=rollout.task_id[n_idx],
        taken={k: v[t_idx, n_idx] for k, v in rollout.taken.items()}, actions=rollout.actions[t_idx, n_idx],
        chunk_mask=chunk_mask(executed.clamp_min(1), C), logp_old=rollout.log_prob[t_idx, n_idx],
        v_old=rollout.value[t_idx, n_idx], adv=adv[t_idx, n_idx].float(),
        returns=(returns if returns is not None else torch.zeros_like(adv))[t_idx, n_idx].float(),
        episode=n_idx, t=t_idx,
    )


def level_view(logp: torch.Tensor, cmask: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise log-probs (B, C, A) -> log-probs at the ratio level and their mask.

    Unexecuted chunk entries are zeroed (chunk level) or masked out (token / action level).
    """
    logp = logp * cmask.unsqueeze(-1)
    red = reduce_log_prob(logp, level)
    if level == "chunk":
        return red, torch.ones(red.shape[0], dtype=torch.bool)
    return red, cmask


@dataclass
class PGSettings:
    """The knobs of one clipped-surrogate update (filled from each algorithm's config)."""

    epochs: int
    minibatch_size: int
    clip_low: float
    clip_high: float
    level: str
    grad_clip: float
    ent_coef: float = 0.0
    vf_coef: float = 0.0
    value_clip: float | None = None
    kl_guard: float | None = None
    value_only: bool = False  # critic warm-up: only the value head steps


class LocalSync:
    """How data-parallel learners agree during an update. One process has nothing to agree on;
    ``vlaforge.distributed`` installs an all-reduce version with ``data_parallel`` so that every
    learner skips the same steps and applies the same averaged gradient."""

    def any(self, flag: bool) -> bool:
        """True when ``flag`` holds on any learner."""
        return bool(flag)

    def mean(self, x: float) -> float:
        """Mean of ``x`` over learners."""
        return x

    def grads(self, params) -> None:
        """Average the parameters' ``.grad`` over learners, in place."""


_SYNC: list = [LocalSync()]


@contextmanager
def data_parallel(sync):
    """Run updates inside with ``sync`` (a ``LocalSync``-like object) shared by all learners."""
    _SYNC.append(sync)
    try:
        yield sync
    finally:
        _SYNC.pop()


def learner_sync():
    return _SYNC[-1]


def micro_size(policy) -> int:
    """The policy's micro-batch size for gradient accumulation (0 = whole minibatches)."""
    return int(getattr(policy, "micro_batch", 0) or 0)


def accumulate(loss_fn, n: int, micro: int, select):
    """Gradient accumulation over micro-batches of ``n`` samples.

    ``loss_fn(part) -> (loss, metrics)`` with ``part = select(idx)`` for consecutive index
    slices of at most ``micro`` samples (``micro <= 0`` or ``>= n``: one part). Each part's loss
    is weighted by its share of the samples and back-propagated at once, so only one part's
    activations are alive at a time; the weighted sum equals the whole-batch loss for losses
    that are means over samples (exactly so when every chunk entry is executed: masked means
    over partially executed chunks are weighted by samples, not by entries).

    Returns (loss, metrics, pending): with one part nothing is back-propagated yet and
    ``pending`` is True (the caller checks the loss, then calls ``loss.backward()``); with
    several, ``loss`` is the detached weighted sum and the gradients are accumulated.
    """
    if micro <= 0 or micro >= n:
        loss, m = loss_fn(select(torch.arange(n)))
        return loss, m, True
    total, metrics = torch.zeros(()), {}
    for start in range(0, n, micro):
        idx = torch.arange(start, min(start + micro, n))
        w = len(idx) / n
        loss, m = loss_fn(select(idx))
        if torch.isfinite(loss):
            (w * loss).backward()
        total = total + w * loss.detach()
        for k, v in m.items():
            metrics[k] = metrics.get(k, 0.0) + w * torch.as_tensor(v, dtype=torch.float32).detach()
    return total, metrics, False


def _pg_loss(policy, mb: StepBatch, s: PGSettings):
    """Clipped surrogate (+ entropy bonus, + value loss) of one (micro-)batch and its metrics."""
    logp, ent, v = policy.evaluate(mb.obs(), mb.taken)
    lp_new, mask = level_view(logp, mb.chunk_mask, s.level)
    lp_old, _ = level_view(mb.logp_old, mb.chunk_mask, s.level)
    adv = mb.adv.view(-1, *[1] * (mask.dim() - 1)).expand(mask.shape)
    pg, m = ppo_clip_loss(lp_new, lp_old, adv, mask, s.clip_low, s.clip_high)
    loss = torch.zeros(())
    if not s.value_only:
        loss = loss + pg
        if s.ent_coef:
            eb, em = entropy_bonus(ent.mean(-1), mb.chunk_mask)
            loss = loss - s.ent_coef * eb
            m.update(em)
    vf_coef = (s.vf_coef or 1.0) if s.value_only else s.vf_coef  # the warm-up trains the critic even at vf_coef 0
    if vf_coef and v is not None:
        vl, vm = value_loss(v, mb.v_old, mb.returns, torch.ones_like(mb.adv, dtype=torch.bool), s.value_clip)
        loss = loss + vf_coef * vl
        m.update(vm)
    m["entropy_mean"] = masked_mean(ent.mean(-1), mb.chunk_mask).detach()
    return loss, m


def pg_update(policy, optimizer, batch: StepBatch, s: PGSettings, gen: torch.Generator | None = None) -> dict:
    """Epochs of minibatch clipped-surrogate steps. Skips the optimizer step (and counts it) on
    a non-finite loss or when the minibatch's approximate KL exceeds ``kl_guard``."""
    policy.train()
    sync = learner_sync()
    value_params = set(policy.value_parameters()) if hasattr(policy, "value_parameters") else set()
    sums: dict[str, float] = {}
    count = 0
    skipped = {"nonfinite": 0, "kl_guard": 0}
    stop = False
    B = len(batch)
    for _ in range(s.epochs):
        perm = torch.randperm(B, generator=gen)
        for start in range(0, B, s.minibatch_size):
            mb = batch.index(perm[start:start + s.minibatch_size])
            optimizer.zero_grad(set_to_none=True)
            loss, m, pending = accumulate(lambda part: _pg_loss(policy, part, s), len(mb), micro_size(policy),
                                          mb.index)
            if sync.any(not torch.isfinite(loss)):
                skipped["nonfinite"] += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            if s.kl_guard is not None and not s.value_only and sync.mean(float(m["approx_kl"])) > s.kl_guard:
                skipped["kl_guard"] += 1
                optimizer.zero_grad(set_to_none=True)
                stop = True  # the policy moved too far from the rollout policy: stop this update
                break
            if pending:
                loss.backward()
            if s.value_only:
                for p in policy.parameters():
                    if p not in value_params:
                        p.grad = None
            sync.grads(list(policy.parameters()))
            gn = torch.nn.utils.clip_grad_norm_([p for p in policy.parameters() if p.grad is not None], s.grad_clip)
            if not torch.isfinite(gn):
                skipped["nonfinite"] += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            m["grad_norm"] = gn.detach()
            m["loss"] = loss.detach()
            for k, val in m.items():
                sums[k] = sums.get(k, 0.0) + float(val)
            count += 1
        if stop:
            break
    out = {f"train/{k}": val / max(count, 1) for k, val in sums.items()}
    out.update({"train/optimizer_steps": count, "train/skipped_nonfinite": skipped["nonfinite"],
                "train/skipped_kl_guard": skipped["kl_guard"], "train/batch_steps": B})
    return out


def trajectory_reward(rollout: Rollout) -> torch.Tensor:
    """(N,) sum of rewards over each episode's alive steps."""
    return (rollout.reward * rollout.alive).sum(0)
