"""GRAPE: trajectory-wise preference optimisation ranked by self-likelihood, staged costs and success.

Each iteration rolls every sampled initial state out K times, scores each trajectory with
``R = λ1·R_self + λ2·R_ext + λ3·success`` (``rewards/grape.py``: the policy's own floored
log-likelihood, the staged cost term from a task decomposer, the success flag), pairs the top-m
successes with the bottom-m failures of the same initial state (``algos/tpo.py``) and takes TPO
steps against the policy that collected them (frozen reference: its log-probs are stored in the
rollout); the next iteration re-collects with the updated policy (GRAPE's ~3 collect → train
rounds are ``--iterations``). Logged per iteration: the reward parts and GRAPE's secondary
objectives (end-effector path length, a contact proxy) under ``grape/``.

Decomposers: ``rule`` (stages hand-written from each suite's simulator state: PointReach,
Meta-World reach/push/pick-place/drawer/button, Kitchen) or ``lm`` (any local transformers
text model prompted for stages, parsed defensively, falling back to the rule decomposer).
``--grape.cost-weights path=2,collision=0`` changes which behaviour is preferred (a longer path
or more contacts lower R_ext). Differences from the paper: stages use a fixed vocabulary of
point-to-point costs instead of VLM-written Python, so every answer can be checked before use;
pairs are whole trajectories (its release aligned fixed windows by index).

    vlaforge train --recipe grape --suite metaworld --tasks reach-v3 --init runs/sft --grape.cost-weights path=1
"""

from __future__ import annotations

import math

from vlaforge.checks import check_in_dir, need
from vlaforge.envs import env_kwargs, env_tasks, suite_spec
from vlaforge.errors import UsageError
from vlaforge.hooks import Hooks
from vlaforge.policies.hf.model import remote_code_files
from vlaforge.rewards.grape import GrapeScorer, RuleDecomposer
from vlaforge.rewards.lm_decomposer import LMDecomposer
from vlaforge.train.loop import train

NAME = "grape"
SUMMARY = "TPO on success-vs-failure pairs ranked by λ1·R_self + λ2·R_ext (staged costs) + λ3·success"


def preset(cfg) -> None:
    cfg.algo = "tpo"
    cfg.tpo.group_size = 8
    cfg.tpo.beta = 0.1


def parse_weights(text: str) -> dict[str, float]:
    """'path=2,collision=0' -> {'path': 2.0, 'collision': 0.0}; a one-line error on anything else."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        try:
            if not sep or key.strip() not in ("path", "collision"):
                raise ValueError
            out[key.strip()] = float(val)
        except ValueError:
            raise ValueError(f"bad --grape.cost-weights entry '{part}': use name=value with names path, collision, "
                             "e.g. 'path=2,collision=0'") from None
        if not math.isfinite(out[key.strip()]):  # a NaN/inf weight turns every trajectory's score into NaN/inf
            raise ValueError(f"bad --grape.cost-weights entry '{part}': the weight must be a finite number, "
                             "e.g. 'path=2,collision=0'")
    return out


def make_decomposer(cfg, spec):
    g = cfg.grape
    weights = {"path": 0.0, "collision": 0.5, **parse_weights(g.cost_weights)}
    if not spec.sim_state_names:
        raise ValueError(f"suite '{cfg.suite}' exposes no simulator state, which GRAPE's staged costs need")
    if g.decomposer == "rule":
        return RuleDecomposer(spec.sim_state_names, weights)
    if g.decomposer == "lm":
        if not g.lm_path:
            raise ValueError("--grape.decomposer lm needs --grape.lm-path DIR (a local transformers text model)")
        return LMDecomposer(model_path=g.lm_path, names=spec.sim_state_names, weights=weights)
    raise ValueError(f"unknown --grape.decomposer '{g.decomposer}'; choose rule or lm")


class GrapeHooks(Hooks):
    """``train()`` hooks: TPO's ranking score and the per-iteration GRAPE metrics."""

    def __init__(self, scorer):
        self.scorer = scorer

    def score(self, rollout):
        return self.scorer.score(rollout)

    def after_iteration(self, it, policy, rollout) -> dict:
        return self.scorer.metrics(rollout)


def hooks_for(cfg):

    spec = suite_spec(cfg.suite, env_tasks(cfg.suite, cfg.tasks), **env_kwargs(cfg.env_kwargs, cfg.max_steps))
    g = cfg.grape
    scorer = GrapeScorer.for_spec(make_decomposer(cfg, spec), spec,
                                  lambdas=(g.lambda_self, g.lambda_ext, g.lambda_success))
    return GrapeHooks(scorer)


def check(cfg, given: frozenset[str] = frozenset()) -> None:
    """``--grape.*``, TPO, and a suite with the simulator state the staged costs read; before any work."""
    need(cfg.algo == "tpo", f"the grape recipe trains with TPO; drop --algo {cfg.algo}")
    need(cfg.grape.decomposer in ("rule", "lm"), f"--grape.decomposer '{cfg.grape.decomposer}' is unknown; "
                                                 "choose rule or lm")
    need(cfg.grape.decomposer != "lm" or bool(cfg.grape.lm_path),
         "--grape.decomposer lm needs --grape.lm-path DIR (a local transformers text model)")
    try:
        parse_weights(cfg.grape.cost_weights)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if cfg.grape.lm_path:
        d = check_in_dir("--grape.lm-path", cfg.grape.lm_path, "a local transformers text model directory")
        need((d / "config.json").is_file(), f"--grape.lm-path '{cfg.grape.lm_path}' holds no config.json; pass a "
                                            "directory written by save_pretrained (model and tokenizer)")
        files = remote_code_files(d)
        need(not files, f"--grape.lm-path: '{files[0] if files else ''}' asks to run the model's own Python code "
                        "(auto_map); vlaforge never runs it for --grape.lm-path: pass a model transformers knows")
    spec = suite_spec(cfg.suite, env_tasks(cfg.suite, cfg.tasks), image_size=cfg.image_size,
                      **env_kwargs(cfg.env_kwargs, cfg.max_steps))
    need(bool(spec.sim_state_names), f"--suite {cfg.suite} exposes no simulator state, which GRAPE's staged "
                                     "costs need; use a suite with sim_state (pointreach, metaworld, kitchen, ...)")


def run(cfg) -> dict:

    if cfg.algo != "tpo":
        raise ValueError(f"the grape recipe trains with TPO; drop --algo {cfg.algo}")
    return train(cfg, hooks=hooks_for(cfg))
