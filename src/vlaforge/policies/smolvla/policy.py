"""SmolVLA as a vlaforge policy: ``--policy smolvla --policy.path DIR`` (DIR: a LeRobot SmolVLA checkpoint).

Implements ``vlaforge.policies.base.Policy`` on LeRobot's network (``model.py``), so every algorithm,
recipe and the eval/SFT commands run it unchanged.

Actions. The network denoises a chunk of ``chunk_size`` (50 in the release) actions padded to
``max_action_dim`` (32), in the space normalised by the checkpoint's statistics, from t=1 (noise) to
t=0 in ``num_steps`` (10) steps -- the same convention as ``heads/flow.py`` (x_t = t*x1 + (1-t)*x0,
v = x1 - x0). The policy exposes the first ``n_action_steps`` of them (LeRobot executes those before
replanning) and the first ``action_dim`` dims, unnormalised and clipped to the env's [-1, 1] box.

RL likelihood. Sampling is ``heads/flow.py``'s marginal-preserving SDE (noise level a =
``flow_noise`` x temperature, σ_t = a*sqrt(t/(1-t)), σ at t=1 taken at the next grid point), with
exact Gaussian log-densities per denoising step; the whole chain (N, K+1, chunk_size,
max_action_dim) is stored in ``taken["chain"]`` and ``evaluate`` re-scores it with one batched pass
of the expert over all K steps, reusing one VLM prefix pass. Where this differs: only the exposed
block -- the first ``n_action_steps`` x ``action_dim`` entries -- takes stochastic steps and is
scored; the padded action dims and the unexecuted tail of the chunk follow the ODE (deterministic
given the stored chain, not scored), so the log-prob has the shape (N, C, A) of the actions sent,
and scoring treats those entries as given (as π_RL's mixed ODE/SDE sampler treats its ODE steps).
Deterministic acting (evaluation) is the Euler ODE from x1 = 0, the prior's mode; LeRobot instead
integrates the ODE from a random x1 (``act(obs, noise=...)`` with ``torch.randn`` reproduces that).

DSRL-style noise steering: ``act(obs, deterministic, noise=w)`` starts the chain from ``w`` ((N, C, A):
the exposed block, zeros elsewhere; or the full (N, chunk_size, max_action_dim)), so a noise-space
policy can steer the frozen flow policy; with ``deterministic=True`` the action is a deterministic
function of (obs, w).

SFT (``sft_loss``): LeRobot's flow-matching loss, t ~ Beta(1.5, 1)*0.999 + 0.001, mean squared
velocity error over the exposed, executed entries only.

Value head: an MLP on the masked mean of the VLM's final (normed) prefix hidden states (shared
backbone; no gradient reaches the VLM through it unless the VLM trains).

What trains (LeRobot's fine-tuning defaults, read from the checkpoint's config): with
``train_expert_only`` the VLM is frozen and only the expert, the projections (and the state
projection when ``train_state_proj``) and the value head learn. ``lora_rank > 0``: peft LoRA adapters
injected in place (module names kept, ``base_layer``/``lora_A``/``lora_B`` added) on the expert's and
the projections' linear layers (``lora_targets="all-linear"``) or on the named modules (a
comma-separated list of module-name suffixes, VLM modules included); every base weight is then
frozen, and the reference policy (TPO ``--tpo.reference base``) is the same model with adapters
disabled. Memory switches as ``--policy hf``: ``gradient_checkpointing`` (VLM, vision tower and expert
layers), ``autocast`` (bf16 compute; SDE maths, log-probs and losses fp32), ``weights_dtype=bfloat16``
(frozen weights stored in bf16), ``micro_batch``, ``optimizer_on_cpu``.

    vlaforge train --policy smolvla --policy.path ~/models/smolvla_libero --suite libero --algo ppo
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

import vlaforge.policies.smolvla.obs as O
from vlaforge.policies.heads.common import mlp
from vlaforge.policies.heads.flow_chunk import FlowChunkPolicy, NoiseSteering, flow_grid
from vlaforge.policies.options import MemorySwitches
from vlaforge.policies.smolvla.model import Arch, SmolVLAModel, repeat_kv
from vlaforge.types import Observation

__all__ = ["SmolVLA", "SmolVLAConfig", "flow_grid"]
LOBOT_DEFAULT_TARGETS = (r"vlm_with_expert\.lm_expert\..*_proj|state_proj|action_in_proj|action_out_proj|"
                         r"action_time_mlp_in|action_time_mlp_out")


@dataclass
class SmolVLAConfig(MemorySwitches, NoiseSteering):
    """A SmolVLA policy: LeRobot's config and the VLM's (as read from the checkpoint) and vlaforge's switches.
    ``lora_rank 0`` trains what the checkpoint's fine-tuning flags say; ``lora_targets all-linear``: the expert's
    and the projections' linear layers (else comma-separated module-name suffixes); the SDE maths stays fp32
    under ``autocast``."""

    lerobot: dict[str, Any] = field(default_factory=dict)
    """LeRobot's config.json of the checkpoint (features, statistics modes, architecture)"""
    vlm: dict[str, Any] = field(default_factory=dict)
    """the VLM's transformers config (``to_dict()``)"""
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
    """camera flip before the model: auto | none | hflip | vflip | rot180 (obs.py)"""

    def __post_init__(self):
        """Fill the dims left at 0 from LeRobot's features (they are saved, so that a checkpoint's config.json
        states them like every other family's)."""
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

    # -- derived from the checkpoint ---------------------------------------------------------
    @property
    def image_keys(self) -> list[str]:
        return [k for k, v in self.lerobot["input_features"].items() if v.get("type") == "VISUAL"]

    @property
    def chunk_size(self) -> int:
        """actions exposed per decision (LeRobot's n_action_steps)"""
        return int(self.lerobot.get("n_action_steps", self.lerobot.get("chunk_size", 50)))

    @property
    def num_steps(self) -> int:
        return int(self.lerobot.get("num_steps", 10))

    def arch(self) -> Arch:
        names = {f for f in Arch.__dataclass_fields__}
        return Arch(**{k: v for k, v in self.lerobot.items() if k in names})


