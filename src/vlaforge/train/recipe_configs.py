"""Settings that only some recipes read (nested in ``TrainConfig`` as ``--ire-vla.*``,
``--grape.*``, ``--vla-rl.*``). They live under ``train/`` because ``TrainConfig`` holds them (one
``--help`` for every flag); the recipes import the training loop, never the reverse."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IReVLAConfig:
    rounds: int = 2
    """RL-stage / SL-stage rounds after the SFT start"""
    rl_iterations: int = 5
    """PPO iterations per RL stage (backbone frozen: only the action head and critic learn)"""
    sl_steps: int = 300
    """supervised steps per SL stage on expert demos ∪ successful RL trajectories"""
    sl_lr: float = 3e-4
    """SL-stage learning rate (whole tiny model; a LoRA adapter on an HF backbone)"""
    demo_fraction: float = 0.5
    """share of each SL batch drawn from expert demos (the rest from kept RL successes); keeps easy
    tasks' many successes from crowding out the demos"""
    demos: str | None = None
    """expert demo directory for the SL stage (default: the SFT start's demos recorded in its config,
    else none: SL on RL successes only)"""
    new_tasks: str | None = None
    """tasks learned by RL only (no demos); trained on in RL stages together with `tasks`"""


@dataclass
class GrapeConfig:
    lambda_self: float = 0.01
    """λ1: weight of R_self, the policy's own trajectory log-likelihood (per-step floor 0.05)"""
    lambda_ext: float = 1.0
    """λ2: weight of R_ext, the staged cost term from the task decomposer"""
    lambda_success: float = 5.0
    """λ3: weight of the success indicator"""
    decomposer: str = "rule"
    """task decomposer: rule (from simulator state) | lm (a local transformers text model)"""
    lm_path: str | None = None
    """local text model directory for the lm decomposer"""
    cost_weights: str = ""
    """override cost weights β_j as name=value pairs, e.g. 'path=2,collision=0' (empty: defaults)"""


@dataclass
class VLARLConfig:
    rprm_weight: float = 0.1
    """weight of the process reward (progress increments) added to sparse success"""
    rprm: str | None = None
    """trained process reward model directory (default: train one from `demos` before RL)"""
    demos: str | None = None
    """demos to train the process reward model on (default: the SFT start's demos)"""
    rprm_steps: int = 400
    """training steps of the process reward model when it is trained here"""
