"""OpenVLA and OpenVLA-OFT as vlaforge policies (``--policy openvla|openvla-oft``), without their remote code.

Public API:
    OpenVLAConfig, OpenVLAOptions, OpenVLAPolicy   the policy and its options (model.py)
    build_openvla_policy(family, **cfg)            a fresh policy from a released checkpoint directory
    write_openvla_files(policy, d) / load_openvla_policy(path, cfg, state)   vlaforge checkpoints
    load_prismatic, write_prismatic                the released layout (prismatic.py)
    save_tiny_openvla                              random tiny checkpoints in that layout (tiny.py)

A vlaforge checkpoint of these policies holds ``config.json`` (the OpenVLAConfig; ``path`` names the
released model), ``model.safetensors`` (heads, value MLP, statistics, LoRA adapters) and, after full
fine-tuning, ``backbone/``: the whole model in the released layout (config.json + sharded
safetensors + tokenizer + OFT components), loadable by their code too.

    python -m vlaforge.policies.openvla ~/models/openvla-7b runs/openvla --unnorm-key bridge_orig
    vlaforge eval --checkpoint runs/openvla --suite libero ...
"""

from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path

import torch

from vlaforge.envs import require
from vlaforge.errors import CheckpointError
from vlaforge.policies.base import load_weights
from vlaforge.policies.openvla.model import FAMILIES, OpenVLAConfig, OpenVLAOptions, OpenVLAPolicy
from vlaforge.policies.openvla.prismatic import LayoutError, UserError, load_prismatic, write_prismatic
from vlaforge.policies.openvla.tiny import save_tiny_openvla

__all__ = ["FAMILIES", "LayoutError", "OpenVLAConfig", "OpenVLAOptions", "OpenVLAPolicy", "build_openvla_policy",
           "load_openvla_policy", "load_prismatic", "save_tiny_openvla", "write_openvla_files", "write_prismatic"]


def _config(family: str, cfg: dict) -> OpenVLAConfig:
    if family not in FAMILIES:
        raise UserError(f"unknown OpenVLA family '{family}'; choose one of {', '.join(FAMILIES)}")
    known = {f.name for f in fields(OpenVLAConfig)} - {"oft"}
    unknown = set(cfg) - known
    if unknown:
        raise UserError(f"unknown {family} policy options {sorted(unknown)}; known: {sorted(known)}")
    return OpenVLAConfig(**cfg, oft=family == "openvla-oft")


def load_family(path: Path, name: str, cfg: dict, device: str = "cpu", trust_remote_code: bool = False):
    """The registry's ``load``."""
    return load_openvla_policy(path, name, cfg, device)


def fresh_family(name: str, cfg, spec) -> OpenVLAPolicy:
    """The registry's ``fresh``: --policy.* switches + --openvla.* options (docs/vlas.md)."""
    from vlaforge.policies.openvla.model import config_from_flags

    return build_openvla_policy(name, **config_from_flags(name, cfg.hf, cfg.openvla, cfg.chunk_size, spec,
                                                          cfg.image_size))


def build_openvla_policy(family: str, **cfg) -> OpenVLAPolicy:
    require("transformers", "hf")
    return OpenVLAPolicy(_config(family, cfg))


def write_openvla_files(policy: OpenVLAPolicy, d: Path) -> dict[str, torch.Tensor]:
    """Full fine-tuning: the model in the released layout under ``d/backbone``. Returns model.safetensors' state."""
    if policy.cfg.lora_rank <= 0:
        src = Path(policy.cfg.path).expanduser()
        out = d / "backbone"
        write_prismatic(policy.vlm, policy.pcfg, out, state=policy.released_state_dict())
        for f in src.iterdir():  # tokenizer, processor config, statistics (OFT heads are saved from the policy)
            if f.is_file() and not f.name.startswith(("model", "config.json", "action_head", "proprio_projector")):
                shutil.copy2(f, out / f.name)
    return policy.own_state_dict()


def load_openvla_policy(path: str | Path, family: str, cfg: dict, device: str = "cpu") -> OpenVLAPolicy:
    """Rebuild a policy from a vlaforge checkpoint directory (config.json's ``policy`` dict ``cfg``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    require("transformers", "hf")
    path = Path(path)
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{weights}' is missing or corrupt ({str(e).splitlines()[0]}); re-create the checkpoint") from None
    try:
        config = _config(family, cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' has an incompatible config: {e}") from None
    full = path / "backbone"
    if config.lora_rank <= 0 and not full.is_dir():
        raise CheckpointError(f"'{full}' is missing: the checkpoint is partial; re-create it")
    try:
        policy = OpenVLAPolicy(config, weights_path=str(full) if config.lora_rank <= 0 else None)
    except ValueError as e:
        raise CheckpointError(f"checkpoint '{path}': {str(e).splitlines()[0]}") from None
    load_weights(policy, state, path, saved_apart=lambda k: k.startswith("vlm.") and "lora_" not in k)
    return policy.to(device)
