"""Option groups that several commands and policy families share, each field declared once with one default.

* ``PolicyShape``: the shape of a fresh policy (``--head``, ``--chunk-size``, ``--backbone``, ``--log-std-init``),
  the same flags for ``vlaforge sft`` (``pipeline.SFTArgs``) and ``vlaforge train`` (``train.config.TrainConfig``)
  and what a fresh ``--policy hf`` VLM is built with (``HFConfig.head`` / ``chunk_size`` are set from it, not
  flags).
* ``MemorySwitches``: LoRA and the memory switches of the large-VLM families (``HFConfig`` = ``--policy.*``,
  ``OpenVLAConfig``, ``SmolVLAConfig``); each family's config says which layers ``lora_targets="all-linear"``
  covers and what ``lora_rank 0`` trains. ``lora_target_modules`` and ``autocast_context`` are the pieces of
  code every family runs on them. ``VLMOptions`` adds the other ``--policy.*`` options that HF and OpenVLA
  policies both read (``openvla.model.config_from_flags`` passes exactly these on).
* ``SuiteDims``: what the suite fixes in a policy config (state and action dims, camera views), set by the
  trainer from the env spec (never a flag); ``TinyConfig``, ``HFConfig`` and ``OpenVLAConfig`` derive from it.

All four are plain dataclasses used as bases, so the flags keep their names (tyro reads inherited fields) and
the saved configs keep their keys. Inheritance puts these fields first in ``--help``.

    python -c "from vlaforge.policies.options import PolicyShape; print(PolicyShape())"
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import tyro

from vlaforge.checks import at_least, need
from vlaforge.policies.heads import HEADS
from vlaforge.policies.heads.gaussian import LOG_STD_MAX, LOG_STD_MIN
from vlaforge.schema import is_finite_number


@dataclass
class PolicyShape:
    """The shape of a fresh policy; a policy loaded with ``--init`` keeps its own (the flags are refused then)."""

    head: str = "gaussian"
    """action head of a fresh policy: gaussian | tokens | flow (the tiny VLA and --policy hf)"""
    chunk_size: int = 4
    """actions per decision C of a fresh policy (the tiny VLA, --policy hf and --policy openvla-oft)"""
    backbone: str = "vision"
    """backbone of a fresh tiny VLA: vision, or state (MLP on proprioception only; a debugging baseline)"""
    log_std_init: float | None = None
    """initial log-std of a fresh tiny VLA's Gaussian head (default: the model's -1, std 0.37, which suits RL from an
    SFT start; 0, std 1 as in Stable-Baselines3, suits RL from scratch: docs/benchmarks.md, peer check).
    --policy hf sets it with --policy.log-std-init"""

    def shape(self) -> dict:
        """The fields as ``build_policy`` keywords (also on a subclass such as ``TrainConfig``); an unset
        ``log_std_init`` is left out, so the model's default applies."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(PolicyShape)}
        if out["log_std_init"] is None:
            del out["log_std_init"]
        return out

    def check(self) -> None:
        """``--head``, ``--backbone``, ``--chunk-size`` and ``--log-std-init`` of a fresh policy (sft and train)."""
        need(self.head in HEADS, f"--head '{self.head}' is unknown; choose one of {', '.join(HEADS)}")
        need(self.backbone in ("vision", "state"), f"--backbone '{self.backbone}' is unknown; choose vision or state")
        at_least("--chunk-size", self.chunk_size, 1)
        if self.log_std_init is not None:
            need(self.head == "gaussian", f"--log-std-init sets the Gaussian head's initial spread; the {self.head} "
                                          "head has none: pass --head gaussian or drop --log-std-init")
            need(is_finite_number(self.log_std_init) and LOG_STD_MIN <= self.log_std_init <= LOG_STD_MAX,
                 f"--log-std-init must be in [{LOG_STD_MIN}, {LOG_STD_MAX}] (the Gaussian head's clamp); got "
                 f"{self.log_std_init}")


