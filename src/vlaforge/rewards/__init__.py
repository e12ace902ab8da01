"""Reward models over rollouts: GRAPE's staged costs and self-likelihood, VLA-RL's process reward model.

Public API (see each module's docstring):

- ``simstate``: ``SimLayout`` (named points of a suite's privileged ``sim_state``), ``path_length``,
  ``contact_steps`` / ``contact_proxy`` (GRAPE's secondary objectives).
- ``grape``: ``Stage``, ``Cost``, ``TaskDecomposer``, ``RuleDecomposer``, ``staged_cost``,
  ``external_reward``, ``self_log_likelihood``, ``grape_reward``, ``secondary_metrics``, ``GrapeScorer``.
- ``lm_decomposer``: ``LMDecomposer``, ``parse_stages`` (transformers is imported only when a
  model path is given).
- ``rprm``: ``find_milestones``, ``progress_targets``, ``RPRM``, ``train_rprm``, ``rprm_rewards``,
  ``RPRMShaper`` (train hook), ``evaluate_rprm``, ``save_rprm`` / ``load_rprm``, progress datasets from rollouts or demos.
"""

from vlaforge.rewards.grape import (
    Cost,
    GrapeScorer,
    RuleDecomposer,
    Stage,
    TaskDecomposer,
    external_reward,
    grape_reward,
    secondary_metrics,
    self_log_likelihood,
    staged_cost,
    with_weights,
)
from vlaforge.rewards.lm_decomposer import LMDecomposer, parse_stages
from vlaforge.rewards.rprm import (
    RPRM,
    ProgressData,
    RPRMShaper,
    evaluate_rprm,
    find_milestones,
    load_rprm,
    progress_data_from_demos,
    progress_data_from_rollouts,
    progress_targets,
    rprm_rewards,
    save_rprm,
    train_rprm,
)
from vlaforge.rewards.simstate import SimLayout, contact_proxy, contact_steps, path_length

__all__ = ["RPRM", "RPRMShaper", "Cost", "GrapeScorer", "LMDecomposer", "ProgressData", "RuleDecomposer", "SimLayout", "Stage",
           "TaskDecomposer", "contact_proxy", "contact_steps", "evaluate_rprm", "external_reward", "find_milestones",
           "grape_reward", "load_rprm", "parse_stages", "path_length", "progress_data_from_demos",
           "progress_data_from_rollouts", "progress_targets", "rprm_rewards", "save_rprm", "secondary_metrics",
           "self_log_likelihood", "staged_cost", "train_rprm", "with_weights"]
