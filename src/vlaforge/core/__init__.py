"""Pure torch maths shared by every algorithm: returns, advantages, log-prob levels, losses.

No configs, no modules, no state: tensors in, ``(value, metrics)`` out. Shapes and masking
conventions are documented at the top of ``advantages.py`` and ``losses.py``.
"""

from vlaforge.core.advantages import (
    LOG_PROB_LEVELS,
    broadcast_to_steps,
    gae,
    group_centered_advantages,
    group_normalized_advantages,
    group_success_rate,
    leave_one_out_advantages,
    reduce_log_prob,
    reduce_log_prob_action,
    reduce_log_prob_chunk,
    reduce_log_prob_token,
    uniform_groups,
)
from vlaforge.core.losses import (
    clip_higher_bounds,
    entropy_bonus,
    loop_bounds,
    masked_mean,
    mse_loss,
    ppo_clip_loss,
    symmetric_bounds,
    token_cross_entropy,
    tpo_loss,
    value_loss,
)

__all__ = [
    "LOG_PROB_LEVELS",
    "broadcast_to_steps",
    "gae",
    "group_centered_advantages",
    "group_normalized_advantages",
    "group_success_rate",
    "leave_one_out_advantages",
    "reduce_log_prob",
    "reduce_log_prob_action",
    "reduce_log_prob_chunk",
    "reduce_log_prob_token",
    "uniform_groups",
    "clip_higher_bounds",
    "entropy_bonus",
    "loop_bounds",
    "masked_mean",
    "mse_loss",
    "ppo_clip_loss",
    "symmetric_bounds",
    "token_cross_entropy",
    "tpo_loss",
    "value_loss",
]
