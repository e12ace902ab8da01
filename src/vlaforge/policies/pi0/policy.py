"""π0 as a vlaforge policy: ``--policy pi0 --policy.path DIR`` (DIR: a LeRobot π0 checkpoint).

Implements ``vlaforge.policies.base.Policy`` on LeRobot's π0 network (``model.py``) through
``heads/flow_chunk.py``'s seams, so every algorithm, recipe and the eval/SFT commands run it unchanged.

Actions. The network denoises a chunk of ``chunk_size`` (50) actions padded to ``max_action_dim`` (32), in the
space normalised by the checkpoint's statistics, from t=1 (noise) to t=0 in ``num_inference_steps`` (10) steps.
The policy exposes the first ``n_action_steps`` of them and the first ``action_dim`` dims, unnormalised and
clipped to the env's [-1, 1] box.

RL likelihood (Flow-SDE, exact step log-probs), DSRL-style ``act(obs, deterministic, noise=w)``, deterministic
acting from x1 = 0 and the SFT loss are ``FlowChunkPolicy``'s (see its docstring); the cache the velocity reads is
the prefix's per-layer keys/values plus the normalised state, which π0 feeds to the EXPERT as the first suffix token
(SmolVLA puts it in the prefix).

Value head: an MLP on the masked mean of PaliGemma's final (normed) prefix hidden states.

What trains (LeRobot's flags, read from the checkpoint's config; LeRobot's defaults train everything):
``train_expert_only`` freezes PaliGemma, ``freeze_vision_encoder`` the SigLIP tower. ``lora_rank > 0``: peft LoRA
in place on the expert's linear layers and the projections (``lora_targets="all-linear"``; LeRobot's own PEFT
default is narrower: the expert's q/v projections and the projections) or on named module suffixes; every base
weight is then frozen and the reference policy (TPO ``--tpo.reference base``) is the model with adapters off.
Memory switches as ``--policy smolvla``: ``gradient_checkpointing`` (PaliGemma layers, SigLIP, expert layers),
``autocast`` (bf16 compute; SDE maths, log-probs and losses fp32), ``weights_dtype=bfloat16`` (frozen weights),
``micro_batch``, ``optimizer_on_cpu``.

    vlaforge train --policy pi0 --policy.path ~/models/pi0_libero --suite libero --algo ppo --policy.lora-rank 16
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import vlaforge.policies.pi0.obs as O
from vlaforge.policies.heads.common import mlp
from vlaforge.policies.heads.flow_chunk import FlowChunkPolicy, NoiseSteering
from vlaforge.policies.options import MemorySwitches
from vlaforge.policies.pi0.model import Arch, PI0Model
from vlaforge.policies.smolvla.model import repeat_kv
from vlaforge.policies.smolvla.obs import resolve_transform
from vlaforge.types import Observation

PI0_DEFAULT_TARGETS = (r"paligemma_with_expert\.gemma_expert\..*_proj|state_proj|action_in_proj|action_out_proj|"
                       r"action_time_mlp_in|action_time_mlp_out")


@dataclass
class Pi0Config(MemorySwitches, NoiseSteering):
    """A π0 policy: LeRobot's config (as read from the checkpoint) and vlaforge's switches. ``lora_rank 0`` trains
    what the checkpoint's fine-tuning flags say; ``lora_targets all-linear``: the expert's and the projections'
    linear layers (else comma-separated module-name suffixes); the SDE maths stays fp32 under ``autocast``."""

    lerobot: dict[str, Any] = field(default_factory=dict)
    """LeRobot's config.json of the checkpoint (features, statistics modes, architecture)"""
    state_dim: int = 0
    """proprioceptive state dims (0: from the checkpoint's observation.state feature)"""
    action_dim: int = 0
    """action dims (0: from the checkpoint's action feature)"""
    views: int = 0
    """camera images read (0: the checkpoint's VISUAL features)"""
    image_size: int = 0
    """rendered image size asked of the suite (0: the first VISUAL feature's width)"""
    flow_noise: float = 0.5
    """noise level a of the SDE sampler (RL); 0 = LeRobot's ODE, no log-probs"""
    value_head: bool = True
    """build a value head (PPO)"""
    head_hidden: int = 256
    """hidden width of the value MLP"""
    image_transform: str = "auto"
    """camera flip before the model: auto | none | hflip | vflip | rot180 (smolvla/obs.py)"""

    def __post_init__(self):
        """Fill the dims left at 0 from LeRobot's features (saved, so that config.json states them)."""
        if not self.lerobot:
            return
        feats = self.lerobot["input_features"]
        derived = {"state_dim": int(feats["observation.state"]["shape"][0]),
                   "action_dim": int(self.lerobot["output_features"]["action"]["shape"][0]),
                   "views": len(self.image_keys), "image_size": int(feats[self.image_keys[0]]["shape"][-1])}
        for k, v in derived.items():
            if getattr(self, k) == 0:
                setattr(self, k, v)
            elif getattr(self, k) != v:
                raise ValueError(f"{k}={getattr(self, k)} disagrees with the LeRobot features ({v})")

    @property
    def image_keys(self) -> list[str]:
        return [k for k, v in self.lerobot["input_features"].items() if v.get("type") == "VISUAL"]

    @property
    def chunk_size(self) -> int:
        """actions exposed per decision (LeRobot's n_action_steps)"""
        return int(self.lerobot.get("n_action_steps", self.lerobot.get("chunk_size", 50)))

    @property
    def num_steps(self) -> int:
        return int(self.lerobot.get("num_inference_steps", 10))

    def arch(self) -> Arch:
        from vlaforge.policies.pi0.lerobot import arch_of

        return arch_of(self.lerobot)


