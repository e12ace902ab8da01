"""SimpleVLA-RL: GRPO with dynamic sampling, clip-higher and a raised sampling temperature.

The paper's recipe on top of veRL: K rollouts per initial state, group-normalised binary
success advantages, asymmetric clipping (0.2 low / 0.28 high) so that unlikely good actions
can grow, no KL and no entropy term, temperature 1.6 in rollout and scoring alike, and
*dynamic sampling*: only groups whose success rate lies in [0.1, 0.9] are trained on, with
new contexts drawn until the batch is full. Here that is ``algo=grpo`` with
``keep_band=(0.1, 0.9)`` plus the loop's dynamic rejection (which refills the batch).
Differences from the paper: no veRL; the policy is whatever ``--init`` holds (the tiny VLA by
default) rather than OpenVLA-OFT.

    vlaforge train --recipe simplevla-rl --suite metaworld --tasks reach-v3 --init runs/sft
"""

from __future__ import annotations

from vlaforge.train.loop import train

NAME = "simplevla-rl"
SUMMARY = "GRPO, dynamic sampling of groups with success in [0.1, 0.9], clip-higher, temperature 1.6"


def preset(cfg) -> None:
    cfg.algo = "grpo"
    cfg.grpo.keep_band = (0.1, 0.9)
    cfg.grpo.clip_low, cfg.grpo.clip_high = 0.2, 0.28
    cfg.grpo.temperature = 1.6
    cfg.dynamic_rejection = True
    cfg.fill_fraction = 1.0


def check(cfg, given: frozenset[str] = frozenset()) -> None:
    """Nothing beyond ``TrainConfig.check``: the recipe only presets the loop's switches."""


def run(cfg) -> dict:

    return train(cfg)
