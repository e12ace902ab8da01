"""SAC with demonstrations in the replay buffer, RLPD-style, for the tiny VLA's Gaussian head.

    vlaforge train --algo sac --suite pointreach --backbone state --env-kwargs privileged 1 --lr 3e-4
    vlaforge train --algo sac --suite metaworld --tasks reach-v3 --init runs/sft --sac.demos runs/demos \\
        --sac.critic privileged --sac.utd 2

What runs (Haarnoja et al. 2018; Ball et al. 2023, "Efficient Online RL with Offline Data" — RLPD):

- The action is the whole chunk (C×A, in the policy's normalised [-1, 1] space) and a transition is one
  decision, so γ applies per decision (C simulator steps; ``gamma`` 0.99 here is ~0.9975 per simulator step
  at C = 4). The chunk's rewards are summed by the env (sparse success + optional shaping).
- Actor: ``a = tanh(u)``, ``u ~ N(atanh(mean), std)`` (``GaussianHead.rsample``): its median is the head's
  deterministic action, so a policy from SFT keeps its mode and ``vlaforge eval`` needs no change. The
  training loop's collection samples from that same tanh-Gaussian (``head.squash``).
- Critics: an ensemble of ``critics`` LayerNorm MLPs Q(x, a) trained on ``0.5 Σ_e (Q_e − y)²``; the target
  ``y = r + γ(1 − d)(min over a random ``target_subset`` of the Polyak-averaged critics − α log π(a'|s'))``
  (core/offpolicy.py). The actor maximises the ensemble mean (``actor_reduce``), α is learned towards the
  target entropy −C·A.
- Critic input x (``critic``): ``state`` = proprioception (a ``--backbone state`` policy's whole input),
  ``privileged`` = ``sim_state`` + proprioception (asymmetric: the actor never sees ``sim_state``), or
  ``features`` = the actor's pooled backbone features, *detached* (computed without gradient). No choice
  back-propagates a critic loss into the image encoder: at a high update-to-data ratio on 2 CPU cores that
  would dominate the cost and move the actor's perception with a noisy critic. The actor's own loss does
  train the encoder (through its action).
- Replay (``data/replay.py``): ``ReplayBuffer`` of tensors, bounded by ``capacity``; with ``demos`` every
  batch is half demo transitions, half online (``sample_symmetric``). Demo transitions are built from a
  ``vlaforge collect`` directory at every frame: the chunk of the next C expert actions, the frame C steps
  later as s', reward 1 and d = 1 where the chunk reaches the episode's end (demos are successful episodes),
  else 0. They carry no shaping term: with ``shaping`` > 0 online transitions also earn dense progress, demo
  ones do not (a bias towards the online data's values; prefer sparse rewards with demos).
- Online transitions: every alive step of valid episodes; s' is the next decision's observation. A step
  cut by the time limit at the rollout's last row has no stored s' and is dropped (one per truncated
  episode); a success terminates (d = 1).
- ``utd``: gradient steps per new online transition; ``actor_every``: critic steps per actor/α step;
  ``critic_warmup``: iterations that train the critics only (RLPD's advice when starting from an SFT actor).

State (``SACState``): critics, target critics, their optimizer, log α and its optimizer, the online and demo
buffers, all saved in the full-state checkpoint (``algos/state.py``), so a SIGKILLed run resumes exactly.
The actor's optimizer is the training loop's (``--lr``). Bytes per transition are logged as
``replay/bytes_per_transition`` (docs/offpolicy.md has measured values). Local runs only (not ``--ray``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vlaforge.algos.common import LOCAL, gradient_step, replay_updates
from vlaforge.algos.state import AlgoState, flatten, unflatten
from vlaforge.core.offpolicy import (
    actor_loss,
    critic_loss,
    critic_target,
    polyak,
    random_subset,
    temperature_loss,
)
from vlaforge.data.demos import load_demos
from vlaforge.data.replay import ReplayBuffer, sample_symmetric
from vlaforge.device import module_device, to_device
from vlaforge.errors import UsageError
from vlaforge.hooks import Hooks
from vlaforge.policies.base import normalize
from vlaforge.policies.tiny import TinyVLA
from vlaforge.types import Observation, Rollout

CRITIC_INPUTS = ("state", "privileged", "features")


@dataclass
class SoftACConfig:
    """The soft actor-critic options SAC and DSRL share (``--sac.*`` / ``--dsrl.*``); the actor is SAC's policy
    head or DSRL's noise policy."""

    critic: str = "state"
    """critic input: state (proprioception) | privileged (sim_state + proprioception) | features (SAC: the
    actor's pooled backbone features, detached; DSRL: the frozen VLA's noise-policy input)"""
    critics: int = 2
    """critics in the LayerNorm ensemble (RLPD uses 10)"""
    target_subset: int = 2
    """target = min over a random subset of this many target critics"""
    actor_reduce: str = "mean"
    """how the actor reduces the ensemble: mean (RLPD) | min (SAC)"""
    utd: float = 1.0
    """update-to-data ratio: gradient steps per new online transition (decision)"""
    batch_size: int = 256
    """transitions per gradient step"""
    capacity: int = 100_000
    """online replay capacity in transitions (oldest overwritten)"""
    gamma: float = 0.99
    """discount per decision (one action chunk)"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    critic_lr: float = 3e-4
    """critic learning rate (Adam)"""
    alpha_lr: float = 3e-4
    """entropy-temperature learning rate (Adam on log alpha)"""
    init_alpha: float = 0.01
    """initial entropy temperature alpha (small: sparse/shaped task rewards are O(1) per episode)"""
    target_entropy: float | None = None
    """entropy target (None = -C*A, the chunk's dims)"""
    hidden: int = 256
    """critic hidden width (2 hidden layers)"""
    actor_every: int = 1
    """critic steps per actor and alpha step"""
    critic_warmup: int = 0
    """first iterations that train the critics only"""
    grad_clip: float = 10.0
    """max gradient norm of the actor and critic steps"""
    group_size: int = 1
    """rollouts per initial state (1: no grouping)"""
    temperature: float = 1.0
    """sampling temperature (scales the std; DSRL's noise policy ignores it)"""
    replay_on_device: bool = False
    """keep the replay buffers in the policy device's memory (a GPU's); default host memory, each sampled batch
    copied over (``replay/bytes_per_transition`` in the metrics says what a transition costs)"""


@dataclass
class SACConfig(SoftACConfig):
    """SAC / RLPD on the tiny VLA's Gaussian head; the actor steps with the loop's optimizer (``--lr``)."""

    demos: str | None = None
    """demo directory (`vlaforge collect`) kept in replay: every batch half demos, half online (RLPD); None = no demos"""


# -- networks ---------------------------------------------------------------------------------------

class EnsembleLinear(nn.Module):
    """E independent linear layers applied at once: x (E, B, I) -> (E, B, O); each member initialised like
    ``nn.Linear`` (uniform ±1/sqrt(I))."""

    def __init__(self, ensemble: int, inp: int, out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(inp)
        self.weight = nn.Parameter(torch.empty(ensemble, inp, out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(ensemble, 1, out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleQ(nn.Module):
    """E critics Q_e(x, a): [x, a] -> (Linear, LayerNorm, ReLU) × 2 -> Linear(1), members independent."""

    def __init__(self, in_dim: int, action_dim: int, ensemble: int, hidden: int = 256):
        super().__init__()
        self.ensemble, self.in_dim, self.action_dim = ensemble, in_dim, action_dim
        self.l1 = EnsembleLinear(ensemble, in_dim + action_dim, hidden)
        self.l2 = EnsembleLinear(ensemble, hidden, hidden)
        self.l3 = EnsembleLinear(ensemble, hidden, 1)
        self.n1 = nn.LayerNorm(hidden)  # normalises each member's features; affine shared across members
        self.n2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """x (B, in_dim), a (B, action_dim) -> Q (E, B)."""
        h = torch.cat([x, a], -1).unsqueeze(0).expand(self.ensemble, -1, -1)
        h = torch.relu(self.n1(self.l1(h)))
        h = torch.relu(self.n2(self.l2(h)))
        return self.l3(h)[..., 0]


# -- the transitions of a rollout -------------------------------------------------------------------

@dataclass
class TransitionBatch:
    """A rollout's transitions (s, a, r, d, s'): per-row tensors in ``fields`` plus the instructions. Images
    stay in ``frames`` (the rollout's (T·N, V, H, W, 3), a view), indexed by ``fields["frame"]`` and
    ``fields["next_frame"]``, so policies that never read them never copy them."""

    fields: dict[str, torch.Tensor]
    instructions: list[str]
    frames: torch.Tensor

    def __len__(self) -> int:
        return int(self.fields["reward"].shape[0])

    def index(self, idx: torch.Tensor) -> TransitionBatch:
        return TransitionBatch({k: v[idx] for k, v in self.fields.items()}, [self.instructions[int(i)] for i in idx],
                               self.frames)

    def images(self, prefix: str = "") -> torch.Tensor:
        return self.frames[self.fields[prefix + "frame"]]


def transitions(rollout: Rollout, taken: tuple[str, ...] = ()) -> tuple[TransitionBatch, dict]:
    """Every alive step of the valid episodes with its next decision's observation as s'; a step truncated at
    the rollout's last row (no stored s') is dropped. ``taken`` names ``rollout.taken`` entries to keep."""
    T = rollout.num_steps
    has_next = torch.zeros_like(rollout.alive)
    has_next[:-1] = True
    keep = rollout.alive & rollout.valid.unsqueeze(0) & (rollout.terminated | has_next)
    t, n = torch.nonzero(keep, as_tuple=True)
    t1 = (t + 1).clamp_max(T - 1)
    sim = rollout.sim_state
    N = rollout.num_episodes
    f = {"frame": t * N + n, "next_frame": t1 * N + n,
         "state": rollout.obs_state[t, n].float(), "next_state": rollout.obs_state[t1, n].float(),
         "actions": rollout.actions[t, n].float(), "reward": rollout.reward[t, n].float(),
         "done": rollout.terminated[t, n].float(), "task": rollout.task_id[n]}
    if sim is not None and sim.shape[-1] > 0:
        f["sim"], f["next_sim"] = sim[t, n].float(), sim[t1, n].float()
    for k in taken:
        f[k] = rollout.taken[k][t, n]
    dropped = int((rollout.alive & rollout.valid.unsqueeze(0)).sum()) - len(t)
    frames = rollout.obs_images.flatten(0, 1)
    return TransitionBatch(f, [rollout.instructions[int(i)] for i in n], frames), {"replay/dropped_truncated": dropped}


def prepare(rollout: Rollout, cfg: SACConfig, hooks: Hooks) -> tuple[TransitionBatch, dict]:
    return transitions(rollout)


# -- state ------------------------------------------------------------------------------------------

class SoftACState(AlgoState):
    """What SAC and DSRL share: the critic ensemble and its target, log α, their optimizers, the online and
    demo buffers and the instruction table. The critics are built on the first batch (their input width
    depends on the suite's sim_state), so ``load_state_dict`` builds them from the saved widths."""

    def __init__(self, cfg, action_dim: int, device: torch.device | None = None):
        if cfg.critic not in CRITIC_INPUTS:
            raise UsageError(f"--{self.flag}.critic '{cfg.critic}' is unknown; choose one of {', '.join(CRITIC_INPUTS)}")
        if not 1 <= cfg.target_subset <= cfg.critics:
            raise UsageError(f"--{self.flag}.target-subset must be in [1, --{self.flag}.critics={cfg.critics}]; "
                             f"got {cfg.target_subset}")
        if cfg.utd <= 0 or cfg.batch_size < 2 or cfg.capacity < 1 or cfg.actor_every < 1:
            raise UsageError(f"--{self.flag}.utd must be > 0, --{self.flag}.batch-size >= 2, --{self.flag}.capacity "
                             f">= 1 and --{self.flag}.actor-every >= 1")
        self.cfg, self.action_dim, self.device = cfg, action_dim, device or torch.device("cpu")
        self.storage = self.device if cfg.replay_on_device else torch.device("cpu")
        self.target_entropy = -float(action_dim) if cfg.target_entropy is None else float(cfg.target_entropy)
        self.q: EnsembleQ | None = None
        self.q_target: EnsembleQ | None = None
        self.q_opt = None
        self.log_alpha = torch.tensor(math.log(cfg.init_alpha), device=self.device, requires_grad=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr)
        self.online = ReplayBuffer(cfg.capacity, self.storage)
        self.demos: ReplayBuffer | None = None
        self.instructions: list[str] = []
        self.grad_steps = 0

    flag = "sac"

    def build_critics(self, in_dim: int) -> None:
        self.q = EnsembleQ(in_dim, self.action_dim, self.cfg.critics, self.cfg.hidden).to(self.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=self.cfg.critic_lr)

    def instruction_ids(self, instructions: list[str]) -> torch.Tensor:
        ids = []
        for s in instructions:
            if s not in self.instructions:
                self.instructions.append(s)
            ids.append(self.instructions.index(s))
        return torch.tensor(ids, dtype=torch.int64)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.detach().exp()

    def state_dict(self):
        return flatten({
            "in_dim": None if self.q is None else self.q.in_dim,
            "q": None if self.q is None else self.q.state_dict(),
            "q_target": None if self.q is None else self.q_target.state_dict(),
            "q_opt": None if self.q is None else self.q_opt.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(), "alpha_opt": self.alpha_opt.state_dict(),
            "online": self.online.state_dict(), "demos": None if self.demos is None else self.demos.state_dict(),
            "instructions": list(self.instructions), "grad_steps": self.grad_steps, "extra": self.extra_state(),
        })

    def load_state_dict(self, tensors, meta) -> None:
        d = unflatten(tensors, meta)
        if d["in_dim"] is not None:
            self.build_critics(int(d["in_dim"]))
            self.q.load_state_dict(d["q"])
            self.q_target.load_state_dict(d["q_target"])
            self.q_opt.load_state_dict(d["q_opt"])
        with torch.no_grad():
            self.log_alpha.copy_(d["log_alpha"])
        self.alpha_opt.load_state_dict(d["alpha_opt"])
        self.online.load_state_dict(d["online"])
        if d["demos"] is not None:
            self.demos = ReplayBuffer(1, self.storage)
            self.demos.load_state_dict(d["demos"])
        self.instructions = list(d["instructions"])
        self.grad_steps = int(d["grad_steps"])
        self.load_extra_state(d["extra"])

    def extra_state(self):
        return None

    def load_extra_state(self, d) -> None:
        pass

    # -- one gradient step of critics, actor and alpha -----------------------------------------------
    def critic_step(self, x, a, reward, done, next_x, next_a, next_logp, gen, sync) -> dict:
        with torch.no_grad():
            y = critic_target(reward, done, self.q_target(next_x, next_a), next_logp, self.alpha, self.cfg.gamma,
                              random_subset(self.cfg.critics, self.cfg.target_subset, gen))
        loss, m = critic_loss(self.q(x, a), y)
        gn = gradient_step(loss, list(self.q.parameters()), self.q_opt, self.cfg.grad_clip, sync)
        if gn is None:  # non-finite: no step, and no target update
            return None
        m["critic_grad_norm"] = gn
        polyak(self.q_target.parameters(), self.q.parameters(), self.cfg.tau)
        return m

    def actor_alpha_step(self, x, a, logp, actor_params, actor_opt, sync) -> dict:
        """``a`` (B, D) reparameterised from the actor, ``logp`` (B,) its log-prob."""
        self.q.requires_grad_(False)  # the actor's loss moves the action only, not the critics
        loss, m = actor_loss(logp, self.q(x, a), self.alpha, self.cfg.actor_reduce)
        self.q.requires_grad_(True)
        gn = gradient_step(loss, actor_params, actor_opt, self.cfg.grad_clip, sync)
        if gn is None:
            return None
        m["actor_grad_norm"] = gn
        aloss, am = temperature_loss(self.log_alpha, logp, self.target_entropy)
        if gradient_step(aloss, [self.log_alpha], self.alpha_opt, float("inf"), sync) is None:
            return None
        return {**m, **am}


def tiny_gaussian(policy) -> None:
    if not isinstance(policy, TinyVLA) or policy.cfg.head != "gaussian":
        raise UsageError("--algo sac trains the tiny VLA's Gaussian head (a reparameterised tanh-Gaussian); "
                         "use --policy tiny --head gaussian or --init a Gaussian-head checkpoint")


class SACState(SoftACState):
    """SAC's state; the buffers hold images only for policies that read them."""

    def __init__(self, policy, cfg: SACConfig):
        tiny_gaussian(policy)
        super().__init__(cfg, policy.chunk_size * policy.action_dim, module_device(policy))
        policy.head.squash = True  # the loop collects from the tanh-Gaussian the actor optimises
        self.images = policy.reads_images
        if cfg.demos:
            self.demos = demo_buffer(policy, cfg, self)


def demo_buffer(policy, cfg: SACConfig, state: SoftACState) -> ReplayBuffer:
    """Transitions of every frame of a demo directory (module docstring), in the buffer's field layout."""
    d = load_demos(cfg.demos)
    C, S = policy.chunk_size, policy.cfg.state_dim
    if d.state.shape[1] != S:
        raise UsageError(f"--sac.demos '{cfg.demos}': demo states have {d.state.shape[1]} dims but the policy reads "
                         f"{S}; collect the demos with the same suite options (e.g. --env-kwargs privileged 1)")
    if d.actions.shape[1] != policy.action_dim:
        raise UsageError(f"--sac.demos '{cfg.demos}': demo actions have {d.actions.shape[1]} dims, the policy "
                         f"{policy.action_dim}")
    if cfg.critic == "privileged" and d.sim_state is None:
        raise UsageError(f"--sac.demos '{cfg.demos}' recorded no sim_state, which --sac.critic privileged reads; "
                         "re-collect them with this vlaforge")
    idx = np.arange(len(d))
    chunk, _ = d.chunk_targets(idx, C)  # (M, C, A), past the end: the last action repeated
    nxt = idx + C
    done = nxt >= d.episode_end
    nxt = np.minimum(nxt, d.episode_end - 1)
    f = {"frame": torch.from_numpy(idx), "next_frame": torch.from_numpy(nxt),
         "state": torch.from_numpy(d.state), "next_state": torch.from_numpy(d.state[nxt]),
         "actions": torch.from_numpy(chunk), "reward": torch.from_numpy(done.astype(np.float32)),
         "done": torch.from_numpy(done.astype(np.float32)), "task": torch.zeros(len(d), dtype=torch.int64)}
    if d.sim_state is not None:
        f["sim"], f["next_sim"] = torch.from_numpy(d.sim_state), torch.from_numpy(d.sim_state[nxt])
    fields = buffer_fields(policy, TransitionBatch(f, list(d.instructions), torch.from_numpy(d.images)), state)
    buf = ReplayBuffer(len(d), state.storage)
    buf.add(fields)
    return buf


def buffer_fields(policy, batch: TransitionBatch, state: SoftACState) -> dict[str, torch.Tensor]:
    """What SAC stores per transition: normalised action chunk (B, C·A), reward, done, proprio pair, the
    sim_state pair for a privileged critic, images pair for image policies, the instruction index."""
    f = batch.fields
    a = normalize(f["actions"].to(policy.act_lo.device), policy.act_lo, policy.act_hi).flatten(1)
    out = {"action": a, "reward": f["reward"], "done": f["done"], "state": f["state"],
           "next_state": f["next_state"], "instr": state.instruction_ids(batch.instructions)}
    if state.cfg.critic == "privileged":
        if "sim" not in f:
            raise UsageError(f"--{state.flag}.critic privileged needs the suite's sim_state; this suite has none")
        out["sim"], out["next_sim"] = f["sim"], f["next_sim"]
    if state.images:
        out["images"], out["next_images"] = batch.images(), batch.images("next_")
    return out


def obs_of(mb: dict, state: SoftACState, prefix: str = "") -> Observation:
    """The actor's observation of sampled rows (never ``sim_state``)."""
    st = mb[prefix + "state"]
    images = mb[prefix + "images"] if state.images else torch.zeros(st.shape[0], 0, dtype=torch.uint8, device=st.device)
    return Observation(images, st, [state.instructions[int(i)] for i in mb["instr"]],
                       torch.zeros(len(st), dtype=torch.int64, device=st.device))


def critic_input(policy, mb: dict, state: SoftACState, prefix: str = "") -> torch.Tensor:
    """x of Q(x, a) for sampled rows (``prefix`` "next_" for s'), never carrying a gradient into the policy."""
    mode = state.cfg.critic
    if mode == "state":
        return mb[prefix + "state"]
    if mode == "privileged":
        return torch.cat([mb[prefix + "sim"], mb[prefix + "state"]], -1)
    with torch.no_grad():
        return policy.features(obs_of(mb, state, prefix)).mean(1)


def init_state(policy, cfg: SACConfig, spec=None) -> SACState:
    return SACState(policy, cfg)


def run_updates(state: SoftACState, steps: int, warm: bool, gen, sync, x_of, sample, actor_params, actor_opt) -> dict:
    """``steps`` gradient steps on symmetric demo/online batches: the critics every step, the actor and α every
    ``actor_every``-th (none while ``warm``). ``x_of(mb, prefix)`` is the critic input of s or s' ("next_");
    ``sample(mb, prefix)`` draws a reparameterised action (B, D) and its log-prob (B,) from the actor at s or s'.
    Returns the steps' mean metrics."""
    cfg = state.cfg

    def step(i: int, mb: dict) -> dict | None:
        x, next_x = x_of(mb, ""), x_of(mb, "next_")
        with torch.no_grad():
            na, nlp = sample(mb, "next_")
        m = state.critic_step(x, mb["action"], mb["reward"], mb["done"], next_x, na, nlp, gen, sync)
        if m is not None and not warm and i % cfg.actor_every == 0:
            a, lp = sample(mb, "")
            am = state.actor_alpha_step(x, a, lp, actor_params, actor_opt, sync)
            m = None if am is None else {**m, **am}
        state.grad_steps += 1
        return m

    out = replay_updates(steps, lambda: to_device(sample_symmetric(state.demos, state.online, cfg.batch_size, gen),
                                                  state.device), step)
    out.update({"train/critic_warmup": float(warm), "replay/online": len(state.online),
                "replay/demos": 0 if state.demos is None else len(state.demos),
                "replay/bytes_per_transition": state.online.bytes_per_transition})
    return out


def update(policy, optimizer, batch: TransitionBatch, cfg: SACConfig, iteration: int, gen=None, sync=LOCAL,
           state: SACState | None = None) -> dict:
    if state is None:
        raise ValueError("SAC keeps a replay buffer: call update with the state from init_state")
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    state.online.add(buffer_fields(policy, batch, state))
    if state.q is None:
        state.build_critics(critic_input(policy, state.online.sample(2, gen), state).shape[-1])
    policy.train()

    def sample(mb, prefix):
        a, lp = policy.head.rsample(policy.features(obs_of(mb, state, prefix)), cfg.temperature, gen)
        return a.flatten(1), lp.flatten(1).sum(-1)

    return run_updates(state, max(1, int(round(cfg.utd * len(batch)))), iteration < cfg.critic_warmup, gen, sync,
                       lambda mb, prefix: critic_input(policy, mb, state, prefix), sample,
                       [p for p in policy.parameters() if p.requires_grad], optimizer)
