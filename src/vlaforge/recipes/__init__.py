"""The survey's methods as named recipes: ``vlaforge train --recipe NAME``.

A recipe is a preset of ``TrainConfig`` (which algorithm, which of the loop's switches, which
defaults) plus, where the method needs it, hooks into the loop (GRAPE's trajectory scoring,
VLA-RL's process reward) or a driver of its own (iRe-VLA's alternation of RL and supervised
stages). Flags given on the command line override the preset.

    vlaforge train --recipe ript-vla --suite metaworld --tasks reach-v3 --init runs/sft
    vlaforge train --recipe ire-vla --help     # every field, with the recipe's defaults
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from vlaforge.errors import UsageError
from vlaforge.train.loop import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    preset: Callable  # (TrainConfig) -> None, sets the recipe's defaults in place
    run: Callable  # (TrainConfig) -> final metrics dict
    check: Callable  # (TrainConfig, given fields) -> None: the recipe's options and needs, one-line UsageError


# name -> module; modules are imported on use (their options live in ``train.recipe_configs``, held by TrainConfig)
RECIPES: dict[str, str] = {"ire-vla": "ire_vla", "grape": "grape", "ript-vla": "ript_vla", "vla-rl": "vla_rl",
                           "simplevla-rl": "simplevla_rl"}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UsageError(f"--recipe: unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    m = importlib.import_module(f"vlaforge.recipes.{RECIPES[name]}")
    return Recipe(m.NAME, m.SUMMARY, m.preset, m.run, m.check)


def recipe_defaults(name: str, base=None):
    """A ``TrainConfig`` holding the recipe's preset (the CLI parses user flags on top of it)."""
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    cfg.recipe = name
    get_recipe(name).preset(cfg)
    return cfg


def check_recipe(cfg, given: frozenset[str] = frozenset()) -> None:
    """The recipe's own checks (``given``: the fields named on the command line); the CLI runs them before it takes
    the run folder's lock, ``run_recipe`` again before any work."""
    get_recipe(cfg.recipe).check(cfg, frozenset(given))


def run_recipe(cfg) -> dict:
    """Run ``cfg.recipe`` (its checks first; ``train()`` checks the rest of ``cfg``)."""
    check_recipe(cfg)
    return get_recipe(cfg.recipe).run(cfg)
