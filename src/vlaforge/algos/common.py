"""What every algorithm shares: the step batch (decision steps flattened out of a rollout), the
learner-sync seam, micro-batch gradient accumulation, the clipped surrogate of the policy-gradient
family, and ``optimize`` — the one optimizer-step skeleton (epochs × shuffled minibatches,
micro-batching, non-finite and KL skips, gradient sync, clipping) every ``update`` runs on.

An algorithm file (``ppo.py``, ``grpo.py``, ``rloo.py``, ``tpo.py``) writes its own loss and calls
``optimize(policy, optimizer, batch, loss_fn, settings, ...)``; nothing here knows an algorithm by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vlaforge.checks import at_least, finite, need, positive
from vlaforge.core.advantages import broadcast_to_steps, reduce_log_prob
from vlaforge.core.losses import ppo_clip_loss
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
    sim_state: torch.Tensor | None = None  # (B, P) privileged simulator state (a privileged critic reads it)

    def __len__(self) -> int:
        return int(self.adv.shape[0])

    def obs(self) -> Observation:
        return Observation(self.images, self.state, self.instructions, self.task_ids, self.sim_state)

    def index(self, idx: torch.Tensor) -> StepBatch:
        out = {}
        for k, v in self.__dict__.items():
            if v is None:
                out[k] = None
            elif k == "instructions":
                out[k] = [v[int(i)] for i in idx]
            elif k == "taken":
                out[k] = {a: b[idx] for a, b in v.items()}
            else:
                out[k] = v[idx]
        return StepBatch(**out)


def chunk_mask(executed: torch.Tensor, chunk: int) -> torch.Tensor:
    """(…,) executed step counts -> (…, C) bool mask of executed chunk entries."""
    return torch.arange(chunk, device=executed.device) < executed.unsqueeze(-1)


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
        sim_state=None if rollout.sim_state is None else rollout.sim_state[t_idx, n_idx],
    )


def trajectory_reward(rollout: Rollout) -> torch.Tensor:
    """(N,) sum of rewards over each episode's alive steps."""
    return (rollout.reward * rollout.alive).sum(0)


def episode_batch(rollout: Rollout, keep_ep: torch.Tensor, adv_ep: torch.Tensor) -> tuple[StepBatch, dict]:
    """The alive steps of the kept episodes ``keep_ep (N,) bool``, each carrying its episode's advantage
    ``adv_ep (N,)`` (the group methods' batch), and the share of episodes kept."""
    keep = rollout.alive & keep_ep.unsqueeze(0)
    info = {"train/kept_episodes": float(keep_ep.sum()), "train/kept_share": float(keep_ep.float().mean())}
    return flatten_steps(rollout, keep, broadcast_to_steps(adv_ep, rollout.alive)), info


# -- the policy-gradient family's surrogate ---------------------------------------------------------