class Pi0(FlowChunkPolicy):
    """See the module docstring. Implements ``vlaforge.policies.base.Policy`` through ``FlowChunkPolicy``'s seams."""

    family_label = "pi0"
    lora_default_targets = PI0_DEFAULT_TARGETS

    def __init__(self, cfg: Pi0Config, tokenizer):
        super().__init__()
        lr = cfg.lerobot
        if cfg.flow_noise < 0:
            raise ValueError(f"--policy.flow-noise must be >= 0 (got {cfg.flow_noise})")
        self.cfg = cfg
        arch = cfg.arch()
        if cfg.chunk_size > arch.chunk_size:
            raise ValueError(f"n_action_steps={cfg.chunk_size} exceeds chunk_size={arch.chunk_size} in the checkpoint")
        if cfg.action_dim > arch.max_action_dim or cfg.state_dim > arch.max_state_dim:
            raise ValueError("the checkpoint's state/action dims exceed max_state_dim/max_action_dim")
        self.model = PI0Model(arch)
        self.tokenizer = tokenizer
        self.chunk_size, self.action_dim = cfg.chunk_size, cfg.action_dim
        self.micro_batch = cfg.micro_batch
        self.transform = resolve_transform(cfg.image_transform, cfg.image_keys, cfg.state_dim, cfg.action_dim)
        self.register_buffer("state_shift", torch.zeros(cfg.state_dim))
        self.register_buffer("state_scale", torch.ones(cfg.state_dim))
        self.register_buffer("action_shift", torch.zeros(cfg.action_dim))
        self.register_buffer("action_scale", torch.ones(cfg.action_dim))
        self.context_dim = arch.vlm["width"]
        self.value_net = mlp(self.context_dim, cfg.head_hidden, 1, layers=3) if cfg.value_head else None
        pw = self.model.paligemma_with_expert
        if lr.get("train_expert_only", False):
            pw.paligemma.requires_grad_(False)
        if lr.get("freeze_vision_encoder", False):
            pw.paligemma.model.vision_tower.requires_grad_(False)
        self._lora_layers: list[nn.Module] = []
        if cfg.lora_rank > 0:
            self._inject_lora()
        if cfg.weights_dtype == "bfloat16":
            for p in self.model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        if cfg.gradient_checkpointing:
            pw.gradient_checkpointing = True
            tower = pw.paligemma.model.vision_tower
            if hasattr(tower, "activation_checkpointing_enable"):  # transformers >= 5.2x (as smolvla)
                tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mask = torch.zeros(arch.chunk_size, arch.max_action_dim, dtype=torch.bool)
        mask[:cfg.chunk_size, :cfg.action_dim] = True
        self.register_buffer("block", mask, persistent=False)  # the exposed, stochastic entries
        self._backbone = [p for p in pw.paligemma.parameters() if p.requires_grad]
        bb = {id(p) for p in self._backbone}
        self._head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in bb]
        self._attach_saved_noise_policy()

    def train(self, mode: bool = True):
        super().train(mode)
        pw = self.model.paligemma_with_expert
        if self.cfg.lerobot.get("train_expert_only", False):
            pw.paligemma.eval()
        elif self.cfg.lerobot.get("freeze_vision_encoder", False):
            pw.paligemma.model.vision_tower.eval()
        return self

    # -- the seams ----------------------------------------------------------------------------
    def _prefix(self, obs: Observation):
        """-> (prefix hidden (N, Lp, W), (kv per layer, normalised padded state (N, max_state_dim)), pad (N, Lp))"""
        lr, dev, arch = self.cfg.lerobot, self.state_shift.device, self.model.arch
        pix, masks = O.images_to_pixels(obs.images, self.cfg.views, arch.image_size, self.transform, dev)
        ids, lmask = O.tokenize(self.tokenizer, list(obs.instructions), int(lr.get("tokenizer_max_length", 48)),
                                "max_length", dev)
        state = self._norm_state(obs, arch.max_state_dim)
        with self._autocast():
            h, kv, pad = self.model.prefix(pix, masks, ids, lmask)
        return h, (kv, state), pad

    def _velocity(self, cache, pad, x, t):
        kv, state = cache
        with self._autocast():
            return self.model.velocity(kv, pad, state, x, t)

    def _repeat(self, cache, pad, k):
        kv, state = cache
        kv, pad_r = repeat_kv(kv, pad, k)
        return (kv, state.repeat_interleave(k, 0) if k > 1 else state), pad_r

    # -- persistence ----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"family": "pi0", **asdict(self.cfg)}

    def lerobot_state(self) -> dict[str, torch.Tensor]:
        """The network's weights under this reader's LeRobot names (LoRA merged; ``lerobot.to_hub`` renames)."""
        model = self.model
        if self._lora_layers:
            model = copy.deepcopy(self.model)
            for m in [m for m in model.modules() if hasattr(m, "merge")]:
                m.merge()
            state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
        else:
            state = model.state_dict()
        return {f"model.{k}": v.float() for k, v in state.items()}
