"""Privileged-teacher distillation by DAgger: the pixel policy acts, a teacher that reads the simulator's
state labels every frame it visited, and the pixel policy is fitted to those labels.

This is how a vision policy learns *where things are* from many more layouts than ≤ 10 demos show: the
teacher (a small state-backbone policy, typically trained by RL with the suite's privileged state — the
object and goal positions — in its observation, e.g. ``vlaforge train --backbone state --env-kwargs
privileged 1 render 0``) is right on every layout, and DAgger (Ross, Gordon & Bagnell 2011) labels the
states the *student* reaches, so its own mistakes are corrected ("learning by cheating", Chen et al. 2019;
the privileged-teacher step of RMA and of many sim-to-real pipelines). The student never reads the
privileged state: only the labels come from it, at training time, as with the asymmetric critic.

Per iteration: the loop rolls the student out (its own actions, at the sampling temperature); ``prepare``
keeps every executed decision frame; ``update`` asks the teacher for its deterministic action chunk at each
frame (from ``sim_state[:, teacher_state]``), adds (frame, label) to a bounded aggregate buffer (the
algorithm's state, checkpointed), and takes ``steps`` behaviour-cloning steps on batches drawn from the
whole aggregate with the policy's own ``sft_loss`` (for a student SFT'd with ``--aux``, that loss includes its
perception readout's, fitted to the frames' recorded object/goal positions: labels for localisation on every
layout the student visits). Differences from the papers: no β-mixing of teacher
actions into the rollouts (the loop's collector runs the student only; β = 0 from the first iteration,
which works when the student starts from SFT on demos); the loop's learning rate applies (DAgger's
supervised steps want an SFT-like rate, e.g. ``--lr 3e-4``, not RL's 1e-4).

    vlaforge train --algo distill --suite metaworld --tasks reach-v3 --init runs/sft --lr 3e-4 \
        --distill.teacher runs/teacher/final --distill.teacher-state 0,1,2,3,4,5,6,11,12,13,36,37,38
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlaforge.algos.common import LOCAL, StepBatch, flatten_steps, gradient_step, replay_updates
from vlaforge.algos.state import AlgoState, flatten, unflatten
from vlaforge.checks import need
from vlaforge.data.replay import ReplayBuffer
from vlaforge.device import module_device, to_device
from vlaforge.errors import UsageError
from vlaforge.hooks import Hooks
from vlaforge.types import Observation, Rollout


@dataclass
class DistillConfig:
    teacher: str = ""
    """the teacher's policy checkpoint: a policy whose state input is the ``teacher_state`` entries of sim_state"""
    teacher_state: str = ""
    """comma-separated indices into the suite's sim_state that form the teacher's state, in its order (Meta-World's
    privileged state: 0,1,2,3,4,5,6,11,12,13,36,37,38 = ee xyz, gripper, object 0, object 1, goal)"""
    steps: int = 300
    """behaviour-cloning steps per iteration on the aggregate (reach-v3 from pixels, docs/benchmarks.md: 100 gained at one
    training seed of three, 300 at two of three; 300 is the setting measured on five tasks)"""
    batch_size: int = 64
    """frames per step"""
    capacity: int = 10_000
    """frames kept in the aggregate (oldest dropped); 64x64 RGB frames take ~12.3 kB each"""
    grad_clip: float = 1.0
    """max gradient norm"""
    group_size: int = 1
    """rollouts per initial state (1: every episode its own layout)"""
    temperature: float = 1.0
    """student sampling temperature during rollouts"""

    def state_index(self) -> list[int]:
        try:
            idx = [int(x) for x in self.teacher_state.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--distill.teacher-state must be comma-separated integers; got '{self.teacher_state}'") from None
        if not idx:
            raise ValueError("--distill.teacher-state is required: the sim_state indices the teacher reads")
        return idx


def check_teacher(teacher: dict, student: dict, name: str = "the teacher") -> None:
    """Refuse (``UsageError``, one line) to distil a teacher whose success rate is below the student's, both
    ``{"successes", "episodes"}`` on the same evaluation seeds: DAgger would pull the student toward a policy that
    does worse than it already does (a PPO teacher that collapsed from its SFT start, e.g.)."""
    rate = lambda c: c["successes"] / max(c["episodes"], 1)  # noqa: E731
    if rate(teacher) < rate(student):
        raise UsageError(f"{name} succeeds in {teacher['successes']}/{teacher['episodes']} evaluation episodes, fewer "
                         f"than the student it would teach ({student['successes']}/{student['episodes']} on the same "
                         "seeds): not distilling a worse teacher; train it longer or start it from demos")


def check_run(cfg, init: dict | None) -> None:
    """The registry's ``check_run`` (``vlaforge train --algo distill``, before any work): a teacher checkpoint whose
    state is as long as the ``--distill.teacher-state`` indices. ``cfg``: the TrainConfig; ``init``: unused."""
    from vlaforge.policies import read_checked_config

    d = cfg.algo_cfg
    need(bool(d.teacher), "--distill.teacher is required: a policy checkpoint that reads the privileged state")
    try:
        index = [int(x) for x in d.teacher_state.split(",") if x.strip()]
    except ValueError:
        index = []
    need(bool(index) and min(index) >= 0, f"--distill.teacher-state must be comma-separated sim_state indices >= 0; "
                                          f"got '{d.teacher_state}'")
    teacher = read_checked_config(d.teacher, False, "--distill.teacher", None)["policy"]
    need(teacher.get("state_dim") == len(index),
         f"--distill.teacher-state names {len(index)} entries but the teacher '{d.teacher}' reads "
         f"{teacher.get('state_dim')} state dims")


class DistillState(AlgoState):
    """The teacher (reloaded from its checkpoint, never saved here) and the aggregate of labelled frames."""

    def __init__(self, policy, cfg: DistillConfig):
        from vlaforge.policies import load_policy

        if not cfg.teacher:
            raise ValueError("--distill.teacher is required: a policy checkpoint that reads the privileged state")
        self.index = cfg.state_index()
        self.device = module_device(policy)
        self.teacher = load_policy(cfg.teacher).to(self.device).eval()
        if self.teacher.cfg.state_dim != len(self.index):
            raise ValueError(f"the teacher '{cfg.teacher}' reads {self.teacher.cfg.state_dim} state dims but "
                             f"--distill.teacher-state names {len(self.index)}")
        if self.teacher.chunk_size < policy.chunk_size or self.teacher.cfg.action_dim != policy.action_dim:
            raise ValueError(f"the teacher acts in chunks of {self.teacher.chunk_size}x{self.teacher.cfg.action_dim}; "
                             f"the student needs at least {policy.chunk_size}x{policy.action_dim}")
        self.frames = ReplayBuffer(cfg.capacity)
        self.instructions: dict[int, str] = {}  # task id -> instruction (strings stay out of the tensors)

    @torch.no_grad()
    def label(self, batch: StepBatch, chunk: int) -> torch.Tensor:
        """The teacher's deterministic env-space action chunks (B, C, A) at the batch's frames."""
        if batch.sim_state is None:
            raise ValueError("distillation needs the suite's sim_state in the rollouts (this suite has none)")
        s = batch.sim_state[:, self.index]
        blank = torch.zeros((len(s), 1, 1, 1, 3), dtype=torch.uint8, device=s.device)  # the teacher's state backbone ignores images
        obs = Observation(blank, s, batch.instructions, batch.task_ids)
        return self.teacher.act(obs, deterministic=True).actions[:, :chunk]

    def state_dict(self):
        return flatten({"frames": self.frames.state_dict(),
                        "instructions": {str(k): v for k, v in self.instructions.items()}})

    def load_state_dict(self, tensors, meta) -> None:
        d = unflatten(tensors, meta)
        self.frames.load_state_dict(d["frames"])
        self.instructions = {int(k): v for k, v in d["instructions"].items()}


def init_state(policy, cfg: DistillConfig) -> DistillState:
    return DistillState(policy, cfg)


def prepare(rollout: Rollout, cfg: DistillConfig, hooks: Hooks) -> tuple[StepBatch, dict]:
    """Every executed decision frame of valid episodes (advantages unused: zeros)."""
    keep = rollout.alive & rollout.valid.unsqueeze(0)
    return flatten_steps(rollout, keep, torch.zeros_like(rollout.reward)), {}


def update(policy, optimizer, batch: StepBatch, cfg: DistillConfig, iteration: int, gen=None, sync=LOCAL,
           state: DistillState | None = None) -> dict:
    labels = state.label(batch, policy.chunk_size)
    # how far the student's own (sampled) chunks were from the teacher's at the frames it visited
    gap = (batch.actions - labels).abs().mean()
    for t, instr in zip(batch.task_ids.tolist(), batch.instructions):
        state.instructions.setdefault(int(t), instr)
    state.frames.add({"images": batch.images, "state": batch.state, "task_ids": batch.task_ids, "labels": labels,
                      "sim_state": batch.sim_state})
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]

    def step(i: int, mb: dict) -> dict | None:
        # sim_state rides along as a *target* only: a student SFT'd with a perception readout (`vlaforge sft --aux`)
        # keeps fitting it on every frame here (policies' sft_loss adds it), never as an input
        obs = Observation(mb["images"], mb["state"], [state.instructions[int(t)] for t in mb["task_ids"]],
                          mb["task_ids"], mb["sim_state"])
        loss, m = policy.sft_loss(obs, mb["labels"])
        gn = gradient_step(loss, params, optimizer, cfg.grad_clip, sync)
        return None if gn is None else {**m, "loss": loss.detach(), "grad_norm": gn}

    out = replay_updates(cfg.steps, lambda: to_device(state.frames.sample(cfg.batch_size, gen), state.device), step)
    out.update({"train/teacher_gap": float(gap), "train/aggregate_frames": len(state.frames),
                "train/new_frames": len(batch)})
    return out