def level_view(logp: torch.Tensor, cmask: torch.Tensor, level: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Element-wise log-probs (B, C, A) -> log-probs at the ratio level and their mask.

    Unexecuted chunk entries are zeroed (chunk level) or masked out (token / action level).
    """
    logp = logp * cmask.unsqueeze(-1)
    red = reduce_log_prob(logp, level)
    if level == "chunk":
        return red, torch.ones(red.shape[0], dtype=torch.bool, device=red.device)
    return red, cmask


def clipped_surrogate(logp: torch.Tensor, mb: StepBatch, clip_low: float, clip_high: float, level: str):
    """PPO's clipped surrogate of new log-probs ``logp (B, C, A)`` against ``mb.logp_old`` at the ratio
    ``level``, every entry weighted by its step's advantage ``mb.adv (B,)``; ratios clipped to
    ``[1 - clip_low, 1 + clip_high]``. Returns (loss, metrics incl. ``approx_kl``)."""
    lp_new, mask = level_view(logp, mb.chunk_mask, level)
    lp_old, _ = level_view(mb.logp_old, mb.chunk_mask, level)
    adv = mb.adv.view(-1, *[1] * (mask.dim() - 1)).expand(mask.shape)
    return ppo_clip_loss(lp_new, lp_old, adv, mask, clip_low, clip_high)


# -- learners agreeing --------------------------------------------------------------------------------

class LocalSync:
    """How data-parallel learners agree during an update, passed to ``update(..., sync=)``. One process
    has nothing to agree on; the Ray backend passes an all-reduce version so that every learner skips
    the same steps and applies the same averaged gradient."""

    def any(self, flag: bool) -> bool:
        """True when ``flag`` holds on any learner."""
        return bool(flag)

    def mean(self, x: float) -> float:
        """Mean of ``x`` over learners."""
        return x

    def grads(self, params) -> None:
        """Average the parameters' ``.grad`` over learners, in place."""


LOCAL = LocalSync()


# -- the optimizer-step skeleton ----------------------------------------------------------------------

def micro_size(policy) -> int:
    """The policy's micro-batch size for gradient accumulation (0 = whole minibatches)."""
    return int(policy.micro_batch or 0)


def micro_parts(n: int, micro: int) -> list[torch.Tensor]:
    """Index tensors of consecutive slices of at most ``micro`` of ``n`` samples (one slice when ``micro <= 0`` or
    ``>= n``). They stay on the host on purpose: a host index tensor may index device tensors (CUDA allows it), and
    ``StepBatch.index`` reads the instructions' indices with ``int()`` without a device sync."""
    if micro <= 0 or micro >= n:
        return [torch.arange(n)]
    return [torch.arange(start, min(start + micro, n)) for start in range(0, n, micro)]


def _add_weighted(metrics: dict, m: dict, w: float) -> None:
    """``metrics[k] += w * m[k]`` (a part's metrics weighted by its share of the samples)."""
    for k, v in m.items():
        metrics[k] = metrics.get(k, 0.0) + w * torch.as_tensor(v, dtype=torch.float32).detach()


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
    parts = micro_parts(n, micro)
    if len(parts) == 1:
        loss, m = loss_fn(select(parts[0]))
        return loss, m, True
    total, metrics = 0.0, {}
    for idx in parts:
        w = len(idx) / n
        loss, m = loss_fn(select(idx))
        if torch.isfinite(loss):
            (w * loss).backward()
        total = total + w * loss.detach()
        _add_weighted(metrics, m, w)
    return total, metrics, False


@dataclass(kw_only=True)
class StepSettings:
    """The knobs of ``optimize`` (each algorithm fills them from its config)."""

    epochs: int
    """passes over the batch"""
    minibatch_size: int
    """batch items (decision steps, preference pairs, ...) per optimizer step"""
    grad_clip: float
    """max gradient norm"""
    micro_batch: int = 0
    """items per backward pass inside a minibatch (0 = the whole minibatch at once)"""
    kl_guard: float | None = None
    """trust region on ``approx_kl`` (the minibatch's KL to the rollout policy, mean over learners): a step is kept
    only if the KL measured *after* it, on its own minibatch, is at most this; a step over it is shrunk (halved, at
    most ``kl_backtracks`` times) and, if still over, undone (parameters and optimizer state), which ends the update"""
    kl_backtracks: int = 4
    """halvings of a step whose KL after it exceeds ``kl_guard`` before it is undone (0: undo at once)"""


@dataclass
class PGConfig:
    """The options every clipped policy-gradient algorithm has (``--ppo.*``, ``--grpo.*``, ``--rloo.*``); an
    algorithm's config adds its own fields and may change a default."""

    group_size: int = 8
    """rollouts per initial state K"""
    epochs: int = 2
    """passes over each batch"""
    minibatch_size: int = 256
    """decision steps per optimizer step"""
    grad_clip: float = 1.0
    """max gradient norm"""
    level: str = "action"
    """ratio level: token | action | chunk"""
    temperature: float = 1.0
    """sampling temperature (scoring uses the same)"""
    kl_guard: float | None = None
    """trust region: keep a step only if the minibatch's approx KL to the rollout policy after it is at most this
    (else shrink it, then undo it and end the update; ``optimize``); None = off"""
    kl_backtracks: int = 4
    """halvings of a step over ``kl_guard`` before it is undone"""

    def settings(self, policy, kl_guard: bool = True) -> StepSettings:
        """``optimize``'s knobs for ``policy`` (its micro-batch); ``kl_guard=False`` drops the guard."""
        return StepSettings(epochs=self.epochs, minibatch_size=self.minibatch_size, grad_clip=self.grad_clip,
                            micro_batch=micro_size(policy), kl_guard=self.kl_guard if kl_guard else None,
                            kl_backtracks=self.kl_backtracks)


def measure(loss_fn, n: int, micro: int, select) -> dict:
    """The loss's metrics on ``n`` samples without gradients (micro-batched like ``accumulate``; metrics weighted by
    each part's share of the samples)."""
    with torch.no_grad():
        parts = micro_parts(n, micro)
        if len(parts) == 1:
            return loss_fn(select(parts[0]))[1]
        metrics: dict = {}
        for idx in parts:
            _add_weighted(metrics, loss_fn(select(idx))[1], len(idx) / n)
        return metrics


def snapshot(optimizer, params: list) -> tuple[list, dict]:
    """Copies of ``params`` and of their optimizer state (None where the optimizer holds none yet)."""
    state = {}
    for p in params:
        st = optimizer.state.get(p)
        state[p] = None if st is None else {k: v.clone() if torch.is_tensor(v) else v for k, v in st.items()}
    return [p.detach().clone() for p in params], state


def restore(optimizer, params: list, saved: tuple[list, dict]) -> None:
    """Undo an optimizer step: put back the parameters and optimizer state ``snapshot`` took."""
    values, state = saved
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    for p in params:
        if state[p] is None:
            optimizer.state.pop(p, None)
        else:
            optimizer.state[p] = state[p]


def kl_after_step(policy, loss_fn, mb, s: StepSettings, sync: LocalSync) -> float:
    """``approx_kl`` of minibatch ``mb`` under the current parameters (eval mode: what will act; mean over learners)."""
    policy.eval()
    try:
        return sync.mean(float(measure(loss_fn, len(mb), s.micro_batch, mb.index)["approx_kl"]))
    finally:
        policy.train()


def optimize(policy, optimizer, batch, loss_fn, s: StepSettings, gen: torch.Generator | None = None,
             sync: LocalSync = LOCAL, trainable=None) -> dict:
    """Epochs of shuffled minibatch steps over ``batch`` (anything with ``len()`` and ``index(idx)``).

    ``loss_fn(part) -> (loss, metrics)`` is the algorithm's loss of a (micro-)batch. A step is skipped
    (and counted) on a non-finite loss or gradient norm. With ``s.kl_guard`` (``metrics["approx_kl"]``: the KL to
    the rollout policy) the guard is checked *before a step is kept*: after each optimizer step the minibatch's KL
    is measured again (one forward pass without gradients); over the guard, the step is shrunk toward the old
    parameters (halved up to ``s.kl_backtracks`` times) and, if still over, undone — parameters and optimizer
    state — and the rest of the update is skipped. (Checking only the next minibatch's KL, as before, let one
    Adam step from an SFT start take the policy past the guard: docs/benchmarks.md, "PPO from an SFT start".)
    A minibatch already over the guard before its step also ends the update.
    ``trainable`` (a collection of parameters, None = all) limits which parameters step: the others' gradients
    are dropped before the sync (PPO's critic warm-up). ``sync`` makes data-parallel learners agree
    (``LocalSync``: one process). Returns ``train/*`` metrics: per-step means of the loss's metrics,
    ``grad_norm``, ``loss``, ``kl_after_step`` and ``step_scale`` (with the guard), and counts.
    """
    policy.train()
    keep = None if trainable is None else {id(p) for p in trainable}
    sums: dict[str, float] = {}
    count = 0
    skipped = {"nonfinite": 0, "kl_guard": 0, "backtracks": 0}
    stop = False
    B = len(batch)
    for _ in range(s.epochs):
        perm = torch.randperm(B, generator=gen)
        for start in range(0, B, s.minibatch_size):
            mb = batch.index(perm[start:start + s.minibatch_size])
            optimizer.zero_grad(set_to_none=True)
            if 0 < s.micro_batch < len(mb):  # gradient accumulation over micro-batches
                loss, m, pending = accumulate(loss_fn, len(mb), s.micro_batch, mb.index)
            else:  # one part: the loss of the minibatch itself, back-propagated once it is checked
                (loss, m), pending = loss_fn(mb), True
            if sync.any(not torch.isfinite(loss)):
                skipped["nonfinite"] += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            if s.kl_guard is not None and sync.mean(float(m["approx_kl"])) > s.kl_guard:
                skipped["kl_guard"] += 1
                optimizer.zero_grad(set_to_none=True)
                stop = True  # the policy moved too far from the rollout policy: stop this update
                break
            if pending:
                loss.backward()
            if keep is not None:
                for p in policy.parameters():
                    if id(p) not in keep:
                        p.grad = None
            sync.grads(list(policy.parameters()))
            stepping = [p for p in policy.parameters() if p.grad is not None]
            gn = torch.nn.utils.clip_grad_norm_(stepping, s.grad_clip)
            if not torch.isfinite(gn):
                skipped["nonfinite"] += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            saved = snapshot(optimizer, stepping) if s.kl_guard is not None else None
            optimizer.step()
            if saved is not None:
                kl, scale = kl_after_step(policy, loss_fn, mb, s, sync), 1.0
                if kl > s.kl_guard:
                    with torch.no_grad():
                        delta = [p.detach() - v for p, v in zip(stepping, saved[0])]
                    for _ in range(max(s.kl_backtracks, 0)):
                        scale *= 0.5
                        skipped["backtracks"] += 1
                        with torch.no_grad():
                            for p, v, d in zip(stepping, saved[0], delta):
                                p.copy_(v + scale * d)
                        kl = kl_after_step(policy, loss_fn, mb, s, sync)
                        if kl <= s.kl_guard:
                            break
                if kl > s.kl_guard:
                    restore(optimizer, stepping, saved)
                    skipped["kl_guard"] += 1
                    optimizer.zero_grad(set_to_none=True)
                    stop = True  # even the smallest step leaves the trust region: keep none, end the update
                    break
                m["kl_after_step"] = kl
                m["step_scale"] = scale
            m["grad_norm"] = gn.detach()
            m["loss"] = loss.detach()
            for k, val in m.items():
                sums[k] = sums.get(k, 0.0) + float(val)
            count += 1
        if stop:
            break
    out = {f"train/{k}": val / max(count, 1) for k, val in sums.items()}
    out.update({"train/optimizer_steps": count, "train/skipped_nonfinite": skipped["nonfinite"],
                "train/skipped_kl_guard": skipped["kl_guard"], "train/kl_backtracks": skipped["backtracks"],
                "train/batch_steps": B})
    return out


# -- the off-policy step skeleton (SAC, DSRL, distill) -------------------------------------------------

def gradient_step(loss: torch.Tensor, params: list, optimizer: torch.optim.Optimizer, grad_clip: float,
                  sync: LocalSync = LOCAL) -> torch.Tensor | None:
    """One optimizer step of ``params`` on ``loss``: skipped (gradients dropped, None returned) when the loss or the
    gradient norm is non-finite on any learner; otherwise gradients all-reduced (``sync``), clipped to ``grad_clip``
    and stepped. Returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    if sync.any(not bool(torch.isfinite(loss))):
        return None
    loss.backward()
    sync.grads(params)
    gn = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    if sync.any(not bool(torch.isfinite(gn))):
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return gn


def replay_updates(steps: int, sample, step) -> dict:
    """The off-policy skeleton: ``steps`` times draw a replay batch ``mb = sample()`` (from the run's checkpointed
    generator: resumes stay exact) and run ``step(i, mb) -> metrics | None`` (its gradient steps through
    ``gradient_step``; None: skipped as non-finite). ``steps`` is the algorithm's update-to-data budget (SAC:
    ``utd × new transitions``; distill: ``--distill.steps``). Returns ``train/<key>``: each metric's mean over the
    steps that reported it, ``train/optimizer_steps`` and ``train/skipped_nonfinite``."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    skipped = 0
    for i in range(steps):
        m = step(i, sample())
        if m is None:
            skipped += 1
            continue
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    out = {f"train/{k}": v / counts[k] for k, v in sums.items()}
    out.update({"train/optimizer_steps": steps - skipped, "train/skipped_nonfinite": skipped})
    return out


