"""VLA-RL's robotic process reward model (RPRM): task progress from (image, instruction, proprio).

VLA-RL (Lu et al. 2025) adds a dense pseudo-reward from a model that predicts how far a
trajectory has come; its release left the model a stub. Ours, end to end:

1. **Milestones** (``find_milestones``), found automatically in a trajectory of end-effector
   positions and gripper openings: every gripper open/close change (the opening crosses the
   middle of its range and stays there ``min_pause`` decisions) and every start of a pause
   (end-effector speed below ``speed_eps`` for ``min_pause`` decisions, after having moved).
   Milestones closer than ``min_gap`` decisions are merged; the first decision never is one.
2. **Progress targets** (``progress_targets``), piecewise linear in time between milestones.
   A successful trajectory with k milestones has k+1 segments; milestone j is worth j/(k+1) and
   the last decision 1. A failed trajectory is scaled by the milestones it reached: with K the
   number of segments a success of the same task shows (median over successes, ``expected``),
   its j-th milestone is worth min(j, K−1)/K — never the full 1 — and after its last milestone the
   target stays flat (waiting earns nothing). With no successful reference, K = k+2.
3. **The model** (``RPRM``): the tiny VLA's vision-language backbone (``policies/tiny``; its
   action head is built small and unused) with a scalar head, sigmoid output in [0, 1]. It reads
   images, instruction and proprioception — **never sim_state**, which a real robot does not
   have; sim_state is only used to *label* the training trajectories.
4. **Training** (``train_rprm``): binary cross-entropy against the soft targets, on frames
   from scripted demos (``progress_data_from_demos``; Meta-World and PointReach, whose
   proprioception holds the end effector) and/or rollouts (``progress_data_from_rollouts``,
   labelled from their sim_state; failures included, with the scaled targets above).
5. **Dense reward** (``rprm_rewards``): the increment of predicted progress between
   consecutive decisions, ``r_t = Φ(o_{t+1}) − Φ(o_t)``, 0 at each episode's last decision
   (the observation after it is not stored). Add ``weight · r`` to the sparse success reward.
6. **Evaluation** (``evaluate_rprm``): on held-out rollouts, Spearman rank correlation of the
   predicted progress with time within successful episodes (their true progress is monotone),
   and the success/failure AUC of the final predicted progress.

Where it differs from VLA-RL: the paper fine-tunes a VLM as the RPRM and labels successful
trajectories only; we use the tiny backbone (CPU) and also learn from failures with scaled
targets so that the model's output separates them (measured by the AUC).

    data = progress_data_from_rollouts(rollouts, spec.sim_state_names)
    model = RPRM.for_spec(spec); train_rprm(model, data, steps=300)
    r = rprm_rewards(model, rollout)            # (T, N), add w·r to rollout.reward
    hooks.shape_rewards = RPRMShaper(model, weight=0.5).shape_rewards   # the same, as a train() hook
    evaluate_rprm(model, held_out_rollouts)     # {"spearman": ..., "auc": ...}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.errors import CheckpointError
from vlaforge.fsutil import atomic_dir
from vlaforge.policies.heads.common import mlp
from vlaforge.policies.tiny.model import TinyConfig, TinyVLA
from vlaforge.rewards.simstate import layout_of
from vlaforge.types import Observation, Rollout

FORMAT_VERSION = 1


# -- milestones and targets -----------------------------------------------------------------------
def find_milestones(ee_pos, gripper=None, speed_eps: float = 0.01, min_pause: int = 2, min_gap: int = 3,
                    gripper_eps: float = 0.1, steps=None) -> list[int]:
    """Decision indices that end a sub-task: gripper changes and starts of end-effector pauses.

    ee_pos (T, 3) (or (T, 2)), gripper (T,) opening or None, ``steps`` (T,) simulator steps per
    decision (speed is displacement per simulator step; default 1). ``speed_eps`` is in the
    ee's units per simulator step; ``gripper_eps`` is the least opening range that counts as the
    gripper being used at all. Returns sorted indices in (0, T).
    """
    ee = np.asarray(ee_pos, np.float64)
    T = len(ee)
    if T < 2:
        return []
    cand: list[int] = []
    if gripper is not None:
        g = np.asarray(gripper, np.float64)
        if g.max() - g.min() > gripper_eps:
            closed = g < 0.5 * (g.max() + g.min())
            cur = closed[0]  # the last state that lasted: a one-decision blip is not a change
            for t in range(1, T):
                if closed[t] != cur and np.all(closed[t:t + min_pause] == closed[t]):
                    cand.append(t)
                    cur = closed[t]
    n_steps = np.ones(T - 1) if steps is None else np.maximum(np.asarray(steps, np.float64)[:T - 1], 1)
    speed = np.linalg.norm(ee[1:] - ee[:-1], axis=-1) / n_steps  # (T-1,): speed leaving decision t
    slow = speed < speed_eps
    moved = False
    t = 0
    while t < T - 1:
        if not slow[t]:
            moved = True
            t += 1
            continue
        run = t
        while run < T - 1 and slow[run]:
            run += 1
        if moved and run - t >= min_pause:
            cand.append(t)
            moved = False
        t = run
    out: list[int] = []
    for c in sorted(set(cand)):
        if c <= 0 or c >= T:
            continue
        if out and c - out[-1] < min_gap:
            continue
        out.append(c)
    return out


def progress_targets(T: int, milestones: Sequence[int], success: bool, expected: int | None = None) -> np.ndarray:
    """Per-decision progress targets (T,) in [0, 1] (rule in the module docstring).

    ``expected``: segments (milestones + 1) of a successful trajectory of the task, for failures.
    """
    ms = sorted(m for m in set(int(m) for m in milestones) if 0 < m < T)
    if T <= 1:
        return np.full(max(T, 0), 1.0 if success else 0.0, np.float32)
    if success:
        ms = [m for m in ms if m < T - 1]  # the last decision is the final knot anyway
        K = len(ms) + 1
        xs = [0] + ms + [T - 1]
        vs = [0.0] + [(j + 1) / K for j in range(len(ms))] + [1.0]
    else:
        K = expected if expected is not None and expected >= 1 else len(ms) + 2
        K = max(K, 2)
        xs = [0] + ms
        vs = [0.0] + [min(j + 1, K - 1) / K for j in range(len(ms))]
    if len(xs) == 1:
        return np.zeros(T, np.float32)
    return np.interp(np.arange(T), xs, vs).astype(np.float32)  # flat after the last knot


# -- data ----------------------------------------------------------------------------------------
@dataclass
class ProgressData:
    """Frames with progress targets. images uint8 (M, V, H, W, 3), state (M, S), target (M,) in [0, 1]."""

    images: np.ndarray
    state: np.ndarray
    instructions: list[str]
    target: np.ndarray
    episode: np.ndarray  # int64 (M,)
    success: np.ndarray  # bool (M,) the frame's episode succeeded

    def __len__(self) -> int:
        return len(self.target)

    @staticmethod
    def cat(parts: Sequence[ProgressData]) -> ProgressData:
        off, eps = 0, []
        for p in parts:
            eps.append(p.episode + off)
            off += int(p.episode.max()) + 1 if len(p) else 0
        return ProgressData(np.concatenate([p.images for p in parts]), np.concatenate([p.state for p in parts]),
                            [s for p in parts for s in p.instructions], np.concatenate([p.target for p in parts]),
                            np.concatenate(eps), np.concatenate([p.success for p in parts]))


def _episode_tracks(rollout: Rollout, names):
    """Yield (n, L, ee (L, 3), gripper (L,) or None, executed (L,)) per valid episode."""
    lay = layout_of(names)
    sim = rollout.sim_state
    if sim is None or sim.ndim != 3 or sim.shape[-1] != len(lay.names):
        raise ValueError("progress labels need rollout.sim_state named by the suite; collect with keep_obs=True "
                         "from a suite with a sim_state channel")
    gi = lay.scalar("gripper")
    for n in range(rollout.num_episodes):
        if not bool(rollout.valid[n]):
            continue
        L = int(rollout.alive[:, n].sum())
        if L == 0:
            continue
        s = sim[:L, n].float()
        yield n, L, lay.xyz(s, "ee").numpy(), (s[:, gi].numpy() if gi is not None else None), \
            rollout.executed[:L, n].numpy()


def rollout_milestones(rollout: Rollout, names, **kw) -> dict[int, list[int]]:
    """Milestones of every valid episode of a rollout: {episode column: [decision indices]}."""
    return {n: find_milestones(ee, g, steps=ex, **kw) for n, L, ee, g, ex in _episode_tracks(rollout, names)}


def progress_data_from_rollouts(rollouts: Rollout | Sequence[Rollout], names, **milestone_kw) -> ProgressData:
    """Label every valid episode's decisions with progress targets (successes and failures)."""
    rollouts = [rollouts] if isinstance(rollouts, Rollout) else list(rollouts)
    eps = []  # (rollout, n, L, milestones, success, task)
    for r in rollouts:
        for n, L, ee, g, ex in _episode_tracks(r, names):
            eps.append((r, n, L, find_milestones(ee, g, steps=ex, **milestone_kw), bool(r.success[n]), int(r.task_id[n])))
    if not eps:
        raise ValueError("no valid episodes to label")
    segs: dict[int, list[int]] = {}
    for _r, _n, _L, ms, ok, task in eps:
        if ok:
            segs.setdefault(task, []).append(len(ms) + 1)
    imgs, states, instr, tgt, epi, succ = [], [], [], [], [], []
    for k, (r, n, L, ms, ok, task) in enumerate(eps):
        exp = int(np.median(segs[task])) if task in segs else None
        tgt.append(progress_targets(L, ms, ok, exp))
        imgs.append(r.obs_images[:L, n].numpy())
        states.append(r.obs_state[:L, n].numpy())
        instr += [r.instructions[n]] * L
        epi.append(np.full(L, k, np.int64))
        succ.append(np.full(L, ok))
    return ProgressData(np.concatenate(imgs), np.concatenate(states).astype(np.float32), instr,
                        np.concatenate(tgt), np.concatenate(epi), np.concatenate(succ))


