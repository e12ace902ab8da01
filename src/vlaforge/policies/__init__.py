"""Policies: the VLA (backbone + action head + value head) behind one protocol.

``build_policy(family, **config)`` makes a fresh policy; ``save_policy`` / ``load_policy``
write and read a directory with ``config.json`` + ``model.safetensors`` (atomically; no
pickles).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlaforge.errors import CheckpointError
from vlaforge.fsutil import atomic_dir, file_sha256
from vlaforge.policies import registry
from vlaforge.policies.base import Policy
from vlaforge.policies.tiny import TinyVLA
from vlaforge.schema import FORMAT_VERSION, check_finite_tensors, check_policy_config

__all__ = ["CheckpointError", "Policy", "build_policy", "load_policy", "policy_hash", "read_checked_config", "read_config", "save_policy",
           "write_policy_files"]


def build_policy(family: str = "tiny", **cfg) -> TinyVLA:
    """A fresh policy of ``family`` (``policies.registry.POLICIES``) from its config fields."""
    return registry.family(family).fn("build")(family, **cfg)


def write_policy_files(policy: torch.nn.Module, d: Path, extra: dict | None = None) -> None:
    """Write config.json + model.safetensors (+ the family's own files) into an existing (temp) directory."""
    from safetensors.torch import save_file

    fam = registry.family(policy.config_dict()["family"])
    state = fam.fn("write")(policy, d) if fam.write else policy.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    check_finite_tensors(state)  # a diverged policy is never written (NonFiniteError)
    save_file(state, str(d / "model.safetensors"))
    meta = {"format_version": FORMAT_VERSION, "policy": policy.config_dict(), **(extra or {})}
    (d / "config.json").write_text(json.dumps(meta, indent=2))


def save_policy(policy: torch.nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Atomically write a policy directory; returns its path."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_policy_files(policy, tmp, extra)
    return path


def read_config(path: str | Path) -> dict:
    path = Path(path)
    native = registry.native_family(path)
    if native is not None:  # a family's released folder (LeRobot's own config.json), seen as that family's config
        return registry.resolve(native.native[1])(path)
    cfg_file = path / "config.json"
    if not path.is_dir() or not cfg_file.exists():
        raise CheckpointError(f"no checkpoint at '{path}' (expected a directory with config.json and "
                              "model.safetensors); pass the directory written by `vlaforge sft` or `vlaforge train`")
    try:
        meta = json.loads(cfg_file.read_text())
        meta["policy"]["family"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"corrupt config.json in '{path}'; re-create the checkpoint") from None
    meta["policy"] = check_policy_config(meta, path)  # allow-list of fields and types per family
    return meta


def read_checked_config(path: str | Path, trust: bool, name: str = "--checkpoint",
                        trust_flag: str | None = "--trust-remote-code") -> dict:
    """``read_config`` and then the family's own checks of a checkpoint before it is loaded (the registry's
    ``check_checkpoint``: an HF model folder that asks to run its own code is refused unless ``trust``, the
    command's flag ``trust_flag``; None: the command never runs such code). One-line errors naming ``name``."""
    meta = read_config(path)
    fam = registry.family(meta["policy"].get("family", "tiny"))
    if fam.check_checkpoint:
        fam.fn("check_checkpoint")(meta["policy"], str(path), trust, name, trust_flag)
    return meta


def load_policy(path: str | Path, device: str = "cpu", trust_remote_code: bool = False) -> TinyVLA:
    """Load a policy directory written by ``save_policy`` (weights via safetensors, no unpickling), or a family's
    released folder (a LeRobot SmolVLA checkpoint as published)."""
    path = Path(path)
    native = registry.native_family(path)
    if native is not None:
        return registry.resolve(native.native[2])(path, device)
    meta = read_config(path)
    cfg = dict(meta["policy"])
    name = cfg.pop("family")
    return registry.family(name).fn("load")(path, name, cfg, device, trust_remote_code)


def policy_hash(path: str | Path) -> str:
    """sha256 of the weights file (recorded in eval manifests)."""
    return file_sha256(Path(path) / "model.safetensors")[:16]