def check_fields(name: str, c, min_group_size: int = 1) -> None:
    """The generic checks of an algorithm's config (``--<name>.*``) by field name: every float finite, counts >= 1,
    rates in [0, 1], coefficients >= 0, clips > 0; ``group_size`` >= ``min_group_size`` (2 for a group method).
    ``algos.Algo.check`` runs it for every registered algorithm."""
    p = f"--{name}."
    for f in dataclasses.fields(c):
        v = getattr(c, f.name)
        fl = p + f.name.replace("_", "-")
        if isinstance(v, float):
            finite(fl, v)
        if f.name in ("epochs", "minibatch_size", "pairs_per_group", "pairs_per_batch"):
            at_least(fl, v, 1)
        elif f.name == "group_size":
            at_least(fl, v, min_group_size,
                     " (a group method compares rollouts of one initial state)" if min_group_size > 1 else "")
        elif f.name in ("gamma", "lam"):
            need(0 <= v <= 1, f"{fl} must be in [0, 1]; got {v}")
        elif f.name == "temperature":
            positive(fl, v)
        elif f.name in ("clip", "clip_low", "clip_high", "grad_clip", "beta"):
            positive(fl, v)
        elif f.name in ("vf_coef", "ent_coef", "critic_warmup", "min_abs_adv", "kl_backtracks"):
            at_least(fl, v, 0)
        elif f.name in ("kl_guard", "value_clip") and v is not None:
            positive(fl, v, " (or None = off)")
        elif f.name == "level":
            need(v in ("token", "action", "chunk"), f"{fl} '{v}' is unknown; choose token, action or chunk")
        elif f.name == "keep_band" and v is not None:
            need(len(v) == 2 and 0 <= v[0] <= v[1] <= 1, f"{fl} must be two rates lo <= hi in [0, 1]; got {v}")
