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
| ``native`` | ``(path) -> bool``, ``(path) -> meta``, ``(path, device) -> policy`` | a folder in the family's released layout (LeRobot SmolVLA) |

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

    def fn(self, what: str):
        return resolve(getattr(self, what))


POLICIES: dict[str, Family] = {}


def register_family(f: Family) -> Family:
    POLICIES[f.name] = f
    register_config_schema(f.name, f.config, f.ignored)
    return f


def family(name: str) -> Family:
    if name not in POLICIES:
        raise ValueError(f"unknown policy family '{name}'; available: {', '.join(POLICIES)}")
    return POLICIES[name]


def native_family(path: str | Path) -> Family | None:
    """The family whose released layout ``path`` is in (a LeRobot SmolVLA folder), or None."""
    for f in POLICIES.values():
        if f.native is not None and resolve(f.native[0])(Path(path)):
            return f
    return None


_P = "vlaforge.policies."
register_family(Family("tiny", _P + "tiny.model:TinyConfig", _P + "tiny:build_tiny", _P + "tiny:load_tiny",
                       _P + "tiny:fresh_tiny"))
register_family(Family("hf", _P + "hf.model:HFConfig", _P + "hf:build_family", _P + "hf:load_family",
                       _P + "hf:fresh_family", _P + "hf:write_hf_files", ignored=("trust_remote_code",)))
register_family(Family("smolvla", _P + "smolvla.policy:SmolVLAConfig", _P + "smolvla:build_family",
                       _P + "smolvla:load_family", _P + "smolvla:fresh_family", _P + "smolvla:write_smolvla_files",
                       native=(_P + "smolvla.lerobot:is_lerobot_dir", _P + "smolvla.lerobot:lerobot_meta",
                               _P + "smolvla:load_native")))
for _name in ("openvla", "openvla-oft"):
    register_family(Family(_name, _P + "openvla.model:OpenVLAConfig", _P + "openvla:build_openvla_policy",
                           _P + "openvla:load_family", _P + "openvla:fresh_family", _P + "openvla:write_openvla_files"))

PolicyName = Literal[tuple(POLICIES)]  # type: ignore[valid-type]  # TrainConfig.policy's choices
