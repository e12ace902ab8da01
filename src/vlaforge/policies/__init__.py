"""Policies: the VLA (backbone + action head + value head) behind one protocol.

``build_policy(family, **config)`` makes a fresh policy; ``save_policy`` / ``load_policy``
write and read a directory with ``config.json`` + ``model.safetensors`` (atomically; no
pickles).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch

from vlaforge.envs import require
from vlaforge.errors import CheckpointError
from vlaforge.fsutil import atomic_dir, file_sha256
from vlaforge.policies.base import Policy, load_weights
from vlaforge.policies.tiny import TinyConfig, TinyVLA
from vlaforge.schema import FORMAT_VERSION, check_finite_tensors, check_policy_config

__all__ = ["CheckpointError", "Policy", "build_policy", "load_policy", "policy_hash", "save_policy"]


def build_policy(family: str = "tiny", **cfg) -> TinyVLA:
    if family == "hf":  # a Hugging Face VLM (vlaforge.policies.hf)
        from vlaforge.policies.hf import build_hf_policy

        return build_hf_policy(**cfg)
    if family in ("openvla", "openvla-oft"):  # OpenVLA / OpenVLA-OFT checkpoints (vlaforge.policies.openvla)
        from vlaforge.policies.openvla import build_openvla_policy

        return build_openvla_policy(family, **cfg)
    if family == "smolvla":  # a LeRobot SmolVLA checkpoint (vlaforge.policies.smolvla)
        from vlaforge.policies.smolvla import build_smolvla_policy

        return build_smolvla_policy(**cfg)
    if family != "tiny":
        raise ValueError(f"unknown policy family '{family}'; available: tiny, hf")
    known = {f.name for f in fields(TinyConfig)}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"unknown tiny policy options {sorted(unknown)}; known: {sorted(known)}")
    return TinyVLA(TinyConfig(**cfg))


def write_policy_files(policy: torch.nn.Module, d: Path, extra: dict | None = None) -> None:
    """Write config.json + model.safetensors into an existing (temp) directory."""
    from safetensors.torch import save_file

    if policy.config_dict()["family"] == "hf":  # adapter or backbone beside; heads in model.safetensors
        from vlaforge.policies.hf import write_hf_files

        state = write_hf_files(policy, d)
    elif policy.config_dict()["family"] == "smolvla":  # tokenizer/ beside; every weight in model.safetensors
        from vlaforge.policies.smolvla import write_smolvla_files

        state = write_smolvla_files(policy, d)
    elif policy.config_dict()["family"] in ("openvla", "openvla-oft"):  # backbone/ in the released layout
        from vlaforge.policies.openvla import write_openvla_files

        state = write_openvla_files(policy, d)
    else:
        state = policy.state_dict()
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
    from vlaforge.policies.smolvla.lerobot import is_lerobot_dir, lerobot_meta

    if is_lerobot_dir(path):  # LeRobot's own config.json, seen as a smolvla policy config
        return lerobot_meta(path)
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


def load_policy(path: str | Path, device: str = "cpu", trust_remote_code: bool = False) -> TinyVLA:
    """Load a policy directory written by ``save_policy`` (weights via safetensors, no unpickling)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    from vlaforge.policies.smolvla.lerobot import is_lerobot_dir

    if is_lerobot_dir(path):  # a LeRobot SmolVLA checkpoint as released (vlaforge.policies.smolvla)
        from vlaforge.policies.smolvla import load_lerobot

        return load_lerobot(path).to(device)
    meta = read_config(path)
    cfg = dict(meta["policy"])
    family = cfg.pop("family")
    if family == "smolvla":
        from vlaforge.policies.smolvla import load_smolvla_policy

        return load_smolvla_policy(path, cfg, device)
    if family in ("openvla", "openvla-oft"):
        from vlaforge.policies.openvla import load_openvla_policy

        return load_openvla_policy(path, family, cfg, device)
    if family == "hf":
        return _load_hf(path, cfg, device, trust_remote_code)
    try:
        policy = build_policy(family, **cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' has an incompatible config: {e}") from None
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"'{weights}' is missing: the checkpoint is partial; re-create it")
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{weights}' is corrupt ({e}); re-create the checkpoint") from None
    load_weights(policy, state, path)
    return policy.to(device)


def _load_hf(path: Path, cfg: dict, device: str, trust_remote_code: bool = False):
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vlaforge.policies.hf import load_hf_policy

    require("transformers", "hf")
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{weights}' is missing or corrupt ({e}); re-create the checkpoint") from None
    return load_hf_policy(path, cfg, state, device, trust_remote_code=trust_remote_code)


def policy_hash(path: str | Path) -> str:
    """sha256 of the weights file (recorded in eval manifests)."""
    return file_sha256(Path(path) / "model.safetensors")[:16]
