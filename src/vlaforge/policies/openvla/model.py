"""OpenVLA and OpenVLA-OFT as vlaforge policies: ``--policy openvla|openvla-oft --policy.path DIR``.

The released model (``prismatic.py``: fused DINOv2+SigLIP, MLP projector, Llama-2) behind
``vlaforge.policies.base.Policy``. One decision = one model input built exactly as their
``predict_action`` builds it, batched with padding that changes nothing:

    [BOS] [I*P image patches] [proprio token (OFT)] [pad ...] [prompt tokens] ["▁" (29871 in Llama-2)]
    prompt = "In: What action should the robot take to {instruction.lower()}?\\nOut:"

Padding sits between the patches and the prompt, is masked as a key, and positions are counted over
real tokens only (``position_ids = cumsum(mask) - 1``), so every sample computes what it would alone.

* ``openvla``: the A action tokens of one step (chunk C = 1) decoded one after another after "▁",
  causal attention. Sampling and scoring use a softmax over the 256 action ids only (at the sampling
  temperature), with the output rows held in a head parameter initialised from ``lm_head``'s rows of
  those ids (a frozen backbone still has a trainable head; exporting writes them back). Greedy
  decoding equals their ``predict_action`` whenever their full-vocabulary argmax is an action id (the
  case for a trained model); logits over the whole vocabulary are the same numbers (tested).
  Bin index -> action exactly as theirs (``prismatic.bins_to_normalized``). The log-prob is that of
  the sampled tokens: no approximation.
* ``openvla-oft``: parallel decoding of a C x A chunk (empty action embeddings + stop token,
  bidirectional attention over the whole sequence, hidden states from the "▁" position on), the
  L1-regression MLP head and the proprio projector (``oft.py``). For RL the policy is
  ``x ~ N(mu, diag(exp(2 log_std)))`` around the regressed chunk ``mu`` (normalised space), with a
  learned, state-independent ``log_std`` (C, A): the regression head is deterministic, so it has no
  likelihood of its own, and the L1 variant was never trained to put mass on action tokens, so
  SimpleVLA-RL's token likelihood is not available for it. ``deterministic=True`` returns ``mu``
  (their inference). The env gets ``clip(x, -1, 1)`` un-normalised; the log-prob is that of ``x``.

Actions reach the env through the chosen dataset's statistics (``--openvla.unnorm-key``) and the
suite convention (``conventions.py``: LIBERO's gripper sign and mirrored frames). SFT targets go the
inverse way; ``set_action_stats`` (called by ``vlaforge sft`` with the demos' 1st/99th percentiles,
i.e. their q01/q99) replaces q01/q99 and keeps the mask.

Memory switches as ``--policy hf`` (``--policy.lora-rank`` on the Llama's linear layers, vision and
projector frozen under LoRA; ``--policy.gradient-checkpointing`` on the ViT blocks and the Llama
layers; ``--policy.autocast``; ``--policy.weights-dtype bfloat16``; ``--policy.micro-batch``).
Differences from the reference: no KV cache (each of the A tokens re-runs the sequence; the image
towers run once per decision); images resized in torch, not PIL; the value head (PPO) is an MLP on
the masked mean of the prefix's last hidden states.

How equivalence was checked without the real weights: ``tests/test_openvla.py`` writes a tiny random
checkpoint in the released layout (the module tree of their modeling_prismatic: timm-named ViTs with
``scale_factor`` LayerScales, projector fc1-3, ``language_model.*`` of a LlamaForCausalLM; sharded
safetensors + index; config.json with their fields), loads it here, and compares the full-vocabulary
logits after the prompt with an independent re-computation (a functional ViT written in the test from
the raw tensors, and a plain transformers LlamaForCausalLM fed [BOS, patches, prompt] unpadded, as
their forward does), and the decoded actions with their numpy formula.

    vlaforge train --policy openvla --policy.path ~/models/openvla-7b-finetuned-libero-spatial \\
        --openvla.unnorm-key libero_spatial --openvla.convention libero --suite libero --tasks spatial \\
        --policy.lora-rank 32 --policy.autocast --policy.weights-dtype bfloat16 --policy.gradient-checkpointing
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
import tyro
from torch import nn

import vlaforge.policies.openvla.conventions as conventions
from vlaforge.core.losses import token_cross_entropy
from vlaforge.envs import require
from vlaforge.policies.base import Policy
from vlaforge.policies.heads.common import VocabRows, mlp
from vlaforge.policies.hf.offload import CPUOffloadAdamW
from vlaforge.policies.openvla.oft import (
    L1RegressionActionHead,
    ProprioProjector,
    component_dims,
    find_component,
    load_component,
    load_into,
)
from vlaforge.policies.openvla.prismatic import (
    LayoutError,
    UserError,
    action_bounds,
    bins_to_normalized,
    choose_unnorm_key,
    load_prismatic,
    normalize_actions,
    normalized_to_bins,
    pixel_values,
    tower_normalization,
    unnormalize,
)
from vlaforge.policies.options import SuiteDims, VLMOptions, autocast_context, lora_target_modules
from vlaforge.types import ActionOutput, Observation

PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
EMPTY_TOKEN = "▁"  # SentencePiece's lone word-start piece, id 29871 in Llama-2: their predict_action appends it
FAMILIES = ("openvla", "openvla-oft")


@dataclass
class OpenVLAOptions:
    """OpenVLA / OpenVLA-OFT options (``--openvla.*``)."""

    unnorm_key: str | None = None
    """dataset statistics to (un)normalise actions with (a key of the checkpoint's norm_stats; needed when it has several)"""
    convention: Literal["none", "libero"] = "none"
    """suite conventions of the checkpoint's training data: 'libero' = mirrored frames + LIBERO gripper sign"""
    center_crop: float = 1.0
    """keep this central fraction of each image's area before resizing (0.9 for OFT / OpenVLA LIBERO fine-tunes)"""
    num_images: int = 0
    """OFT: cameras fed, in the suite's order (0 = all; LIBERO: agent view, wrist). OpenVLA always takes the first"""
    use_proprio: bool = True
    """OFT: feed the state through the proprio projector when the checkpoint has one"""
    log_std_init: float = -2.0
    """OFT: initial log-std of the RL Gaussian around the regressed chunk (normalised action units)"""


SHARED_FLAGS = tuple(f.name for f in fields(VLMOptions))
"""the ``--policy.*`` switches (HFConfig) an OpenVLA policy reads"""


def config_from_flags(family: str, policy_flags, options: OpenVLAOptions, chunk_size: int, spec, image_size: int) -> dict:
    """``build_policy(family, **...)`` keywords from ``--policy.*`` (an HFConfig), ``--openvla.*`` and the suite."""
    return {**{k: getattr(policy_flags, k) for k in SHARED_FLAGS}, **asdict(options),
            "chunk_size": chunk_size if family == "openvla-oft" else 1, "state_dim": spec.state_dim,
            "action_dim": spec.action_dim, "views": spec.image_shape[0], "image_size": image_size}


@dataclass
class OpenVLAConfig(SuiteDims, VLMOptions):
    """Everything an OpenVLA policy is rebuilt from (saved as JSON with the policy). ``path``: the released model's
    directory (config.json, model*.safetensors(+index), tokenizer; OFT component files). LoRA goes on the
    Llama's linear layers (``lora_rank 0``: every weight trains); checkpointing covers ViT blocks and Llama
    layers; ``head_hidden`` is the value MLP's width."""
    unnorm_key: str | None = None
    """see OpenVLAOptions"""
    convention: Literal["none", "libero"] = "none"
    """see OpenVLAOptions"""
    center_crop: float = 1.0
    """see OpenVLAOptions"""
    num_images: int = 0
    """see OpenVLAOptions"""
    use_proprio: bool = True
    """see OpenVLAOptions"""
    oft: bool = False
    """OpenVLA-OFT (parallel decoding + L1 head) instead of OpenVLA's autoregressive tokens"""
    chunk_size: Annotated[int, tyro.conf.Suppress] = 1
    """actions per decision (OpenVLA: 1; OFT: the chunk it was trained with, 8 for LIBERO)"""
    image_size: Annotated[int, tyro.conf.Suppress] = 224
    """rendered image size of the suite (resized to the towers' size)"""
    max_text_tokens: int = 48
    """fixed prompt length in tokens (longer instructions are refused)"""
    log_std_init: float = -2.0
    """OFT: initial log-std of the Gaussian around the regressed chunk (normalised action units)"""


def _tokenizer(path: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer reads config.json and warns about model_type 'openvla'
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as e:
        raise LayoutError(f"'{path}' has no usable tokenizer ({type(e).__name__}); keep the released tokenizer "
                          "files (tokenizer.json / tokenizer.model, tokenizer_config.json) beside the weights") from None
    finally:
        hf_logging.set_verbosity(level)
    empty = tok.convert_tokens_to_ids(EMPTY_TOKEN)
    if empty is None or empty == tok.unk_token_id or tok.bos_token_id is None:
        raise LayoutError(f"the tokenizer in '{path}' lacks the BOS or '{EMPTY_TOKEN}' token of Llama-2's vocabulary")
    return tok, int(empty)


def _norm_stats(path: Path, stats: dict) -> dict:
    """config.json's norm_stats, updated by dataset_statistics.json when present (OFT ships it)."""
    f = path / "dataset_statistics.json"
    if f.exists():
        try:
            stats = {**stats, **json.loads(f.read_text())}
        except json.JSONDecodeError:
            raise LayoutError(f"'{f}' is not valid JSON; re-download it") from None
    return stats


class OpenVLAPolicy(nn.Module, Policy):
    """See the module docstring. Implements ``vlaforge.policies.base.Policy``."""

    def __init__(self, cfg: OpenVLAConfig, weights_path: str | None = None, loaded=None):
        """``loaded = (PrismaticVLM, PrismaticConfig)`` skips reading weights (random real-size models for
        benchmarks); ``cfg.path`` still supplies the tokenizer and statistics."""
        super().__init__()
        if not cfg.path:
            raise UserError("--policy openvla needs --policy.path DIR (a released OpenVLA / OpenVLA-OFT directory)")
        if not 0.0 < cfg.center_crop <= 1.0:
            raise UserError(f"--openvla.center-crop must be in (0, 1]; got {cfg.center_crop}")
        src = Path(weights_path or cfg.path).expanduser()
        base = Path(cfg.path).expanduser()
        wdtype = torch.bfloat16 if cfg.weights_dtype == "bfloat16" else torch.float32
        vlm, pcfg = loaded if loaded is not None else load_prismatic(src, wdtype)
        self.cfg, self.pcfg = cfg, pcfg
        self.micro_batch = cfg.micro_batch
        self.tokenizer, self.empty_id = _tokenizer(base)
        self.norms = tower_normalization(pcfg, base)
        self.tower_size = pcfg.image_sizes[0]
        stats = _norm_stats(base, pcfg.norm_stats)
        key = choose_unnorm_key(stats, cfg.unnorm_key, f"checkpoint '{cfg.path}'")
        lo, hi, mask = action_bounds(stats[key])
        if len(lo) != cfg.action_dim:
            raise UserError(f"dataset '{key}' of '{cfg.path}' has {len(lo)}-D actions but the suite has {cfg.action_dim}-D; "
                             "pick the statistics of a matching dataset (--openvla.unnorm-key) or another suite")
        self.register_buffer("q01", lo)
        self.register_buffer("q99", hi)
        self.register_buffer("act_mask", mask)
        lm = vlm.language_model
        D = lm.config.hidden_size
        self.n_bins = pcfg.n_action_bins
        self.vocab = pcfg.vocab_size
        if self.vocab - self.n_bins < 0 or lm.lm_head.weight.shape[0] < self.vocab:
            raise LayoutError(f"'{cfg.path}': vocabulary {self.vocab} cannot hold {self.n_bins} action bins")
        self.chunk_size = cfg.chunk_size if cfg.oft else 1
        self.action_dim = cfg.action_dim
        self.num_images = 1 if not cfg.oft else (cfg.num_images or cfg.views)
        if self.num_images > cfg.views:
            raise UserError(f"--openvla.num-images {self.num_images} exceeds the suite's {cfg.views} camera(s)")
        # heads
        self.proprio_projector = None
        self.action_head = None
        if cfg.oft:
            self._build_oft(base, D, stats[key])
        self.head = VocabRows(lm.lm_head.weight[self.vocab - self.n_bins: self.vocab].flip(0))  # column b = bin b if not cfg.oft else None
        self.log_std = nn.Parameter(torch.full((self.chunk_size, cfg.action_dim), float(cfg.log_std_init))) \
            if cfg.oft else None
        self.value_net = mlp(D, cfg.head_hidden, 1, layers=3) if cfg.value_head else None
        if cfg.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            for t in vlm.vision_backbone.towers:
                t.grad_checkpointing = True
        lm.config.use_cache = False
        lm.config._attn_implementation = "sdpa"
        self.ref_head = None
        if cfg.lora_rank > 0:
            peft = require("peft", "hf")
            lcfg = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                   target_modules=lora_target_modules(cfg.lora_targets))
            try:
                vlm.language_model = peft.get_peft_model(lm, lcfg)
            except ValueError as e:
                raise UserError(f"LoRA targets '{cfg.lora_targets}' match no module of the Llama: "
                                 f"{str(e).splitlines()[0]}") from None
            vlm.vision_backbone.requires_grad_(False)
            vlm.projector.requires_grad_(False)
            self.ref_head = copy.deepcopy(self.head).requires_grad_(False) if self.head is not None else None
        self.vlm = vlm
        self._backbone = [p for p in vlm.parameters() if p.requires_grad]
        self._use_ref = False
        self._text_cache: dict[str, list[int]] = {}

    def _build_oft(self, base: Path, D: int, stats: dict) -> None:
        f = find_component(base, "action_head")
        if f is None:
            raise LayoutError(f"'{base}' has no OFT action head (action_head--*_checkpoint.pt or action_head*.safetensors); "
                              "use --policy openvla for a plain OpenVLA checkpoint")
        sd = load_component(f)
        if "model.fc2.weight" not in sd:
            raise LayoutError(f"'{f}' is not an L1-regression action head (diffusion heads are not supported)")
        a_dim, llm_dim = component_dims(sd, "action_head")
        if llm_dim != D or a_dim != self.cfg.action_dim:
            raise LayoutError(f"'{f}' maps {llm_dim}-D hidden states to {a_dim}-D actions; the model has {D}-D and the "
                              f"suite {self.cfg.action_dim}-D actions")
        self.action_head = L1RegressionActionHead(D, a_dim)
        load_into(self.action_head, sd, f)
        p = find_component(base, "proprio_projector") if self.cfg.use_proprio else None
        if p is not None:
            psd = load_component(p)
            s_dim, _ = component_dims(psd, "proprio")
            if s_dim != self.cfg.state_dim:
                raise UserError(f"'{p}' expects {s_dim}-D proprio but the suite gives {self.cfg.state_dim}-D state; "
                                 "pass --openvla.no-use-proprio or use the matching suite")
            if "proprio" not in stats:
                raise LayoutError(f"the statistics of '{base}' have no 'proprio' entry for the proprio projector")
            self.proprio_projector = ProprioProjector(D, s_dim)
            load_into(self.proprio_projector, psd, p)
            plo, phi, pmask = action_bounds(stats, "proprio")
            self.register_buffer("p01", plo)
            self.register_buffer("p99", phi)
            self.register_buffer("p_mask", pmask)

    # -- parameter groups -------------------------------------------------------------------------
    def base_lm(self):
        """The transformers LlamaForCausalLM (LoRA layers injected in place when LoRA is on)."""
        lm = self.vlm.language_model
        return lm.get_base_model() if self.cfg.lora_rank > 0 else lm

    def backbone_parameters(self):
        return list(self._backbone)

    def head_parameters(self):
        mods = [self.head, self.action_head, self.proprio_projector]
        ps = [p for m in mods if m is not None for p in m.parameters()]
        return ps + ([self.log_std] if self.log_std is not None else [])

    def value_parameters(self):
        return list(self.value_net.parameters()) if self.value_net is not None else []

    def set_action_stats(self, lo, hi) -> None:
        """New q01/q99 (e.g. the demos' 1st/99th percentiles, in env units after the inverse convention)."""
        lo = torch.as_tensor(lo, dtype=torch.float32)
        hi = torch.as_tensor(hi, dtype=torch.float32)
        if self.cfg.convention != "none":  # the statistics are of dataset units: map env units through the convention
            lo, hi = conventions.to_dataset(lo, self.cfg.convention), conventions.to_dataset(hi, self.cfg.convention)
            lo, hi = torch.minimum(lo, hi), torch.maximum(lo, hi)
        self.q01.copy_(lo)
        self.q99.copy_(hi)

    @contextlib.contextmanager
    def reference(self):
        """The reference policy: LoRA adapters disabled, the heads as they were when the adapters were attached
        (OFT: the current action head and log-std, which LoRA does not touch -- documented limitation)."""
        if self.cfg.lora_rank <= 0:
            raise UserError("the reference policy is the model with LoRA adapters disabled; build the policy with "
                             "--policy.lora-rank > 0 (or use the rollout's log-probs as reference)")
        self._use_ref = True
        try:
            with self.vlm.language_model.disable_adapter():
                yield self
        finally:
            self._use_ref = False

    # -- inputs ------------------------------------------------------------------------------------
    def _dev(self):
        return self.q01.device

    def _autocast(self):
        return autocast_context(self.cfg.autocast, self._dev())

    def _text_ids(self, instruction: str) -> list[int]:
        ids = self._text_cache.get(instruction)
        if ids is None:
            prompt = PROMPT.format(instruction=instruction.lower())
            ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) + [self.empty_id]
            if len(ids) > self.cfg.max_text_tokens:
                raise UserError(f"instruction '{instruction[:40]}' is {len(ids)} tokens with the prompt, over "
                                 f"--policy.max-text-tokens {self.cfg.max_text_tokens}; raise it")
            self._text_cache[instruction] = ids
        return ids

    def _prefix(self, obs: Observation) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix embeddings (N, L0, D) in the Llama's dtype and the valid-key mask (N, L0)."""
        dev = self._dev()
        lm = self.base_lm()
        emb = lm.get_input_embeddings()
        wdtype = emb.weight.dtype
        imgs = torch.as_tensor(obs.images)[:, : self.num_images].to(dev)
        px = pixel_values(imgs, self.tower_size, self.norms, mirror=conventions.mirrors(self.cfg.convention),
                          center_crop=self.cfg.center_crop).to(wdtype)
        N = px.shape[0]
        with self._autocast():
            patches = self.vlm.image_embeddings(px)  # (N, I*P, D)
        parts = [emb(torch.full((N, 1), self.tokenizer.bos_token_id, device=dev)), patches.to(wdtype)]
        if self.proprio_projector is not None:
            s = torch.as_tensor(obs.state, dtype=torch.float32, device=dev)
            s = torch.where(self.p_mask, 2 * (s - self.p01) / (self.p99 - self.p01 + 1e-8) - 1, s).clamp(-1, 1)
            parts.append(self.proprio_projector(s).unsqueeze(1).to(wdtype))
        T = self.cfg.max_text_tokens
        texts = [self._text_ids(i) for i in obs.instructions]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (T - len(t)) + t for t in texts], device=dev)
        text_valid = torch.tensor([[False] * (T - len(t)) + [True] * len(t) for t in texts], device=dev)
        parts.append(emb(ids))
        x = torch.cat(parts, 1)
        valid = torch.cat([torch.ones(N, x.shape[1] - T, dtype=torch.bool, device=dev), text_valid], 1)
        return x, valid

    def _hidden(self, x: torch.Tensor, valid: torch.Tensor, causal: bool) -> torch.Tensor:
        """Last hidden states (N, L, D) fp32 of the Llama on embeddings ``x`` with key mask ``valid`` (N, L)."""
        N, L = valid.shape
        allowed = valid[:, None, :].expand(N, L, L)
        if causal:
            allowed = allowed & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        allowed = (allowed | torch.eye(L, dtype=torch.bool, device=x.device)).unsqueeze(1)  # (N, 1, L, L)
        pos = (valid.long().cumsum(1) - 1).clamp_min(0)
        with self._autocast():
            h = self.base_lm().model(inputs_embeds=x, attention_mask=allowed, position_ids=pos,
                                     use_cache=False).last_hidden_state
        return h.float()

    def _value(self, h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor | None:
        if self.value_net is None:
            return None
        m = valid.unsqueeze(-1).float()
        return self.value_net((h[:, : valid.shape[1]] * m).sum(1) / m.sum(1).clamp_min(1))[:, 0]

    # -- action spaces -----------------------------------------------------------------------------
    def _to_env(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised actions (N, C, A) -> env actions: un-normalise with the statistics, then the convention."""
        a = unnormalize(x.float(), self.q01, self.q99, self.act_mask, eps=1e-8 if self.cfg.oft else 0.0)
        return conventions.to_env(a, self.cfg.convention).clamp(-1, 1)

    def _from_env(self, a: torch.Tensor) -> torch.Tensor:
        d = conventions.to_dataset(a.float(), self.cfg.convention)
        return normalize_actions(d, self.q01, self.q99, self.act_mask, eps=1e-8 if self.cfg.oft else 0.0)

    # -- OpenVLA: tokens ---------------------------------------------------------------------------
    def _rows(self):
        return self.ref_head if self._use_ref else self.head

    def _token_embeddings(self, bins: torch.Tensor) -> torch.Tensor:
        """Bin indices (N, k) -> embeddings of their vocabulary ids V - 1 - b."""
        return self.base_lm().get_input_embeddings()(self.vocab - 1 - bins)

    def _token_logits(self, x, valid, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced bin logits (N, K, n_bins) for bins (N, K); and the hidden states."""
        L0 = x.shape[1]
        prev = bins[:, :-1]
        xx = torch.cat([x, self._token_embeddings(prev).to(x.dtype)], 1)
        vv = torch.cat([valid, torch.ones_like(prev, dtype=torch.bool)], 1)
        h = self._hidden(xx, vv, causal=True)
        return self._rows()(h[:, L0 - 1:]), h

    def _sample_tokens(self, x, valid, deterministic: bool, temperature: float):
        N, K = x.shape[0], self.action_dim
        bins = torch.zeros(N, 0, dtype=torch.long, device=x.device)
        logps, h0 = [], None
        for _ in range(K):
            xx = torch.cat([x, self._token_embeddings(bins).to(x.dtype)], 1)
            vv = torch.cat([valid, torch.ones_like(bins, dtype=torch.bool)], 1)
            h = self._hidden(xx, vv, causal=True)
            h0 = h if h0 is None else h0
            logp = F.log_softmax(self._rows()(h[:, -1]) / temperature, -1)
            b = logp.argmax(-1) if deterministic else torch.multinomial(logp.exp(), 1)[:, 0]
            logps.append(logp.gather(1, b[:, None])[:, 0])
            bins = torch.cat([bins, b[:, None]], 1)
        shape = (N, 1, K)
        return bins_to_normalized(bins, self.n_bins).view(shape), torch.stack(logps, 1).view(shape), bins, h0

    # -- OFT: parallel decoding ----------------------------------------------------------------------
    def _oft_mean(self, x, valid) -> tuple[torch.Tensor, torch.Tensor]:
        """Regressed chunk (N, C, A) and the hidden states: K empty action embeddings + stop, bidirectional."""
        N, L0, D = x.shape
        K = self.chunk_size * self.action_dim
        stop = self.base_lm().get_input_embeddings()(
            torch.full((N, 1), self.tokenizer.eos_token_id, device=x.device))
        xx = torch.cat([x, torch.zeros(N, K, D, dtype=x.dtype, device=x.device), stop.to(x.dtype)], 1)
        vv = torch.cat([valid, torch.ones(N, K + 1, dtype=torch.bool, device=x.device)], 1)
        h = self._hidden(xx, vv, causal=False)
        return self.action_head(h[:, L0 - 1: L0 - 1 + K], self.chunk_size), h

    def _gauss(self, mean, temperature: float):
        log_std = self.log_std.clamp(-5.0, 1.0) + torch.log(torch.tensor(temperature))
        return log_std.expand_as(mean)

    @staticmethod
    def _log_prob(x, mean, log_std):
        return -0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std - 0.5 * torch.log(torch.tensor(2 * torch.pi))

    # -- Policy protocol -------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Observation, deterministic: bool = False, temperature: float = 1.0) -> ActionOutput:
        x, valid = self._prefix(obs)
        if self.cfg.oft:
            mean, h = self._oft_mean(x, valid)
            log_std = self._gauss(mean, temperature)
            a = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
            return ActionOutput(self._to_env(a.clamp(-1, 1)), self._log_prob(a, mean, log_std),
                                self._value(h, valid), {"x": a})
        a, logp, bins, h = self._sample_tokens(x, valid, deterministic, temperature)
        return ActionOutput(self._to_env(a), logp.float(), self._value(h, valid), {"tokens": bins})

    def evaluate(self, obs: Observation, taken: dict[str, torch.Tensor], temperature: float = 1.0):
        x, valid = self._prefix(obs)
        if self.cfg.oft:
            mean, h = self._oft_mean(x, valid)
            log_std = self._gauss(mean, temperature)
            ent = (0.5 + 0.5 * torch.log(torch.tensor(2 * torch.pi)) + log_std)
            return self._log_prob(taken["x"].to(mean), mean, log_std), ent, self._value(h, valid)
        bins = taken["tokens"].long().to(x.device)
        logits, h = self._token_logits(x, valid, bins)
        logp = F.log_softmax(logits / temperature, -1)
        shape = (len(obs), 1, self.action_dim)
        lp = logp.gather(2, bins.unsqueeze(-1))[..., 0].view(shape)
        ent = -(logp.exp() * logp).sum(-1).view(shape)
        return lp, ent, self._value(h, valid)

    def value(self, obs: Observation) -> torch.Tensor:
        if self.value_net is None:
            raise UserError("this policy has no value head (built with value_head=False)")
        x, valid = self._prefix(obs)
        return self._value(self._hidden(x, valid, causal=not self.cfg.oft), valid)

    def sft_loss(self, obs: Observation, expert_actions: torch.Tensor, mask: torch.Tensor | None = None):
        target = self._from_env(torch.as_tensor(expert_actions, dtype=torch.float32, device=self._dev()))
        x, valid = self._prefix(obs)
        if self.cfg.oft:  # OFT's L1 loss on the regressed chunk
            mean, _ = self._oft_mean(x, valid)
            err = (mean - target).abs().mean(-1)  # (N, C)
            m = torch.ones_like(err) if mask is None else mask.to(err)
            loss = (err * m).sum() / m.sum().clamp_min(1)
            return loss, {"sft/l1": loss.detach()}
        bins = normalized_to_bins(target[:, 0], self.n_bins)  # (N, A): OpenVLA acts one step per decision
        logits, _ = self._token_logits(x, valid, bins)
        tmask = None if mask is None else mask[:, :1]
        loss, m = token_cross_entropy(logits.unsqueeze(1), bins.unsqueeze(1), tmask)
        return loss, {"sft/ce": m["ce"], "sft/token_acc": m["token_accuracy"]}

    # -- persistence -----------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        d = asdict(self.cfg)
        d.pop("oft")
        return {"family": "openvla-oft" if self.cfg.oft else "openvla", **d}

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """Heads, value MLP, statistics, and (with LoRA) the adapters: what differs from the released weights."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vlm.") or "lora_" in k}

    def released_state_dict(self) -> dict[str, torch.Tensor]:
        """The Prismatic weights in the released key layout, the action rows written back into ``lm_head``."""
        if self.cfg.lora_rank > 0:
            raise UserError("a LoRA policy keeps the released weights untouched; its adapters live in model.safetensors")
        sd = {k: v for k, v in self.vlm.state_dict().items()}
        if self.head is not None:
            w = sd["language_model.lm_head.weight"].clone()
            w[self.vocab - self.n_bins: self.vocab] = self.head.weight.detach().flip(0).to(w.dtype)
            sd["language_model.lm_head.weight"] = w
        return sd

    def optimizer_class(self):
        if self.cfg.optimizer_on_cpu:
            return CPUOffloadAdamW
        return torch.optim.AdamW