class SmolVLA(FlowChunkPolicy):
    """See the module docstring. Implements ``vlaforge.policies.base.Policy`` through ``FlowChunkPolicy``'s seams."""

    family_label = "SmolVLA"
    lora_default_targets = LOBOT_DEFAULT_TARGETS

    def __init__(self, cfg: SmolVLAConfig, tokenizer):
        super().__init__()
        import transformers

        lr = cfg.lerobot
        if cfg.flow_noise < 0:
            raise ValueError(f"--policy.flow-noise must be >= 0 (got {cfg.flow_noise})")
        self.cfg = cfg
        arch = cfg.arch()
        if cfg.chunk_size > arch.chunk_size:
            raise ValueError(f"n_action_steps={cfg.chunk_size} exceeds chunk_size={arch.chunk_size} in the checkpoint")
        if cfg.action_dim > arch.max_action_dim or cfg.state_dim > arch.max_state_dim:
            raise ValueError("the checkpoint's state/action dims exceed max_state_dim/max_action_dim")
        vlm_cfg = transformers.AutoConfig.for_model(**cfg.vlm)
        self.model = SmolVLAModel(vlm_cfg, arch)
        self.tokenizer = tokenizer
        self.chunk_size, self.action_dim = cfg.chunk_size, cfg.action_dim
        self.micro_batch = cfg.micro_batch
        self.transform = O.resolve_transform(cfg.image_transform, cfg.image_keys, cfg.state_dim, cfg.action_dim)
        self.register_buffer("state_shift", torch.zeros(cfg.state_dim))
        self.register_buffer("state_scale", torch.ones(cfg.state_dim))
        self.register_buffer("action_shift", torch.zeros(cfg.action_dim))
        self.register_buffer("action_scale", torch.ones(cfg.action_dim))
        D = self.context_dim = self.model.vlm_with_expert.config.text_config.hidden_size
        self.value_net = mlp(D, cfg.head_hidden, 1, layers=3) if cfg.value_head else None
        # what trains: LeRobot's flags, then LoRA freezes every base weight
        vw = self.model.vlm_with_expert
        if lr.get("train_expert_only", True):
            vw.vlm.requires_grad_(False)
        if lr.get("freeze_vision_encoder", True):
            vw.vlm_model.vision_model.requires_grad_(False)
        self.model.state_proj.requires_grad_(bool(lr.get("train_state_proj", True)))
        self._lora_layers: list[nn.Module] = []
        if cfg.lora_rank > 0:
            self._inject_lora()
        if cfg.weights_dtype == "bfloat16":
            for p in self.model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        if cfg.gradient_checkpointing:
            vw.gradient_checkpointing = True
            if hasattr(vw.vlm, "activation_checkpointing_enable"):  # transformers >= 5.2x
                vw.vlm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                vw.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mask = torch.zeros(arch.chunk_size, arch.max_action_dim, dtype=torch.bool)
        mask[:cfg.chunk_size, :cfg.action_dim] = True
        self.register_buffer("block", mask, persistent=False)  # the exposed, stochastic entries
        self._backbone = [p for p in vw.vlm.parameters() if p.requires_grad]
        bb = {id(p) for p in self._backbone}
        self._head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in bb]
        self._attach_saved_noise_policy()

    def train(self, mode: bool = True):
        super().train(mode)
        vw = self.model.vlm_with_expert
        if self.cfg.lerobot.get("train_expert_only", True):
            vw.vlm.eval()
        elif self.cfg.lerobot.get("freeze_vision_encoder", True):
            vw.vlm_model.vision_model.eval()
        return self

    # -- network ------------------------------------------------------------------------------
    def _prefix(self, obs: Observation):
        """-> (prefix hidden (N, Lp, D), kv, pad (N, Lp))"""
        lr, dev = self.cfg.lerobot, self.state_shift.device
        size = tuple(lr.get("resize_imgs_with_padding") or ())
        pix, masks = O.images_to_pixels(obs.images, self.cfg.views, int(lr.get("empty_cameras", 0)), size,
                                        self.transform, dev)
        ids, lmask = O.tokenize(self.tokenizer, list(obs.instructions), int(lr.get("tokenizer_max_length", 48)),
                                lr.get("pad_language_to", "longest"), dev)
        state = torch.as_tensor(obs.state, dtype=torch.float32, device=dev)
        state = O.pad_vector((state - self.state_shift) / self.state_scale, self.model.arch.max_state_dim)
        with self._autocast():
            return self.model.prefix(pix, masks, ids, lmask, state)

    def _velocity(self, kv, pad, x, t):
        with self._autocast():
            return self.model.velocity(kv, pad, x, t)

    def _repeat(self, kv, pad, k):
        return repeat_kv(kv, pad, k)

    # -- persistence ----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"family": "smolvla", **asdict(self.cfg)}

    def lerobot_state(self) -> dict[str, torch.Tensor]:
        """The network's weights under LeRobot's names (LoRA merged), for ``export_lerobot``."""
        model = self.model
        if self._lora_layers:
            model = copy.deepcopy(self.model)
            for m in [m for m in model.modules() if hasattr(m, "merge")]:
                m.merge()
            state = {}
            for k, v in model.state_dict().items():
                if "lora_" in k:
                    continue
                state[k.replace(".base_layer.", ".")] = v
        else:
            state = model.state_dict()
        return {f"model.{k}": v.float() for k, v in state.items()}
