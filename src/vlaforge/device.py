"""Where a command computes: ``--device``, ``--precision`` and ``--deterministic``, and the few helpers that
move data across the host/device boundary.

One device per process half (the learner's policy, its batches, advantages, losses and optimizer state; the
collector's copy of the policy). Envs produce numpy on the host; observations cross to the policy's device once
per decision inside the policy (``torch.as_tensor(x, device=...)``), a rollout crosses once per iteration
(``Rollout.to``), and checkpoints are written from host copies and loaded onto whichever device the run names.

    --device auto        CUDA when torch sees a GPU, else the CPU (the default)
    --device cpu         exactly the CPU code path of earlier versions (same numbers for a fixed seed)
    --device cuda:1      a given GPU
    --precision bf16     bf16 autocast around acting and the losses (fp32 master weights and optimizer state)
    --deterministic      deterministic CUDA kernels (cuBLAS workspace, no cuDNN autotuning): exact resumes on one GPU

Imports nothing from vlaforge but ``errors``, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from vlaforge.errors import UsageError

Precision = Literal["fp32", "bf16"]
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,3})$")


@dataclass
class DeviceOptions:
    """The compute options every command that runs a policy shares (train, sft, eval, demo)."""

    device: str = "auto"
    """where the policy, batches, losses and optimizer state live: auto (CUDA when available) | cpu | cuda |
    cuda:N. Saved in the run's config, never in a checkpoint; a resumed run takes this command line's"""
    precision: Precision = "fp32"
    """fp32, or bf16 autocast around acting and the losses (fp32 weights and optimizer state; log-probs and
    losses stay fp32 where the policy says so)"""
    deterministic: bool = False
    """deterministic GPU kernels (torch.use_deterministic_algorithms, cuBLAS workspace config, no cuDNN
    benchmark): a GPU run then resumes bit-exactly on the same GPU model and software; no effect on the CPU,
    which is deterministic already"""

    def check(self) -> None:
        """One-line ``UsageError`` for a device this machine cannot use (before any work)."""
        resolve_device(self.device)


def resolve_device(name: str) -> torch.device:
    """``auto|cpu|cuda|cuda:N`` -> the ``torch.device`` to use on this machine; ``UsageError`` when it is not here."""
    if not isinstance(name, str) or not _DEVICE_RE.match(name):
        raise UsageError(f"--device: '{name}' is not a device; use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: this machine has no CUDA GPU visible to torch (torch "
                         f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}); use --device cpu")
    index = int(name.split(":")[1]) if ":" in name else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                         f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def precision_context(precision: str, device: torch.device):
    """bf16 autocast on ``device`` for ``--precision bf16`` (CUDA; on the CPU it runs, slowly, for tests), else a
    no-op: the fp32 path is the code of earlier versions, untouched."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise UsageError(f"--precision: '{precision}' is not one of fp32, bf16")


def set_deterministic(on: bool) -> None:
    """``--deterministic``: deterministic kernels for GPU runs (must run before the first CUDA call)."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=False)


def module_device(module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for one without tensors)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def to_device(x, device: torch.device):
    """Tensors in nested dicts/lists/tuples moved to ``device`` (non-blocking from pinned host memory to CUDA);
    anything else is returned as it is. On the CPU a tensor already there is returned unchanged (no copy)."""
    if isinstance(x, torch.Tensor):
        if x.device == device:
            return x
        if device.type == "cuda" and x.device.type == "cpu":
            return x.pin_memory().to(device, non_blocking=True)
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):  # an Observation, a batch
        return dataclasses.replace(x, **{f.name: to_device(getattr(x, f.name), device) for f in dataclasses.fields(x)
                                         if f.init})
    return x


def to_host(x):
    """Tensors in nested dicts/lists/tuples copied to the CPU (what checkpoints are written from)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: to_host(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_host(v) for v in x)
    return x


def host_to_device(a, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host numpy array (an env's observation) as a tensor on ``device``: to CUDA through a pinned buffer and a
    non-blocking copy; on the CPU, or for a tensor, ``torch.as_tensor`` (shares memory where it can, as before)."""
    if device.type == "cuda" and isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
        if dtype is not None:
            t = t.to(dtype)
        return t.pin_memory().to(device, non_blocking=True)
    return torch.as_tensor(a, dtype=dtype, device=device)


def cuda_rng_states() -> dict[str, torch.Tensor]:
    """Every visible GPU's RNG state (``torch_cuda_<i>``), for full-state checkpoints; empty without CUDA."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}


def set_cuda_rng_states(rng: dict[str, torch.Tensor]) -> None:
    """Restore the GPU RNG states saved by ``cuda_rng_states`` (ignored on a machine without those GPUs: the
    run then resumes statistically, not bit-exactly)."""
    if not torch.cuda.is_available():
        return
    for i in range(torch.cuda.device_count()):
        s = rng.get(f"torch_cuda_{i}")
        if s is not None:
            torch.cuda.set_rng_state(s, i)
