"""VLA-RL: PPO over binned action tokens with a robotic process reward model and a curriculum.

- Each decision is one dialogue turn (image + instruction in, action tokens out); PPO with a
  critic, GAE and critic warm-up; the ratio is formed per action (``--ppo.level``); sampling
  and scoring both use the softmax over the 256 action bins only, at temperature 1.5.
- **Robotic process reward model** (``rewards/rprm.py``): trained before RL on the SFT
  start's demos (or ``--vla-rl.demos``), labelled with automatically found milestones
  (gripper changes, end-effector pauses); during RL its progress increments
  ``Φ(o_{t+1}) − Φ(o_t)`` are added to the sparse success reward with weight
  ``--vla-rl.rprm-weight`` (0 turns it off). A trained model can be passed with ``--vla-rl.rprm``.
- **Curriculum** over tasks from a window of recent success rates: ``near50`` (the paper's
  ``P(i) ∝ exp((0.5 − |s_i − 0.5|)/τ)``) is the default, ``hard_first`` (its code's
  ``(1 − s_i)^(1/τ)``) the alternative, ``uniform`` the ablation.

Differences from the paper: its release left the RPRM a stub and the curriculum out; both
work here. The RPRM is the tiny vision-language backbone with a progress head, not a
fine-tuned VLM; the curriculum weights tasks, not individual initial states (initial states
are drawn fresh per context).

    vlaforge train --recipe vla-rl --suite metaworld --tasks reach-v3 --init runs/sft_tokens
"""

from __future__ import annotations

from pathlib import Path

from vlaforge.checks import at_least, check_in_dir, finite, need
from vlaforge.data.demo_files import check_demos
from vlaforge.data.demos import load_demos
from vlaforge.envs import env_kwargs, env_tasks, suite_spec
from vlaforge.hooks import NO_HOOKS, Hooks
from vlaforge.policies import read_checked_config, read_config
from vlaforge.rewards.rprm import RPRM, RPRMShaper, load_rprm, progress_data_from_demos, save_rprm, train_rprm
from vlaforge.train.loop import train

NAME = "vla-rl"
SUMMARY = "PPO on action tokens + process reward model (dense progress reward) + success-rate curriculum"


def preset(cfg) -> None:
    cfg.algo = "ppo"
    cfg.head = "tokens"
    cfg.ppo.temperature = 1.5
    cfg.ppo.critic_warmup = 2
    cfg.curriculum = "near50"


def build_rprm(cfg):
    """Load ``--vla-rl.rprm`` or train a process reward model on demos; saved under ``<out>/rprm``."""

    v = cfg.vla_rl
    if v.rprm:
        return load_rprm(v.rprm), {}
    demos = v.demos or (read_config(cfg.init).get("trained_on", {}).get("demos") if cfg.init else None)
    if not demos or not Path(demos).exists():
        raise ValueError("vla-rl needs demos to train its process reward model: pass --vla-rl.demos DIR "
                         "(from `vlaforge collect`) or a trained model with --vla-rl.rprm DIR")
    spec = suite_spec(cfg.suite, env_tasks(cfg.suite, cfg.tasks), **env_kwargs(cfg.env_kwargs, cfg.max_steps))
    model = RPRM.for_spec(spec)
    info = train_rprm(model, progress_data_from_demos(load_demos(demos)), steps=v.rprm_steps, seed=cfg.seed)
    save_rprm(model, Path(cfg.out) / "rprm")
    return model, {"rprm/loss_first": info["loss_first"], "rprm/loss_last": info["loss_last"]}


class ProcessReward(Hooks):
    """The RPRM's progress increments as the loop's ``shape_rewards`` hook."""

    def __init__(self, shaper):
        self.shaper = shaper

    def shape_rewards(self, rollout) -> dict:
        return self.shaper.shape_rewards(rollout)


def check(cfg, given: frozenset[str] = frozenset()) -> None:
    """``--vla-rl.*``, an --init with an action-token head, and the process reward model's source (a trained model
    or demos); before any work."""
    v = cfg.vla_rl
    finite("--vla-rl.rprm-weight", v.rprm_weight)
    at_least("--vla-rl.rprm-steps", v.rprm_steps, 1)
    if cfg.init:
        pol = read_checked_config(cfg.init, cfg.hf.trust_remote_code, "--init", "--policy.trust-remote-code")["policy"]
        need(pol.get("head") == "tokens", "VLA-RL trains a binned action-token head; SFT one with "
                                          "`vlaforge sft --head tokens` and pass it as --init")
    if v.rprm:
        check_in_dir("--vla-rl.rprm", v.rprm, "a process reward model directory written by a vla-rl run (<out>/rprm)")
    elif v.rprm_weight != 0:
        demos = v.demos or (read_checked_config(cfg.init, cfg.hf.trust_remote_code, "--init", "--policy.trust-remote-code").get(
            "trained_on", {}).get("demos") if cfg.init else None)
        need(bool(demos) and Path(demos).exists(),
             "vla-rl needs demos to train its process reward model: pass --vla-rl.demos DIR (from `vlaforge "
             "collect`) or a trained model with --vla-rl.rprm DIR")
        check_demos(demos, "--vla-rl.demos")


def run(cfg) -> dict:

    if cfg.init and read_config(cfg.init)["policy"].get("head") != "tokens":
        raise ValueError("VLA-RL trains a binned action-token head; SFT one with `vlaforge sft --head tokens` "
                         "and pass it as --init")
    hooks = NO_HOOKS
    if cfg.vla_rl.rprm_weight != 0:
        saved = Path(cfg.out) / "rprm"  # a resumed run keeps the model it trained before RL
        model, info = (load_rprm(saved), {}) if cfg.resume and saved.exists() else build_rprm(cfg)
        hooks = ProcessReward(RPRMShaper(model, cfg.vla_rl.rprm_weight))
        if info:
            print("process reward model: " + ", ".join(f"{k}={v:.4f}" for k, v in info.items()), flush=True)
    return train(cfg, hooks=hooks)