@dataclass
class MemorySwitches:
    """LoRA and memory switches of a large VLM, each independent (docs/hf.md, ``benchmarks/memory.py``)."""

    lora_rank: int = 0
    """LoRA rank via peft (0 = no adapters: the family's own trainable set, see its docs)"""
    lora_alpha: int = 32
    """LoRA alpha (scale alpha/rank)"""
    lora_dropout: float = 0.0
    """LoRA dropout (keep 0 for RL: dropout makes re-scored log-probs differ from the rollout's)"""
    lora_targets: str = "all-linear"
    """peft target_modules: 'all-linear' (the family's linear layers) or comma-separated module names"""
    gradient_checkpointing: bool = False
    """recompute the network's activations in backward instead of storing them"""
    autocast: bool = False
    """bf16 autocast for the network's forward (heads, log-probs and losses stay fp32)"""
    weights_dtype: Literal["float32", "bfloat16"] = "float32"
    """storage dtype of the frozen base weights (LoRA adapters and heads stay fp32)"""
    micro_batch: int = 0
    """split every learner minibatch into micro-batches of this size, accumulating gradients (0 = off)"""
    optimizer_on_cpu: bool = False
    """keep the optimizer's moments (and fp32 master weights) in host memory; only useful on a GPU"""


@dataclass
class VLMOptions(MemorySwitches):
    """The ``--policy.*`` options an HF and an OpenVLA policy both read (SmolVLA takes its own subset)."""

    path: str | None = None
    """local directory of the model (no downloads; each family's docs name the files it reads)"""
    max_text_tokens: int = 128
    """fixed text length of every prompt (left-padded); longer prompts are refused"""
    head_hidden: int = 256
    """hidden width of the continuous action head and the value head"""
    value_head: bool = True
    """build a value head (PPO)"""


@dataclass
class SuiteDims:
    """The dims a suite fixes in a policy's config (the trainer sets them from the env spec; not flags)."""

    state_dim: Annotated[int, tyro.conf.Suppress] = 2
    """proprioceptive state dims S"""
    action_dim: Annotated[int, tyro.conf.Suppress] = 2
    """action dims A"""
    views: Annotated[int, tyro.conf.Suppress] = 1
    """camera views V"""


def lora_target_modules(targets: str) -> str | list[str]:
    """``lora_targets`` as peft's ``target_modules``: 'all-linear' as it is, else the comma-separated names."""
    return targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]


def autocast_context(on: bool, device: torch.device):
    """bf16 autocast on ``device`` when the ``autocast`` switch is on, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


_VLM_BOUNDS = {"state_dim": 4096, "action_dim": 4096, "views": 16, "image_size": 4096, "chunk_size": 1024,
               "n_bins": 65536, "head_hidden": 16384, "max_text_tokens": 65536, "lora_rank": 4096, "lora_alpha": 65536,
               "micro_batch": 65536, "num_images": 16, "flow_steps": 1024}
"""upper bounds of the whole-number fields of the VLM families' configs (the backbone's own sizes come from its
folder); each must also be >= 0 (0: "from the released config" / off)"""


def vlm_config_problems(d: dict) -> list[str]:
    """The registry's ``check_config`` of the VLM families (hf, smolvla, openvla): whole-number fields in
    [0, bound], every number finite, ``lora_dropout`` in [0, 1). Their parameter bytes are the backbone's (the
    released folder's config; OpenVLA's is bounded by ``openvla.prismatic.prismatic_problem``)."""
    out = []
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, int) and k in _VLM_BOUNDS and not 0 <= v <= _VLM_BOUNDS[k]:
            out.append(f"'{k}' = {str(v)[:24]} is outside [0, {_VLM_BOUNDS[k]}]")
        elif isinstance(v, float) or (isinstance(v, int) and k not in _VLM_BOUNDS):
            if not is_finite_number(v):
                out.append(f"'{k}' = {str(v)[:24]} is not finite")
    dropout = d.get("lora_dropout", 0.0)
    if not out and isinstance(dropout, (int, float)) and not 0 <= dropout < 1:
        out.append(f"'lora_dropout' = {dropout} is outside [0, 1)")
    return out
