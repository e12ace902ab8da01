"""A Hugging Face image-text model as a VLA: ``--policy hf --policy.path DIR``.

Any ``AutoModelForImageTextToText`` of a supported family (PaliGemma, Idefics3/SmolVLM,
Qwen2-VL/Qwen2.5-VL, LLaVA; see ``families.py``) loaded from a local directory, with its
tokenizer and image processor, becomes a policy implementing ``vlaforge.policies.base.Policy``:

* ``head="tokens"`` (default): OpenVLA/RT-2 binned actions. Each normalised action dim is one of
  ``n_bins`` uniform bins, written as one of the LAST ``n_bins`` vocabulary ids (the least-used
  ids, as OpenVLA does); the C*A tokens are decoded autoregressively after the prompt. The
  softmax runs over the action bins only, at the sampling temperature, with output rows held
  in a head parameter initialised from the model's ``lm_head`` rows of those ids (so a
  pretrained VLA keeps its action knowledge, and a frozen backbone still has a trainable head).
* ``head="gaussian"`` / ``"flow"``: iRe-VLA's continuous head (token learner + MLP, learned
  log-std) or the flow-matching head, on the last hidden states of the prompt (reused from
  ``vlaforge.policies.heads``).
* value head: an MLP on the masked mean of the last hidden states, either of the shared
  backbone (``critic="shared"``, RL4VLA) or of a separate frozen copy (``critic="separate"``,
  VLA-RL).

Memory switches, each independent (measured in docs/benchmarks.md, ``benchmarks/memory.py``):
``lora_rank`` (peft LoRA; the reference policy is the same model with adapters disabled,
``reference()``), ``gradient_checkpointing``, ``autocast`` (bf16 compute; heads, log-probs
and losses stay fp32), ``weights_dtype="bfloat16"`` (store the frozen base in bf16; LoRA
adapters and heads stay fp32), ``micro_batch`` (gradient accumulation inside the algorithms'
update), ``critic``, ``TrainConfig.freeze_backbone`` and ``optimizer_on_cpu``.

Differences from the papers: the robot state enters as text in the prompt; decoding re-runs
the prompt for every action token (no KV cache), which costs C*A forwards per decision; with
``critic="separate"`` the critic's backbone is frozen (only its MLP learns).

    vlaforge train --policy hf --policy.path ~/models/smolvlm --policy.lora-rank 16 --algo ppo
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
import tyro
from torch import nn

from vlaforge.checks import at_least, finite, need, positive
from vlaforge.core.losses import token_cross_entropy
from vlaforge.envs import require
from vlaforge.errors import UsageError
from vlaforge.policies.base import Policy, denormalize, normalize
from vlaforge.policies.heads import HEADS
from vlaforge.policies.heads.common import VocabRows, mlp
from vlaforge.policies.heads.tokens import actions_to_tokens, tokens_to_actions
from vlaforge.policies.hf.families import check_vision_tower, detect_family
from vlaforge.policies.hf.offload import CPUOffloadAdamW
from vlaforge.policies.hf.processor import ObsProcessor
from vlaforge.policies.options import SuiteDims, VLMOptions, autocast_context, lora_target_modules
from vlaforge.types import ActionOutput, Observation


@dataclass
class HFConfig(SuiteDims, VLMOptions):
    """A Hugging Face VLM as a policy, and its memory switches (saved as JSON with the policy). ``lora_rank 0``
    trains the full backbone; ``lora_targets all-linear``: every linear layer of the model."""

    trust_remote_code: bool = False
    """run the model's own Python code (remote-code checkpoints); off unless you trust the files. Taken only
    from the command line: never saved with a checkpoint, never read from one"""
    head: Annotated[Literal["tokens", "gaussian", "flow"], tyro.conf.Suppress] = "tokens"
    """action head: binned action tokens of the LM, or a continuous (gaussian / flow) head on hidden states
    (set from the train config's --head)"""
    n_bins: int = 256
    """bins per action dim for the token head (uses the last n_bins vocabulary ids)"""
    chunk_size: Annotated[int, tyro.conf.Suppress] = 4
    """actions per decision C (set from the train config's --chunk-size)"""
    image_size: Annotated[int, tyro.conf.Suppress] = 64
    """rendered image size of the suite (the image processor resizes to the model's size)"""
    log_std_init: float = -1.0
    """initial log-std of the gaussian head"""
    flow_steps: int = 5
    """denoising steps of the flow head"""
    flow_noise: float = 0.5
    """noise level of the flow head's SDE sampler"""
    critic: Literal["shared", "separate"] = "shared"
    """value head on the policy's backbone (shared), or on a separate frozen copy of the base model"""

    def check(self) -> None:
        """``--policy.*`` numbers of an HF policy (read by ``--policy hf`` and the other VLM families)."""
        at_least("--policy.n-bins", self.n_bins, 2)
        at_least("--policy.max-text-tokens", self.max_text_tokens, 1)
        at_least("--policy.head-hidden", self.head_hidden, 1)
        finite("--policy.log-std-init", self.log_std_init)
        at_least("--policy.flow-steps", self.flow_steps, 2, " (one step leaves the flow head's noise scale undefined)")
        at_least("--policy.flow-noise", self.flow_noise, 0)
        at_least("--policy.lora-rank", self.lora_rank, 0, " (0 = no LoRA)")
        positive("--policy.lora-alpha", self.lora_alpha)
        need(0 <= self.lora_dropout < 1, f"--policy.lora-dropout must be in [0, 1); got {self.lora_dropout}")
        at_least("--policy.micro-batch", self.micro_batch, 0, " (0 = off)")


REMOTE_CODE_KEYS = ("auto_map", "custom_pipelines")
"""keys of a model's JSON files that make transformers import Python files shipped with the model"""


def remote_code_files(model_dir: str | Path) -> list[str]:
    """JSON files of a model directory that ask transformers to run the model's own Python code
    (``auto_map``: config, tokenizer, image processor, processor). Empty: nothing to run."""
    import json

    d = Path(model_dir)
    out = []
    if d.is_dir():
        for f in sorted(d.glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and any(k in data for k in REMOTE_CODE_KEYS):
                out.append(str(f))
    return out


def _load(path: str, trust_remote_code: bool, dtype: torch.dtype):
    p = Path(path).expanduser()
    if not p.is_dir() or not (p / "config.json").exists():
        raise UsageError(f"no Hugging Face model at '{path}' (expected a directory with config.json, the weights, "
                         "the tokenizer and the image processor, e.g. written by save_pretrained)")
    files = [] if trust_remote_code else remote_code_files(p)
    if files:  # refused before transformers reads anything: a file never decides to run code
        raise UsageError(f"'{files[0]}' asks to run the model's own Python code (auto_map); vlaforge runs it only "
                         "with the trust-remote-code flag on the command line (eval, sft: --trust-remote-code; "
                         "train: --policy.trust-remote-code), if you trust these files")
    transformers = require("transformers", "hf")
    kw = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    try:
        config = transformers.AutoConfig.from_pretrained(p, **kw)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UsageError(f"'{path}' needs its own code (e.g. OpenVLA); pass the trust-remote-code flag (eval, "
                             "sft: --trust-remote-code; train: --policy.trust-remote-code) if you trust it") from None
        raise UsageError(f"cannot read the config in '{path}': {str(e).splitlines()[0]}") from None
    family = detect_family(config)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(p, **kw)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"'{path}' has no usable tokenizer ({type(e).__name__}); save the processor "
                         "(tokenizer + image processor) next to the model") from None
    try:
        image_processor = transformers.AutoImageProcessor.from_pretrained(p, **kw)
    except (OSError, ValueError, TypeError) as e:
        raise UsageError(f"'{path}' has no image processor ({type(e).__name__}); save the processor "
                         "(preprocessor_config.json) next to the model") from None
    model = transformers.AutoModelForImageTextToText.from_pretrained(p, dtype=dtype, **kw)
    return family, model, tokenizer, image_processor


class HFVLA(nn.Module, Policy):
    """See the module docstring. Implements ``vlaforge.policies.base.Policy``."""

    def __init__(self, cfg: HFConfig, backbone_path: str | None = None, loaded=None):
        super().__init__()
        if not cfg.path and loaded is None:
            raise UsageError("--policy hf needs --policy.path DIR (a local Hugging Face image-text model)")
        self.cfg = cfg
        self.chunk_size, self.action_dim = cfg.chunk_size, cfg.action_dim
        self.micro_batch = cfg.micro_batch
        wdtype = torch.bfloat16 if cfg.weights_dtype == "bfloat16" else torch.float32
        if loaded is None:
            loaded = _load(backbone_path or cfg.path, cfg.trust_remote_code, wdtype)
        family, model, tokenizer, image_processor = loaded
        check_vision_tower(model, family)
        model.to(wdtype)
        self.family = family
        self.proc = ObsProcessor(family, model.config, tokenizer, image_processor, cfg.max_text_tokens)
        vocab = model.lm_head.weight.shape[0]
        D = model.config.get_text_config().hidden_size
        self.critic_backbone = None
        if cfg.value_head and cfg.critic == "separate":
            base_for_critic = model if backbone_path is None else _load(cfg.path, cfg.trust_remote_code, wdtype)[1]
            self.critic_backbone = copy.deepcopy(base_for_critic).requires_grad_(False).eval()
        if cfg.head == "tokens":
            if cfg.n_bins >= vocab:
                raise UsageError(f"n_bins={cfg.n_bins} does not fit the vocabulary of {vocab} ids; lower --policy.n-bins")
            self.first_action_id = vocab - cfg.n_bins
            self.head = VocabRows(model.lm_head.weight[self.first_action_id:])
        else:
            self.head = HEADS[cfg.head](D, cfg.chunk_size, cfg.action_dim, hidden=cfg.head_hidden, n_bins=cfg.n_bins,
                                        log_std_init=cfg.log_std_init, steps=cfg.flow_steps, noise=cfg.flow_noise)
        self.value_net = mlp(D, cfg.head_hidden, 1, layers=3) if cfg.value_head else None
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        self.ref_head = None
        if cfg.lora_rank > 0:
            peft = require("peft", "hf")
            lcfg = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                   target_modules=lora_target_modules(cfg.lora_targets))
            try:
                model = peft.get_peft_model(model, lcfg)
            except ValueError as e:
                raise UsageError(f"LoRA targets '{cfg.lora_targets}' match no module of this model: "
                                 f"{str(e).splitlines()[0]}") from None
            self.ref_head = copy.deepcopy(self.head).requires_grad_(False)  # the reference's head: frozen
        self.vlm = model
        # the backbone's trainable set, fixed here (LoRA adapters, or every weight without LoRA) so that
        # freezing it (iRe-VLA's RL stage) and unfreezing it again find the same tensors
        self._backbone = [p for p in model.parameters() if p.requires_grad]
        self._use_ref = False
        self.register_buffer("act_lo", -torch.ones(cfg.action_dim))
        self.register_buffer("act_hi", torch.ones(cfg.action_dim))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.critic_backbone is not None:  # the frozen critic copy never runs in training mode
            self.critic_backbone.eval()
        return self

    # -- parameter groups ---------------------------------------------------------------------
    def base_model(self):
        """The transformers model (LoRA layers injected in place when LoRA is on)."""
        return self.vlm.get_base_model() if self.cfg.lora_rank > 0 else self.vlm

    def backbone_parameters(self):
        return list(self._backbone)

    def head_parameters(self):
        return list(self.head.parameters())

    def value_parameters(self):
        return list(self.value_net.parameters()) if self.value_net is not None else []

    def set_action_stats(self, lo, hi) -> None:
        self.act_lo.copy_(torch.as_tensor(lo, dtype=torch.float32))
        self.act_hi.copy_(torch.as_tensor(hi, dtype=torch.float32))

    @contextlib.contextmanager
    def reference(self):
        """Score with the reference policy: the same weights with LoRA adapters disabled and the
        head as it was when the adapters were attached (no second copy of the backbone)."""
        if self.cfg.lora_rank <= 0:
            raise ValueError("the reference policy is the model with LoRA adapters disabled; build the policy with "
                             "--policy.lora-rank > 0 (or use the rollout's log-probs as reference)")
        self._use_ref = True
        try:
            with self.vlm.disable_adapter():
                yield self
        finally:
            self._use_ref = False

    # -- backbone -----------------------------------------------------------------------------
    def _autocast(self):
        return autocast_context(self.cfg.autocast, self.act_lo.device)

    def _hidden(self, inputs: dict, model=None) -> torch.Tensor:
        """Last hidden states (N, L, D) in fp32, zero on padding."""
        model = model if model is not None else self.base_model()
        with self._autocast():
            h = model.model(**inputs, use_cache=False).last_hidden_state
        return h.float() * inputs["attention_mask"].unsqueeze(-1).to(torch.float32)

    def _inputs(self, obs: Observation) -> dict:
        dtype = next(self.base_model().parameters()).dtype
        return self.proc(obs, self.act_lo.device, dtype)

    def _value(self, inputs: dict, h: torch.Tensor | None) -> torch.Tensor | None:
        if self.value_net is None:
            return None
        if self.critic_backbone is not None:
            with torch.no_grad():
                h = self._hidden(inputs, self.critic_backbone)
        m = inputs["attention_mask"].unsqueeze(-1).float()
        pooled = (h[:, :m.shape[1]] * m).sum(1) / m.sum(1).clamp_min(1)
        return self.value_net(pooled)[:, 0]

    def _head(self):
        return self.ref_head if self._use_ref else self.head

    # -- token head -----------------------------------------------------------------------------
    def _token_logits(self, inputs: dict, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced bin logits (N, K, n_bins) for bin ids ``tokens`` (N, K), and the hidden states."""
        L = inputs["input_ids"].shape[1]
        h = self._hidden(self.proc.append_tokens(inputs, tokens[:, :-1] + self.first_action_id))
        return self._head()(h[:, L - 1:]), h

    def _sample_tokens(self, inputs: dict, deterministic: bool, temperature: float):
        n, K = inputs["input_ids"].shape[0], self.chunk_size * self.action_dim
        toks = torch.zeros(n, 0, dtype=torch.long, device=self.act_lo.device)
        logps, h0 = [], None
        for _ in range(K):
            h = self._hidden(self.proc.append_tokens(inputs, toks + self.first_action_id))
            h0 = h if h0 is None else h0
            logp = F.log_softmax(self._head()(h[:, -1]) / temperature, -1)
            tok = logp.argmax(-1) if deterministic else torch.multinomial(logp.exp(), 1)[:, 0]
            logps.append(logp.gather(1, tok[:, None])[:, 0])
            toks = torch.cat([toks, tok[:, None]], 1)
        shape = (n, self.chunk_size, self.action_dim)
        return tokens_to_actions(toks, self.cfg.n_bins).view(shape), torch.stack(logps, 1).view(shape), toks, h0

    # -- Policy protocol -----------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Observation, deterministic: bool = False, temperature: float = 1.0) -> ActionOutput:
        inputs = self._inputs(obs)
        if self.cfg.head == "tokens":
            x, log_prob, toks, h = self._sample_tokens(inputs, deterministic, temperature)
            taken = {"tokens": toks}
        else:
            h = self._hidden(inputs)
            x, log_prob, taken = self._head().sample(h, deterministic, temperature)
        return ActionOutput(denormalize(x, self.act_lo, self.act_hi), log_prob.float(), self._value(inputs, h), taken)

    def evaluate(self, obs: Observation, taken: dict[str, torch.Tensor], temperature: float = 1.0):
        inputs = self._inputs(obs)
        shape = (len(obs), self.chunk_size, self.action_dim)
        if self.cfg.head == "tokens":
            tokens = taken["tokens"].long()
            logits, h = self._token_logits(inputs, tokens)
            logp = F.log_softmax(logits / temperature, -1)
            lp = logp.gather(2, tokens.unsqueeze(-1))[..., 0].view(shape)
            ent = -(logp.exp() * logp).sum(-1).view(shape)
        else:
            h = self._hidden(inputs)
            lp, ent = self._head().evaluate(h, taken, temperature)
        return lp, ent, self._value(inputs, h)

    def value(self, obs: Observation) -> torch.Tensor:
        if self.value_net is None:
            raise ValueError("this policy has no value head (built with value_head=False)")
        inputs = self._inputs(obs)
        return self._value(inputs, None if self.critic_backbone is not None else self._hidden(inputs))

    def sft_loss(self, obs: Observation, expert_actions: torch.Tensor, mask: torch.Tensor | None = None):
        target = normalize(torch.as_tensor(expert_actions, dtype=torch.float32, device=self.act_lo.device),
                           self.act_lo, self.act_hi)
        inputs = self._inputs(obs)
        if self.cfg.head == "tokens":
            tokens = actions_to_tokens(target, self.cfg.n_bins)  # (N, C, A)
            logits, _ = self._token_logits(inputs, tokens.flatten(1))
            loss, m = token_cross_entropy(logits.view(*tokens.shape, -1), tokens, mask)
            return loss, {"sft/ce": m["ce"], "sft/token_acc": m["token_accuracy"]}
        return self.head.sft_loss(self._hidden(inputs), target, mask)

    # -- persistence -----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        cfg = asdict(self.cfg)
        cfg.pop("trust_remote_code")  # a command-line decision, never stored in (or read from) a checkpoint
        return {"family": "hf", **cfg}

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the backbones (heads, reference head, value MLP, action statistics)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("vlm.", "critic_backbone."))}

    def optimizer_class(self):
        if self.cfg.optimizer_on_cpu:
            return CPUOffloadAdamW
        return torch.optim.AdamW
