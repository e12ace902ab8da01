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

from vlaforge.train.loop import TrainConfig


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    preset: Callable  # (TrainConfig) -> None, sets the recipe's defaults in place
    run: Callable  # (TrainConfig) -> final metrics dict


# name -> module; modules are imported on use (their options live in ``train.recipe_configs``, held by TrainConfig)
RECIPES: dict[str, str] = {"ire-vla": "ire_vla", "grape": "grape", "ript-vla": "ript_vla", "vla-rl": "vla_rl",
                           "simplevla-rl": "simplevla_rl"}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    m = importlib.import_module(f"vlaforge.recipes.{RECIPES[name]}")
    return Recipe(m.NAME, m.SUMMARY, m.preset, m.run)


def recipe_defaults(name: str, base=None):
    """A ``TrainConfig`` holding the recipe's preset (the CLI parses user flags on top of it)."""
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    cfg.recipe = name
    get_recipe(name).preset(cfg)
    return cfg


def run_recipe(cfg) -> dict:
    return get_recipe(cfg.recipe).run(cfg)
