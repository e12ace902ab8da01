"""Policy families by name, in the spirit of LeRobot's policy factory: ``POLICIES[name] = Family(...)``.

A family is a folder under ``policies/`` plus one ``register_family`` line below. Its entry names, as
``"module:function"`` strings imported on first use (so optional extras stay optional):

| field | signature | used by |
| --- | --- | --- |
| ``config`` | the config dataclass (``module:Class``) | ``schema.check_policy_config``: config.json's allow-list |
| ``build`` | ``(name, **cfg) -> policy`` | ``build_policy`` |
| ``load`` | ``(path, name, cfg, device, trust_remote_code) -> policy`` | ``load_policy`` |
| ``write`` | ``(policy, dir) -> state for model.safetensors`` (None: ``state_dict()``) | ``save_policy`` |
| ``fresh`` | ``(name, train_cfg, spec) -> policy`` | ``vlaforge train --policy NAME`` without ``--init`` |
| ``native`` | ``(path) -> bool``, ``(path) -> meta``, ``(path, device) -> policy`` | a folder in the family's released layout (LeRobot SmolVLA, π0) |

Nothing outside this module branches on a family's name (tests/test_registry.py greps for it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlaforge.schema import register_config_schema


def resolve(ref: str):
    """``"module:attr"`` -> the attribute."""
    mod, name = ref.split(":")
    return getattr(importlib.import_module(mod), name)


@dataclass(frozen=True)
class Family:
    name: str
    config: str
    build: str
    load: str
    fresh: str
    write: str | None = None
    native: tuple[str, str, str] | None = None
    """(is_native_dir, native_meta, load_native) for a family whose released folders load as they are"""
    ignored: tuple[str, ...] = ()
    """config fields older checkpoints may hold that are never read from a file"""
    check_fresh: str | None = None
    """``(train_cfg) -> None``: the family's own input checks for `vlaforge train --policy NAME` (one-line
    ``UsageError`` before any work)"""
    check_checkpoint: str | None = None
    """``(policy_cfg, path, trust, flag_name, trust_flag) -> None``: checks of a checkpoint of this family before it is
    loaded (a model folder that asks to run code)"""
    check_config: str | None = None
    """``(policy_cfg) -> list[str]``: problems of a checkpoint config's values (bounds, parameter bytes), checked by
    ``schema.check_policy_config`` on every config.json read"""
    caps: frozenset[str] = frozenset()
    """what the family offers that some options need: ``privileged_critic`` (--critic privileged, readouts),
    ``base_reference`` (TPO's --tpo.reference base through its LoRA adapters), ``log_std_init`` (a fresh policy
    built with PolicyShape's --log-std-init)"""

    def fn(self, what: str):
        return resolve(getattr(self, what))


POLICIES: dict[str, Family] = {}


def register_family(f: Family) -> Family:
    POLICIES[f.name] = f
    register_config_schema(f.name, f.config, f.ignored, f.check_config)
    return f


def family(name: str) -> Family:
    if name not in POLICIES:
        raise ValueError(f"unknown policy family '{name}'; available: {', '.join(POLICIES)}")
    return POLICIES[name]


def native_family(path: str | Path) -> Family | None:
    """The family whose released layout ``path`` is in (a LeRobot SmolVLA or π0 folder), or None."""
    for f in POLICIES.values():
        if f.native is not None and resolve(f.native[0])(Path(path)):
            return f
    return None


_P = "vlaforge.policies."
register_family(Family("tiny", _P + "tiny.model:TinyConfig", _P + "tiny:build_tiny", _P + "tiny:load_tiny",
                       _P + "tiny:fresh_tiny", check_fresh=_P + "tiny:check_fresh_tiny",
                       check_config=_P + "tiny:tiny_config_problems",
                       caps=frozenset({"privileged_critic", "log_std_init"})))
register_family(Family("hf", _P + "hf.model:HFConfig", _P + "hf:build_family", _P + "hf:load_family",
                       _P + "hf:fresh_family", _P + "hf:write_hf_files", ignored=("trust_remote_code",),
                       check_fresh=_P + "hf:check_fresh", check_checkpoint=_P + "hf:check_checkpoint",
                       check_config=_P + "options:vlm_config_problems",
                       caps=frozenset({"base_reference"})))
register_family(Family("smolvla", _P + "smolvla.policy:SmolVLAConfig", _P + "smolvla:build_family",
                       _P + "smolvla:load_family", _P + "smolvla:fresh_family", _P + "smolvla:write_smolvla_files",
                       check_config=_P + "options:vlm_config_problems",
                       native=(_P + "smolvla.lerobot:is_lerobot_dir", _P + "smolvla.lerobot:lerobot_meta",
                               _P + "smolvla:load_native")))
register_family(Family("pi0", _P + "pi0.policy:Pi0Config", _P + "pi0:build_family", _P + "pi0:load_family",
                       _P + "pi0:fresh_family", _P + "pi0:write_pi0_files", check_config=_P + "options:vlm_config_problems",
                       native=(_P + "pi0.lerobot:is_pi0_dir", _P + "pi0:lerobot_meta", _P + "pi0:load_native")))
for _name in ("openvla", "openvla-oft"):
    register_family(Family(_name, _P + "openvla.model:OpenVLAConfig", _P + "openvla:build_openvla_policy",
                           _P + "openvla:load_family", _P + "openvla:fresh_family", _P + "openvla:write_openvla_files",
                           check_config=_P + "options:vlm_config_problems"))

PolicyName = Literal[tuple(POLICIES)]  # type: ignore[valid-type]  # TrainConfig.policy's choices