# proprioception layouts in which the end effector (and gripper) can be read: suite -> (ee cols, gripper col)
PROPRIO_EE = {"metaworld": ((0, 1, 2), 3), "pointreach": ((0, 1), None)}


def progress_data_from_demos(demos, stride: int = 1, **milestone_kw) -> ProgressData:
    """Label scripted demos (``data.demos.DemoData``, successful episodes) from their proprioception.

    Works for suites whose proprio state holds the end effector (``PROPRIO_EE``); for others
    (Kitchen: joint angles only) label rollouts with ``progress_data_from_rollouts`` instead.
    ``stride`` keeps every stride-th frame (demos are per simulator step).
    """
    suite = demos.info.get("suite")
    if suite not in PROPRIO_EE:
        raise ValueError(f"demos of suite '{suite}' have no end-effector position in their state; "
                         "label rollouts with progress_data_from_rollouts (they carry sim_state)")
    ee_cols, g_col = PROPRIO_EE[suite]
    keep, tgt = [], []
    for e in np.unique(demos.episode):
        idx = np.nonzero(demos.episode == e)[0]
        idx = idx[np.argsort(demos.frame[idx])]
        st = demos.state[idx]
        ms = find_milestones(st[:, list(ee_cols)], st[:, g_col] if g_col is not None else None, **milestone_kw)
        t = progress_targets(len(idx), ms, True)
        sel = np.arange(0, len(idx), max(stride, 1))
        keep.append(idx[sel])
        tgt.append(t[sel])
    keep_i = np.concatenate(keep)
    return ProgressData(demos.images[keep_i], demos.state[keep_i], [demos.instructions[i] for i in keep_i],
                        np.concatenate(tgt).astype(np.float32), demos.episode[keep_i].astype(np.int64),
                        np.ones(len(keep_i), bool))


