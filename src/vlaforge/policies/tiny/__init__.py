"""The embedded default VLA that trains on a CPU (see ``model.py``)."""

from dataclasses import fields
from pathlib import Path

from vlaforge.errors import CheckpointError, UsageError
from vlaforge.policies.base import load_weights
from vlaforge.policies.tiny.model import TinyConfig, TinyVLA

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


def fresh_tiny(name: str, cfg, spec) -> TinyVLA:
    """The registry's ``fresh``: `vlaforge train` without --init (``cfg``: the TrainConfig, ``spec``: the suite's)."""
    return build_tiny(name, **cfg.shape(), state_dim=spec.state_dim, action_dim=spec.action_dim,
                      views=spec.image_shape[0], image_size=cfg.image_size)
