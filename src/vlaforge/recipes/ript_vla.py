"""RIPT-VLA: LOOP (leave-one-out advantages + PPO clipping) over contexts with dynamic rejection.

A *context* is one initial simulator state (here: a (task, seed) pair, reset identically);
each is rolled out K=8 times. Groups whose K rewards are all equal carry no signal and are
discarded, and new contexts are drawn until the batch is ``fill_fraction`` (0.8) full —
RIPT-VLA's early stop across workers. Contexts from all training tasks are mixed in every
batch (multi-task sampling). LOOP clips the ratio to ``[1/(1+ε), 1+ε]`` with ε=0.1 and drops
rollouts with |A| < 0.01. Differences from the paper: the ratio is formed per action (an
option, ``--rloo.level``); sampling and scoring share one distribution (its release sampled
from a 5× wider Laplace than it scored).

    vlaforge train --recipe ript-vla --suite metaworld --tasks reach-v3,button-press-topdown-v3 --init runs/sft
"""

from __future__ import annotations

from vlaforge.train.loop import train

NAME = "ript-vla"
SUMMARY = "LOOP (leave-one-out + PPO clip [1/(1+ε), 1+ε]) over K=8 rollouts per context, dynamic rejection"


def preset(cfg) -> None:
    cfg.algo = "rloo"
    cfg.rloo.group_size = 8
    cfg.rloo.clip = 0.1
    cfg.rloo.min_abs_adv = 0.01
    cfg.dynamic_rejection = True
    cfg.fill_fraction = 0.8
    cfg.curriculum = "uniform"


def check(cfg, given: frozenset[str] = frozenset()) -> None:
    """Nothing beyond ``TrainConfig.check``: the recipe only presets the loop's switches."""


def run(cfg) -> dict:

    return train(cfg)