# -- the model -----------------------------------------------------------------------------------
class RPRM(nn.Module):
    """Progress in [0, 1] from an Observation (images, instructions, proprio state; not sim_state)."""

    def __init__(self, cfg: TinyConfig, hidden: int = 128):
        super().__init__()
        self.cfg, self.hidden = cfg, hidden
        self.backbone = TinyVLA(cfg)
        self.progress_head = mlp(cfg.dim, hidden, 1, layers=2)

    @classmethod
    def for_spec(cls, spec, dim: int = 64, layers: int = 2, hidden: int = 128) -> RPRM:
        V, H, _, _ = spec.image_shape
        cfg = TinyConfig(state_dim=spec.state_dim, action_dim=1, chunk_size=1, views=V, image_size=H, head="gaussian",
                         dim=dim, layers=layers, head_hidden=16, value_head=False)
        return cls(cfg, hidden)

    def logits(self, obs: Observation) -> torch.Tensor:
        """(N,) progress logits."""
        return self.progress_head(self.backbone.features(obs).mean(1))[:, 0]

    def forward(self, obs: Observation) -> torch.Tensor:
        return torch.sigmoid(self.logits(obs))

    @torch.no_grad()
    def predict(self, images, state, instructions: list[str], batch: int = 256) -> torch.Tensor:
        """Progress (M,) for frames images (M, V, H, W, 3), state (M, S), in batches."""
        was = self.training
        self.eval()
        out = []
        for a in range(0, len(instructions), batch):
            obs = Observation(torch.as_tensor(images[a:a + batch]), torch.as_tensor(state[a:a + batch]),
                              instructions[a:a + batch], torch.zeros(min(batch, len(instructions) - a), dtype=torch.long))
            out.append(self(obs))
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    def config_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "kind": "rprm", "hidden": self.hidden, "tiny": asdict(self.cfg)}


