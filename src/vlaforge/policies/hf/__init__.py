"""Hugging Face VLMs as vlaforge policies (``--policy hf``), LoRA adapters and export.

Public API:
    HFConfig, HFVLA                 the policy and its options (model.py)
    build_hf_policy(**cfg)          a fresh policy from a local model directory
    write_hf_files(policy, d)       checkpoint files beside config.json (adapter or backbone)
    load_hf_policy(path, cfg)       the inverse (used by ``vlaforge.policies.load_policy``)
    save_adapter, export_merged     peft-layout adapters; LoRA merged into a plain transformers model
    make_tiny_vlm, save_tiny_vlm    random tiny models of each family, offline (tests, benchmarks)

A checkpoint directory of an HF policy holds ``config.json`` (the HFConfig; ``path`` names the
base model), ``model.safetensors`` (heads, value MLP, reference head, action statistics) and
either ``adapter/`` (LoRA, standard peft layout: adapter_config.json + adapter_model.safetensors)
or ``backbone/`` (the full fine-tuned model, tokenizer and image processor, save_pretrained
layout). The base model itself is never copied into LoRA checkpoints.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from vlaforge.envs import require
from vlaforge.errors import CheckpointError, UsageError
from vlaforge.policies.base import load_weights
from vlaforge.policies.hf.export import export_merged, save_adapter
from vlaforge.policies.hf.model import HFVLA, HFConfig, remote_code_files
from vlaforge.policies.hf.tiny import FAMILY_NAMES, make_tiny_vlm, save_tiny_vlm

__all__ = ["FAMILY_NAMES", "HFConfig", "HFVLA", "build_hf_policy", "export_merged", "load_hf_policy",
           "make_tiny_vlm", "save_adapter", "save_tiny_vlm", "write_hf_files"]


def _config(cfg: dict, trust_remote_code: bool = False) -> HFConfig:
    """An HFConfig from a dict; ``trust_remote_code`` comes from the caller (the command line), never from ``cfg``."""
    cfg = {k: v for k, v in cfg.items() if k != "trust_remote_code"}
    known = {f.name for f in fields(HFConfig)}
    unknown = set(cfg) - known
    if unknown:
        raise UsageError(f"unknown hf policy options {sorted(unknown)}; known: {sorted(known)}")
    return HFConfig(**cfg, trust_remote_code=trust_remote_code)


def build_hf_policy(**cfg) -> HFVLA:
    """A fresh policy; ``trust_remote_code=True`` here must come from the user's command-line flag."""
    trust = bool(cfg.pop("trust_remote_code", False))
    return HFVLA(_config(cfg, trust))


def build_family(name: str, **cfg) -> HFVLA:
    """The registry's ``build``."""
    return build_hf_policy(**cfg)


def load_family(path: Path, name: str, cfg: dict, device: str = "cpu", trust_remote_code: bool = False) -> HFVLA:
    """The registry's ``load``: heads from model.safetensors, the backbone or adapter beside it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    require("transformers", "hf")
    weights = Path(path) / "model.safetensors"
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{weights}' is missing or corrupt ({e}); re-create the checkpoint") from None
    return load_hf_policy(path, cfg, state, device, trust_remote_code=trust_remote_code)


def fresh_family(name: str, cfg, spec) -> HFVLA:
    """The registry's ``fresh``: `--policy hf --policy.path DIR` with the head and chunk of PolicyShape."""
    import dataclasses

    return build_hf_policy(**{**dataclasses.asdict(cfg.hf), "head": cfg.head, "chunk_size": cfg.chunk_size,
                              "state_dim": spec.state_dim, "action_dim": spec.action_dim,
                              "views": spec.image_shape[0], "image_size": cfg.image_size})


def check_fresh(cfg) -> None:
    """The registry's ``check_fresh`` for `--policy hf`: a local model folder that runs no code unless trusted."""
    if not cfg.hf.path:
        raise UsageError("--policy hf needs --policy.path DIR (a local Hugging Face image-text model)")
    if not (Path(cfg.hf.path).expanduser() / "config.json").exists():
        raise UsageError(f"--policy.path: no Hugging Face model at '{cfg.hf.path}' (expected a directory with "
                         "config.json, the weights, the tokenizer and the image processor, e.g. written by "
                         "save_pretrained)")
    files = [] if cfg.hf.trust_remote_code else remote_code_files(Path(cfg.hf.path).expanduser())
    if files:
        raise UsageError(f"--policy.path: '{files[0]}' asks to run the model's own Python code (auto_map); vlaforge "
                         "runs it only with --policy.trust-remote-code")


def check_checkpoint(pol: dict, path: str, trust: bool, name: str = "--checkpoint",
                     trust_flag: str | None = "--trust-remote-code") -> None:
    """The registry's ``check_checkpoint``: refuse an HF checkpoint whose model files ask to run their own code,
    unless ``trust`` (the command's flag ``trust_flag``; None: the command never runs it)."""
    if trust:
        return
    full = Path(path) / "backbone"
    dirs = [full] if full.is_dir() else []
    if pol.get("path"):
        dirs.append(Path(pol["path"]).expanduser())
    for d in dirs:
        files = remote_code_files(d)
        if files:
            how = (f"vlaforge runs it only with {trust_flag} on the command line" if trust_flag else
                   f"vlaforge never runs it for {name}")
            raise UsageError(f"{name} '{path}': '{files[0]}' asks to run the model's own Python code (auto_map); "
                             + how)


def write_hf_files(policy: HFVLA, d: Path) -> dict[str, torch.Tensor]:
    """Write the adapter (LoRA) or the full backbone into ``d``; return the state for model.safetensors."""
    if policy.cfg.lora_rank > 0:
        save_adapter(policy, d / "adapter")
    else:
        base = policy.base_model()
        base.save_pretrained(d / "backbone")
        policy.proc.tokenizer.save_pretrained(d / "backbone")
        policy.proc.image_processor.save_pretrained(d / "backbone")
    return policy.own_state_dict()


def load_hf_policy(path: str | Path, cfg: dict, state: dict[str, torch.Tensor], device: str = "cpu",
                   trust_remote_code: bool = False) -> HFVLA:
    """Rebuild an HF policy from its checkpoint directory and its model.safetensors ``state``. A
    ``trust_remote_code`` key in ``cfg`` (older checkpoints) is ignored: only the caller's flag counts."""
    from safetensors.torch import load_file

    path = Path(path)
    config = _config(cfg, trust_remote_code)
    full = path / "backbone"
    try:
        policy = HFVLA(config, backbone_path=str(full) if config.lora_rank <= 0 else None)
    except ValueError as e:
        raise CheckpointError(f"checkpoint '{path}': {str(e).splitlines()[0]}") from None
    if config.lora_rank > 0:
        adapter = path / "adapter" / "adapter_model.safetensors"
        if not adapter.exists():
            raise CheckpointError(f"'{adapter}' is missing: the checkpoint is partial; re-create it")
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(policy.vlm, load_file(str(adapter)))
        if getattr(res, "unexpected_keys", None):
            raise CheckpointError(f"adapter in '{path}' does not match its config: unexpected {res.unexpected_keys[:3]}")
    load_weights(policy, state, path, saved_apart=lambda k: k.startswith(("vlm.", "critic_backbone.")))
    return policy.to(device)
