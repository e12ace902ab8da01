"""Full-state checkpoints, written atomically (temp dir + rename) and read without unpickling
arbitrary objects.

A checkpoint directory holds::

    config.json          policy architecture (+ format version)
    model.safetensors    policy weights and action statistics
    optimizer.pt         optimizer state (tensors and numbers only; loaded with weights_only=True)
    rng.safetensors      torch RNG states (global CPU generator, update-shuffling generator)
    state.json           iteration, env steps, task-sampler state (numpy RNG included), train config,
                         and the JSON part of the algorithm's own state (``algo_state``; stateful algorithms)
    algo_state.safetensors  the tensors of the algorithm's own state (replay buffer, its optimizers; if any)
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from vlaforge.fsutil import atomic_dir
from vlaforge.policies import CheckpointError, load_policy, read_config, write_policy_files

REQUIRED = ("config.json", "model.safetensors", "optimizer.pt", "rng.safetensors", "state.json")


def save_checkpoint(path: str | Path, policy, optimizer, state: dict, gen: torch.Generator, algo_state=None) -> Path:
    """``algo_state``: an ``algos.state.AlgoState`` (or None), stored beside the rest in the same atomic write."""
    from safetensors.torch import save_file

    path = Path(path)
    if algo_state is not None:
        tensors, meta = algo_state.state_dict()
        state = {**state, "algo_state": meta}
    with atomic_dir(path) as tmp:
        if algo_state is not None:
            save_file(tensors, str(tmp / "algo_state.safetensors"))
        write_policy_files(policy, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        save_file({"torch_cpu": torch.get_rng_state(), "update_gen": gen.get_state()}, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    return path


def load_checkpoint(path: str | Path) -> tuple:
    """Returns (policy, optimizer_state, state, rng) or raises CheckpointError with what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    read_config(path)
    missing = [f for f in REQUIRED if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' is partial (missing {', '.join(missing)}); "
                              "resume from an earlier complete checkpoint or start again")
    policy = load_policy(path)
    try:
        opt_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        rng = load_file(str(path / "rng.safetensors"))
        state = json.loads((path / "state.json").read_text())
    except (RuntimeError, OSError, ValueError, SafetensorError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt ({type(e).__name__}); "
                              "resume from an earlier checkpoint or start again") from None
    return policy, opt_state, state, rng


def load_algo_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON part) of the algorithm state saved by ``save_checkpoint(..., algo_state=)``."""
    from safetensors.torch import load_file

    path = Path(path)
    f = path / "algo_state.safetensors"
    state = json.loads((path / "state.json").read_text())
    if not f.exists() or "algo_state" not in state:
        raise CheckpointError(f"checkpoint '{path}' holds no algorithm state (algo_state.safetensors); it was written "
                              "by an algorithm without state: resume it with that algorithm")
    return load_file(str(f)), state["algo_state"]