def train_rprm(model: RPRM, data: ProgressData, steps: int = 300, batch: int = 64, lr: float = 1e-3,
               seed: int = 0, weight_decay: float = 1e-4) -> dict:
    """Fit the model to the soft progress targets with binary cross-entropy.

    Returns {"loss_first": mean loss of the first 10% of steps, "loss_last": of the last 10%, "losses": [...]}.
    """
    if len(data) == 0:
        raise ValueError("no training frames for the RPRM")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    M = len(data)
    for _ in range(steps):
        idx = torch.randint(0, M, (min(batch, M),), generator=gen).numpy()
        obs = Observation(torch.from_numpy(data.images[idx]), torch.from_numpy(data.state[idx]),
                          [data.instructions[i] for i in idx], torch.zeros(len(idx), dtype=torch.long))
        y = torch.from_numpy(data.target[idx]).float()
        loss = F.binary_cross_entropy_with_logits(model.logits(obs), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    k = max(1, steps // 10)
    return {"loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])), "losses": losses}


# -- dense reward --------------------------------------------------------------------------------
@torch.no_grad()
def rollout_progress(model: RPRM, rollout: Rollout) -> torch.Tensor:
    """Predicted progress Φ (T, N) at every alive decision (0 elsewhere)."""
    if rollout.obs_images.shape[2] == 0:
        raise ValueError("the RPRM needs the rollout's observations; collect with keep_obs=True")
    t_idx, n_idx = torch.nonzero(rollout.alive, as_tuple=True)
    phi = torch.zeros(rollout.alive.shape)
    p = model.predict(rollout.obs_images[t_idx, n_idx], rollout.obs_state[t_idx, n_idx],
                      [rollout.instructions[int(n)] for n in n_idx])
    phi[t_idx, n_idx] = p
    return phi


def progress_increments(phi: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """r_t = Φ_{t+1} − Φ_t where decisions t and t+1 are both alive, else 0. (T, N) -> (T, N)."""
    assert phi.shape == alive.shape and phi.ndim == 2
    r = torch.zeros_like(phi)
    both = alive[1:] & alive[:-1]
    r[:-1] = (phi[1:] - phi[:-1]) * both
    return r


def rprm_rewards(model: RPRM, rollout: Rollout) -> torch.Tensor:
    """Dense reward (T, N): progress increments (see the module docstring). Add ``weight ·`` it to rollout.reward."""
    return progress_increments(rollout_progress(model, rollout), rollout.alive)


@dataclass
class RPRMShaper:
    """The ``shape_rewards`` hook of ``train(cfg, hooks)``: adds ``weight`` × progress increments in place."""

    model: RPRM
    weight: float = 0.5

    def shape_rewards(self, rollout: Rollout) -> dict[str, float]:
        dense = rprm_rewards(self.model, rollout)  # (T, N)
        rollout.reward += self.weight * dense
        per_ep = dense.sum(0)[rollout.valid]
        return {"rprm/dense_return": float(per_ep.mean()) if len(per_ep) else 0.0, "rprm/weight": self.weight}


# -- evaluation maths ----------------------------------------------------------------------------
def rankdata(x) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (NaN when either side is constant or shorter than 2)."""
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return float("nan")
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))


def roc_auc(scores, labels) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def evaluate_rprm(model: RPRM, rollouts: Rollout | Sequence[Rollout]) -> dict[str, float]:
    """Held-out quality: {"spearman": mean within-success rank correlation of Φ with time,
    "auc": success/failure AUC of the final Φ, "auc_max": of the max Φ, "episodes", "successes"}."""
    rollouts = [rollouts] if isinstance(rollouts, Rollout) else list(rollouts)
    rhos, final, peak, labels = [], [], [], []
    for r in rollouts:
        phi = rollout_progress(model, r)
        for n in range(r.num_episodes):
            if not bool(r.valid[n]):
                continue
            L = int(r.alive[:, n].sum())
            if L == 0:
                continue
            p = phi[:L, n].numpy()
            ok = bool(r.success[n])
            if ok and L >= 3:
                rho = spearman(p, np.arange(L))
                if not math.isnan(rho):
                    rhos.append(rho)
            final.append(p[-1])
            peak.append(p.max())
            labels.append(ok)
    return {"spearman": float(np.mean(rhos)) if rhos else float("nan"), "auc": roc_auc(final, labels),
            "auc_max": roc_auc(peak, labels), "episodes": len(labels), "successes": int(np.sum(labels))}


# -- save / load ---------------------------------------------------------------------------------
def save_rprm(model: RPRM, path: str | Path) -> Path:
    """Atomically write config.json + model.safetensors."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(model.config_dict(), indent=2))
    return path


def load_rprm(path: str | Path) -> RPRM:
    """Load a directory written by ``save_rprm`` (safetensors; nothing unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
        if meta.get("kind") != "rprm":
            raise KeyError("kind")
        model = RPRM(TinyConfig(**meta["tiny"]), int(meta["hidden"]))
    except FileNotFoundError:
        raise CheckpointError(f"no RPRM at '{path}' (config.json missing); train one with train_rprm and "
                              "save_rprm") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise CheckpointError(f"'{path}/config.json' is not an RPRM config; re-create it with save_rprm") from None
    try:
        state = load_file(str(path / "model.safetensors"))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"RPRM weights in '{path}' are missing or corrupt ({str(e).splitlines()[0]}); "
                              "re-create them with save_rprm") from None
    return model.eval()
