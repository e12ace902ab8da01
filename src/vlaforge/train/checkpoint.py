"""Full-state checkpoints, written atomically (temp dir + rename) and read without unpickling
arbitrary objects.

A checkpoint directory holds::

    config.json          policy architecture (+ format version)
    model.safetensors    policy weights and action statistics
    optimizer.pt         optimizer state (tensors and numbers only; loaded with weights_only=True)
    rng.safetensors      torch RNG states (global CPU generator, update-shuffling generator)
    state.json           iteration, env steps, task-sampler state (numpy RNG included), train config
    algo_state.safetensors  tensors of a stateful algorithm's ``AlgoState`` (its JSON part: state.json's
                         ``algo_state``); absent for on-policy algorithms

A policy with a NaN/inf tensor is never written (``NonFiniteError`` names the last good
checkpoint). ``state.json`` is checked against the fields and types of ``TrainConfig`` before
use; its ``out`` is never read (the run directory comes from the command line: the checkpoint's
parent by default). ``repair_metrics`` drops the killed run's tail of ``metrics.jsonl``, torn
last line included.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from vlaforge.device import cuda_rng_states, to_host
from vlaforge.errors import CheckpointError, NonFiniteError
from vlaforge.fsutil import atomic_dir, atomic_write_text
from vlaforge.policies import load_policy, read_config, write_policy_files
from vlaforge.schema import dataclass_problems
from vlaforge.train.config import TrainConfig, config_from_dict

REQUIRED = ("config.json", "model.safetensors", "optimizer.pt", "rng.safetensors", "state.json")


def last_good(path: str | Path) -> str:
    """'the last good checkpoint is P (iteration k)' for a checkpoint dir, or that there is none."""
    path = Path(path)
    try:
        it = json.loads((path / "state.json").read_text())["iteration"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no checkpoint was written before"
    return f"the last good checkpoint is '{path}' (iteration {it}); restart from it with a lower --lr: " \
           f"vlaforge train --init {path} ..."


def save_checkpoint(path: str | Path, policy, optimizer, state: dict, gen: torch.Generator, algo_state=None) -> Path:
    """Write the full training state; ``algo_state`` (an ``algos.state.AlgoState`` or None) beside it."""
    from safetensors.torch import save_file

    path = Path(path)
    state = dict(state)
    try:
        with atomic_dir(path) as tmp:
            write_policy_files(policy, tmp)
            torch.save(to_host(optimizer.state_dict()), tmp / "optimizer.pt")  # host copies: loads on any device
            save_file({"torch_cpu": torch.get_rng_state(), "update_gen": gen.get_state(), **cuda_rng_states()},
                      str(tmp / "rng.safetensors"))
            if algo_state is not None:
                tensors, meta = algo_state.state_dict()
                save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                          str(tmp / "algo_state.safetensors"))
                state["algo_state"] = meta
            (tmp / "state.json").write_text(json.dumps(state, indent=2))
    except NonFiniteError as e:
        raise NonFiniteError(f"iteration {state.get('iteration')}: {str(e).split(';')[0]}; the training diverged and "
                             f"stopped: {last_good(path)}") from None
    return path


def sampler_problem(sampler: dict) -> str | None:
    """What is wrong with a saved ``TaskSampler.state_dict()`` (None: it loads): ``history`` maps task ids to
    success rates in [0, 1], ``rng`` is a numpy bit generator state."""
    import numpy as np

    hist = sampler.get("history")
    if not isinstance(hist, dict):
        return "has no 'history' object"
    for k, v in hist.items():
        if not (isinstance(k, str) and k.isdigit() and isinstance(v, list)
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in v)):
            return f"has history entry {json.dumps(k)[:40]} that is not a task id with success rates in [0, 1]"
    try:
        np.random.default_rng().bit_generator.state = sampler.get("rng")
    except (TypeError, ValueError, KeyError, OverflowError):
        return "has no valid numpy 'rng' state"
    return None


def rng_problem(rng: dict) -> str | None:
    """What is wrong with a checkpoint's RNG tensors (None: they load): the CPU and update generators' states are
    uint8 tensors of the sizes this torch writes."""
    want = {"torch_cpu": torch.get_rng_state(), "update_gen": torch.Generator().get_state()}
    for k, ref in want.items():
        t = rng.get(k)
        if t is None:
            return f"lacks '{k}'"
        if t.dtype != ref.dtype or t.shape != ref.shape:
            return f"has '{k}' of {t.dtype} {tuple(t.shape)}, not {ref.dtype} {tuple(ref.shape)}"
    return None


def read_train_state(path: str | Path) -> dict:
    """``state.json`` of a training checkpoint, checked: iteration, env_steps, sampler and a config that
    fits ``TrainConfig`` (returned as ``config_obj``). Raises CheckpointError naming the file."""
    f = Path(path) / "state.json"
    if not f.exists():
        raise CheckpointError(f"no training checkpoint at '{path}' (state.json missing); pass the run's "
                              "checkpoint/ directory")
    try:
        state = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"'{f}' is corrupt ({type(e).__name__}); resume from an earlier checkpoint or "
                              "start again") from None
    ok = (isinstance(state, dict) and isinstance(state.get("iteration"), int) and state["iteration"] >= 0
          and isinstance(state.get("env_steps"), int) and isinstance(state.get("sampler"), dict)
          and isinstance(state.get("config"), dict))
    if not ok:
        raise CheckpointError(f"'{f}' lacks iteration/env_steps/sampler/config; resume from another checkpoint")
    problem = sampler_problem(state["sampler"])
    if problem:
        raise CheckpointError(f"'{f}': the task sampler's state {problem}; resume from another checkpoint")
    problems = dataclass_problems(TrainConfig, state["config"])
    if problems:
        raise CheckpointError(f"'{f}': the training config has {problems[0]}; resume from another checkpoint")
    try:
        state["config_obj"] = config_from_dict(state["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"'{f}': the training config does not load ({e}); resume from another "
                              "checkpoint") from None
    return state


def load_checkpoint(path: str | Path, trust_remote_code: bool = False, state: dict | None = None) -> tuple:
    """Returns (policy, optimizer_state, state, rng) or raises CheckpointError with what to do.
    ``state["config_obj"]`` is the checked ``TrainConfig``; ``state``: state.json as ``read_train_state`` returned it
    already (``train.resume.ResumePoint.state``; None: read here)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    read_config(path)
    missing = [f for f in REQUIRED if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' is partial (missing {', '.join(missing)}); "
                              "resume from an earlier complete checkpoint or start again")
    state = read_train_state(path) if state is None else state
    policy = load_policy(path, trust_remote_code=trust_remote_code)
    try:
        opt_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        rng = load_file(str(path / "rng.safetensors"))
    except (RuntimeError, OSError, ValueError, SafetensorError, EOFError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt ({type(e).__name__}); "
                              "resume from an earlier checkpoint or start again") from None
    problem = rng_problem(rng)
    if problem:
        raise CheckpointError(f"'{path / 'rng.safetensors'}' {problem}; resume from an earlier checkpoint or "
                              "start again")
    if not (isinstance(opt_state, dict) and isinstance(opt_state.get("param_groups"), list)
            and isinstance(opt_state.get("state"), dict)):
        raise CheckpointError(f"'{path / 'optimizer.pt'}' is not an optimizer state (param_groups, state); resume "
                              "from an earlier checkpoint or start again")
    return policy, opt_state, state, rng


def load_algo_state(path: str | Path, state: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, JSON part) of the algorithm state saved by ``save_checkpoint(..., algo_state=)``; ``state``: the
    checkpoint's state.json already read (None: read here)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    f = path / "algo_state.safetensors"
    state = read_train_state(path) if state is None else state
    if not f.exists() or "algo_state" not in state:
        raise CheckpointError(f"checkpoint '{path}' holds no algorithm state (algo_state.safetensors); it was written "
                              "by an algorithm without state: resume it with that algorithm")
    try:
        return load_file(str(f)), state["algo_state"]
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"'{f}' is corrupt ({type(e).__name__}); resume from an earlier checkpoint") from None


def repair_metrics(path: str | Path, upto: int) -> int:
    """Keep the lines of ``metrics.jsonl`` logged at steps <= ``upto`` (the checkpoint resumed from); lines
    that do not parse (a torn last line of a killed run) are dropped. Atomic. Returns lines dropped."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= upto
        except ValueError:
            ok = False
        if ok:
            keep.append(line)
        elif line.strip():
            dropped += 1
    atomic_write_text(path, "".join(line + "\n" for line in keep))
    return dropped
