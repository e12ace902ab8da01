"""The embedded default VLA that trains on a CPU (see ``model.py``)."""

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch

from vlaforge.errors import CheckpointError, UsageError
from vlaforge.policies.base import load_weights
from vlaforge.policies.heads import HEADS
from vlaforge.policies.tiny.model import TinyConfig, TinyVLA
from vlaforge.schema import MAX_PARAM_BYTES, is_finite_number

__all__ = ["TinyConfig", "TinyVLA", "build_tiny", "fresh_tiny", "load_tiny"]


def build_tiny(name: str = "tiny", **cfg) -> TinyVLA:
    """The registry's ``build``: a fresh tiny VLA; unknown options are refused."""
    known = {f.name for f in fields(TinyConfig)}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"unknown tiny policy options {sorted(unknown)}; known: {sorted(known)}")
    return TinyVLA(TinyConfig(**cfg))


def load_tiny(path: Path, name: str, cfg: dict, device: str = "cpu", trust_remote_code: bool = False) -> TinyVLA:
    """The registry's ``load``: config.json's policy fields and model.safetensors (no unpickling)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        policy = build_tiny(name, **cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' has an incompatible config: {e}") from None
    weights = Path(path) / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(f"'{weights}' is missing: the checkpoint is partial; re-create it")
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{weights}' is corrupt ({e}); re-create the checkpoint") from None
    load_weights(policy, state, path)
    return policy.to(device)


def check_fresh_tiny(cfg) -> None:
    """The registry's ``check_fresh``: the vision backbone downsamples by 8."""
    if cfg.backbone == "vision" and cfg.image_size % 8:
        raise UsageError(f"--image-size {cfg.image_size}: the tiny VLA's vision backbone needs a multiple of 8 (e.g. 64)")


_POSITIVE = {"state_dim": 1, "action_dim": 1, "views": 1, "chunk_size": 1, "dim": 1, "layers": 1, "heads": 1,
             "vocab": 2, "max_words": 1, "head_hidden": 1, "n_bins": 2, "flow_steps": 2, "dsrl_hidden": 1,
             "sim_state_dim": 0}
_CHOICES = {"head": tuple(HEADS), "backbone": ("vision", "state"), "critic": ("image", "privileged")}


def tiny_config_problems(d: dict) -> list[str]:
    """The registry's ``check_config``: a tiny checkpoint's config values — positive dimensions, known choices, finite
    numbers, readout indices inside sim_state, and at most ``MAX_PARAM_BYTES`` of parameters (counted on the meta
    device: nothing is allocated)."""
    c = {**asdict(TinyConfig()), **d}
    out = [f"'{k}' = {c[k]} must be >= {lo}" for k, lo in _POSITIVE.items() if c[k] < lo]
    if not 8 <= c["image_size"] <= 1024:
        out.append(f"'image_size' = {c['image_size']} must be in [8, 1024]")
    out += [f"'{k}' = {json.dumps(c[k])[:40]} is not one of {', '.join(v)}" for k, v in _CHOICES.items()
            if c[k] not in v]
    out += [f"'{k}' = {c[k]} is not finite" for k in ("log_std_init", "flow_noise", "aux_weight", "dsrl_bound")
            if not is_finite_number(c[k])]
    if not out and c["dim"] % c["heads"]:
        out.append(f"'dim' = {c['dim']} is not a multiple of 'heads' = {c['heads']}")
    if not out and any(not 0 <= i < c["sim_state_dim"] for i in c["aux_index"]):
        out.append(f"'aux_index' names entries outside sim_state's {c['sim_state_dim']}")
    if out:
        return out
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in TinyVLA(TinyConfig(**c)).parameters())
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:  # torch asserts e.g. dim % attention heads
        return [f"the architecture does not build ({str(e).splitlines()[0][:80]})"]
    if n * 4 > MAX_PARAM_BYTES:
        return [f"the dimensions give {n:,} parameters ({n * 4 / 2 ** 30:,.0f} GiB), more than the "
                f"{MAX_PARAM_BYTES // 2 ** 30} GiB a tiny VLA may take"]
    return []


def fresh_tiny(name: str, cfg, spec) -> TinyVLA:
    """The registry's ``fresh``: `vlaforge train` without --init (``cfg``: the TrainConfig, ``spec``: the suite's)."""
    return build_tiny(name, **cfg.shape(), state_dim=spec.state_dim, action_dim=spec.action_dim,
                      views=spec.image_shape[0], image_size=cfg.image_size)
