"""SmolVLA's network, written here on transformers building blocks (no LeRobot, no remote code).

SmolVLA (Shukor et al. 2025, LeRobot's ``policies/smolvla``) is a SmolVLM2 VLM cut to its first
``num_vlm_layers`` text layers plus a smaller "action expert" transformer that denoises an action
chunk by flow matching. Module names follow LeRobot's exactly, so that its ``model.safetensors``
loads key for key under the ``model.`` prefix::

    model.vlm_with_expert.vlm.*          SmolVLM (Idefics3-family) image-text model, text layers cut
    model.vlm_with_expert.lm_expert.*    the expert: a Llama-style decoder, width x expert_width_multiplier
    model.state_proj                     state (max_state_dim) -> one VLM token
    model.action_in_proj / action_out_proj   actions (max_action_dim) <-> expert width
    model.action_time_mlp_in / _out      [action emb, sin-cos time emb] -> expert token (SiLU MLP)

Sequence. Prefix = per camera the image tokens (vision tower + pixel-shuffle connector, times
sqrt(D)), then the instruction tokens (times sqrt(D)), then one state token; image and language
tokens attend to each other bidirectionally and not to the state token; the state token sees the
whole prefix. Suffix = one expert token per chunk step, causal among themselves, seeing the whole
prefix. Layer i of the VLM is paired with expert layer i (or i // m when the expert has n/m layers;
unpaired VLM layers leave the expert stream unchanged). In "self-attention" layers (every
``self_attn_every_n_layers``-th, starting at 0) the expert's queries attend to the prefix keys and
values of that VLM layer concatenated with its own; in the other ("cross-attention") layers the
expert attends only to the prefix, through its own k/v projections applied to the VLM layer's
(post-RoPE) keys and values, with query positions restarted at 0. RoPE uses wavelength 10,000 on
both streams (LeRobot's ``apply_rope``; not the text config's ``rope_theta``); attention is eager
with fp32 scores.

Where this differs from LeRobot's code (not its maths): the prefix never sees the suffix, so the
prefix is run once (``prefix``) and its per-layer keys/values are reused by every denoising step
and by every step of a stored chain in one batched expert pass (``velocity``), in training as in
sampling; LeRobot recomputes the prefix jointly with the suffix in training. The unused ``lm_head``
is dropped (its checkpoint key is ignored on load).

    from vlaforge.policies.smolvla.model import SmolVLAModel  # built by vlaforge.policies.smolvla
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Arch:
    """The architecture fields of LeRobot's SmolVLA config that shape the network."""

    max_state_dim: int = 32
    """state vectors are zero-padded to this size"""
    max_action_dim: int = 32
    """action vectors are zero-padded to this size"""
    chunk_size: int = 50
    """actions predicted per call (expert tokens)"""
    num_vlm_layers: int = 16
    """first text layers of the VLM kept"""
    num_expert_layers: int = -1
    """expert depth (<= 0: as many as the VLM layers kept)"""
    self_attn_every_n_layers: int = 2
    """every n-th layer (from 0) is a joint self-attention layer, the others cross-attention"""
    expert_width_multiplier: float = 0.75
    """expert hidden size as a fraction of the VLM's"""
    attention_mode: str = "cross_attn"
    """"cross_attn" (SmolVLA) or "self_attn" (every layer joint)"""
    min_period: float = 4e-3
    """shortest period of the time embedding"""
    max_period: float = 4.0
    """longest period of the time embedding"""
    prefix_length: int = -1
    """pad the prefix to this length (<= 0: no padding)"""


def expert_intermediate_size(hidden: int, mult: int = 4, multiple_of: int = 256) -> int:
    """LeRobot's expert MLP width: 2/3 * 4 * hidden rounded up to a multiple of 256."""
    h = int(mult * int(2 * hidden / 3))
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def rope(x: torch.Tensor, pos: torch.Tensor, wavelength: float = 10_000.0) -> torch.Tensor:
    """Rotary embedding, halves convention. x (B, L, H, d), pos (B, L) -> (B, L, H, d) in x's dtype."""
    half = x.shape[-1] // 2
    inv = wavelength ** -((2.0 / x.shape[-1]) * torch.arange(half, dtype=torch.float32, device=x.device))
    ang = (pos.float()[..., None] * inv)[..., None, :]  # (B, L, 1, half)
    sin, cos = ang.sin(), ang.cos()
    xf = x.float()
    a, b = xf[..., :half], xf[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1).to(x.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eager grouped-query attention with fp32 scores.

    q (B, Lq, H, d), k/v (B, Lk, G, d) with H a multiple of G, mask bool (B, Lq, Lk) -> (B, Lq, H*d).
    A fully masked row gets uniform weights (as LeRobot's): its output is never read.
    """
    B, Lq, H, d = q.shape
    rep = H // k.shape[2]
    k = k.repeat_interleave(rep, 2)
    v = v.repeat_interleave(rep, 2)
    with torch.autocast(q.device.type, enabled=False):  # scores in fp32 even under bf16 autocast
        s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * d ** -0.5
        s = s.masked_fill(~mask[:, None], torch.finfo(torch.float32).min)
        p = s.softmax(-1).to(v.dtype)
        return torch.einsum("bhqk,bkhd->bqhd", p, v).reshape(B, Lq, H * d)


def _proj(layer, name: str, h: torch.Tensor) -> torch.Tensor:
    lin = getattr(layer.self_attn, name)
    return lin(h.to(lin.weight.dtype))


def _finish(layer, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """Residual attention output, then the residual MLP (LeRobot's layer tail)."""
    out = _proj(layer, "o_proj", att) + h.to(layer.self_attn.o_proj.weight.dtype)
    return layer.mlp(layer.post_attention_layernorm(out)) + out


def make_att_2d(pad: torch.Tensor, ar: torch.Tensor) -> torch.Tensor:
    """big_vision's prefix-LM masks: pad (B, L) bool, ar (B, L) int -> (B, L, L) bool.

    Token i may attend to valid token j when cumsum(ar)[j] <= cumsum(ar)[i]."""
    c = ar.long().cumsum(1)
    return (c[:, None, :] <= c[:, :, None]) & (pad[:, None, :] & pad[:, :, None])


class SmolVLMWithExpert(nn.Module):
    """``vlm`` (an AutoModelForImageTextToText of the SmolVLM/Idefics3 family, text layers cut) and
    ``lm_expert`` (its text model's architecture, narrower), with LeRobot's attribute names."""

    def __init__(self, vlm_config, arch: Arch):
        super().__init__()
        import transformers

        cfg = copy.deepcopy(vlm_config)
        text = cfg.text_config
        if arch.num_vlm_layers > 0:
            text.num_hidden_layers = min(arch.num_vlm_layers, text.num_hidden_layers)
        cfg.use_cache = False
        self.vlm = transformers.AutoModelForImageTextToText.from_config(cfg)
        self.vlm.lm_head = nn.Identity()  # never used; its checkpoint key is ignored
        self.config = cfg
        self.num_vlm_layers = len(self.text_model.layers)
        ex = copy.deepcopy(text)
        ex.head_dim = self.head_dim
        ex.hidden_size = int(text.hidden_size * arch.expert_width_multiplier)
        ex.intermediate_size = expert_intermediate_size(ex.hidden_size)
        ex.num_hidden_layers = self.num_vlm_layers
        if arch.num_expert_layers > 0:
            if self.num_vlm_layers % arch.num_expert_layers:
                raise ValueError(f"num_expert_layers={arch.num_expert_layers} must divide the {self.num_vlm_layers} "
                                 "VLM layers kept")
            ex.num_hidden_layers = arch.num_expert_layers
        self.lm_expert = transformers.AutoModel.from_config(ex)
        self.lm_expert.embed_tokens = None
        self.expert_hidden_size = ex.hidden_size
        self.num_expert_layers = len(self.lm_expert.layers)
        self.arch = arch
        kv_in = text.num_key_value_heads * self.head_dim
        kv_out = ex.num_key_value_heads * self.head_dim
        for i, layer in enumerate(self.lm_expert.layers):
            if self.is_cross(i):  # expert k/v read the VLM's keys/values (LeRobot's indexing by expert layer)
                layer.self_attn.k_proj = nn.Linear(kv_in, kv_out, bias=ex.attention_bias)
                layer.self_attn.v_proj = nn.Linear(kv_in, kv_out, bias=ex.attention_bias)
        self.gradient_checkpointing = False

    @property
    def vlm_model(self):
        return self.vlm.model

    @property
    def text_model(self):
        return self.vlm.model.text_model

    @property
    def head_dim(self) -> int:
        t = self.config.text_config
        return getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads

    def is_cross(self, i: int) -> bool:
        """Whether layer ``i`` is a cross-attention layer (expert attends to the prefix only)."""
        n = self.arch.self_attn_every_n_layers
        return "cross" in self.arch.attention_mode and not (n > 0 and i % n == 0)

    def expert_layer(self, i: int):
        """The expert layer paired with VLM layer ``i``, or None."""
        m = self.num_vlm_layers // self.num_expert_layers
        if m > 0 and i > 0 and i % m:
            return None
        return self.lm_expert.layers[i // m if m > 0 else i]

    def _ckpt(self, fn, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # -- prefix -----------------------------------------------------------------------------
    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, h, w) in [-1, 1] -> (B, n_img, D)"""
        vm = self.vlm_model
        dtype = next(vm.vision_model.parameters()).dtype
        h = vm.vision_model(pixel_values=pixels.to(dtype)).last_hidden_state
        return vm.connector(h)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_model.get_input_embeddings()(ids)

    def _vlm_layer(self, i, h, pos, mask):
        layer = self.text_model.layers[i]
        x = layer.input_layernorm(h)
        B, L = x.shape[:2]
        d = self.head_dim
        q = rope(_proj(layer, "q_proj", x).view(B, L, -1, d), pos)
        k = rope(_proj(layer, "k_proj", x).view(B, L, -1, d), pos)
        v = _proj(layer, "v_proj", x).view(B, L, -1, d)
        return _finish(layer, h, attention(q, k, v, mask)), k, v

    def prefix(self, embs: torch.Tensor, pad: torch.Tensor, ar: torch.Tensor):
        """Run the VLM layers over the prefix.

        embs (B, Lp, D), pad (B, Lp) bool, ar (B, Lp) -> (final-normed hidden (B, Lp, D), [(K, V)] per layer,
        each (B, Lp, G, d) with K after RoPE)."""
        mask = make_att_2d(pad, ar)
        pos = pad.long().cumsum(1) - 1
        h, kv = embs, []
        for i in range(self.num_vlm_layers):
            h, k, v = self._ckpt(self._vlm_layer, i, h, pos, mask)
            kv.append((k, v))
        return self.text_model.norm(h), kv

    # -- expert -----------------------------------------------------------------------------
    def _expert_layer(self, i, h, k_pre, v_pre, pos, pre_mask, suf_mask):
        layer = self.expert_layer(i)
        x = layer.input_layernorm(h)
        B, L = x.shape[:2]
        d = self.head_dim
        if self.is_cross(i):
            q = rope(_proj(layer, "q_proj", x).view(B, L, -1, d), pos - pos.min(1, keepdim=True).values)
            k = _proj(layer, "k_proj", k_pre.reshape(*k_pre.shape[:2], -1)).view(*k_pre.shape[:2], -1, d)
            v = _proj(layer, "v_proj", v_pre.reshape(*v_pre.shape[:2], -1)).view(*v_pre.shape[:2], -1, d)
            att = attention(q, k, v, pre_mask)
        else:
            q = rope(_proj(layer, "q_proj", x).view(B, L, -1, d), pos)
            k = rope(_proj(layer, "k_proj", x).view(B, L, -1, d), pos)
            v = _proj(layer, "v_proj", x).view(B, L, -1, d)
            k = torch.cat([k_pre.to(k.dtype), k], 1)
            v = torch.cat([v_pre.to(v.dtype), v], 1)
            att = attention(q, k, v, torch.cat([pre_mask, suf_mask], 2))
        return _finish(layer, h, att)

    def expert(self, embs: torch.Tensor, kv, pad: torch.Tensor) -> torch.Tensor:
        """Expert stream over suffix tokens ``embs (M, Ls, De)`` given prefix ``kv`` (M rows) and prefix
        ``pad (M, Lp)`` -> final-normed expert hidden (M, Ls, De). Suffix tokens are causal among
        themselves and see every valid prefix token."""
        M, Ls = embs.shape[:2]
        pre_mask = pad[:, None, :].expand(M, Ls, pad.shape[1])
        suf_mask = torch.ones(Ls, Ls, dtype=torch.bool, device=embs.device).tril().expand(M, Ls, Ls)
        pos = pad.long().sum(1, keepdim=True) + torch.arange(Ls, device=embs.device)
        h = embs
        for i in range(self.num_vlm_layers):
            if self.expert_layer(i) is None:
                continue
            k, v = kv[i]
            h = self._ckpt(self._expert_layer, i, h, k, v, pos, pre_mask, suf_mask)
        return self.lm_expert.norm(h)


class SmolVLAModel(nn.Module):
    """LeRobot's ``VLAFlowMatching`` network (``policy.model``): embeddings, prefix and velocity."""

    def __init__(self, vlm_config, arch: Arch):
        super().__init__()
        self.arch = arch
        self.vlm_with_expert = SmolVLMWithExpert(vlm_config, arch)
        D = self.vlm_with_expert.config.text_config.hidden_size
        De = self.vlm_with_expert.expert_hidden_size
        self.state_proj = nn.Linear(arch.max_state_dim, D)
        self.action_in_proj = nn.Linear(arch.max_action_dim, De)
        self.action_out_proj = nn.Linear(De, arch.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * De, De)
        self.action_time_mlp_out = nn.Linear(De, De)

    def embed_prefix(self, images: list[torch.Tensor], img_masks: list[torch.Tensor], lang: torch.Tensor,
                     lang_mask: torch.Tensor, state: torch.Tensor):
        """images: per camera (B, 3, h, w) in [-1, 1]; img_masks (B,) bool; lang (B, Lt) ids, lang_mask (B, Lt)
        bool; state (B, max_state_dim) normalised -> embs (B, Lp, D), pad (B, Lp) bool, ar (B, Lp) int."""
        vw = self.vlm_with_expert
        embs, pads, ars = [], [], []
        for img, m in zip(images, img_masks):
            e = vw.embed_image(img)
            e = e * math.sqrt(e.shape[-1])
            embs.append(e)
            pads.append(m[:, None].expand(e.shape[0], e.shape[1]))
            ars.append(torch.zeros(e.shape[:2], dtype=torch.long, device=e.device))
        t = vw.embed_tokens(lang)
        embs.append(t * math.sqrt(t.shape[-1]))
        pads.append(lang_mask.bool())
        ars.append(torch.zeros(lang.shape, dtype=torch.long, device=lang.device))
        s = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None]
        dtype = embs[0].dtype
        embs.append(s.to(dtype))
        pads.append(torch.ones(s.shape[:2], dtype=torch.bool, device=s.device))
        ars.append(torch.ones(s.shape[:2], dtype=torch.long, device=s.device))
        embs = torch.cat([e.to(dtype) for e in embs], 1)
        pad, ar = torch.cat(pads, 1), torch.cat(ars, 1)
        L = self.arch.prefix_length
        if embs.shape[1] < L:
            n = L - embs.shape[1]
            embs = F.pad(embs, (0, 0, 0, n))
            pad, ar = F.pad(pad, (0, n)), F.pad(ar, (0, n))
        return embs, pad, ar

    def time_embedding(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Sine-cosine embedding (M,) -> (M, dim), periods min_period..max_period (computed in fp64 where
        the device allows, as LeRobot)."""
        dt = torch.float64 if t.device.type in ("cpu", "cuda") else torch.float32
        frac = torch.linspace(0.0, 1.0, dim // 2, dtype=dt, device=t.device)
        period = self.arch.min_period * (self.arch.max_period / self.arch.min_period) ** frac
        ang = t.to(dt)[:, None] * (2 * math.pi / period)
        return torch.cat([ang.sin(), ang.cos()], -1)

    def embed_suffix(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (M, chunk, max_action_dim) noisy actions, t (M,) -> expert tokens (M, chunk, De)."""
        a = self.action_in_proj(x.to(self.action_in_proj.weight.dtype))
        te = self.time_embedding(t, a.shape[-1]).to(a.dtype)[:, None].expand_as(a)
        h = self.action_time_mlp_in(torch.cat([a, te], -1))
        return self.action_time_mlp_out(F.silu(h))

    def prefix(self, images, img_masks, lang, lang_mask, state):
        """-> (hidden (B, Lp, D), kv per layer, pad (B, Lp))"""
        embs, pad, ar = self.embed_prefix(images, img_masks, lang, lang_mask, state)
        h, kv = self.vlm_with_expert.prefix(embs, pad, ar)
        return h, kv, pad

    def velocity(self, kv, pad: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted velocity v (M, chunk, max_action_dim) in fp32 of noisy actions x (M, chunk, max_action_dim) at
        times t (M,), given the prefix ``kv``/``pad`` already repeated to M rows."""
        h = self.vlm_with_expert.expert(self.embed_suffix(x, t), kv, pad)
        return self.action_out_proj(h[:, -self.arch.chunk_size:].float().to(self.action_out_proj.weight.dtype)).float()


def repeat_kv(kv, pad: torch.Tensor, k: int):
    """Repeat every prefix row ``k`` times (row-major: row n -> rows n*k .. n*k+k-1)."""
    if k == 1:
        return kv, pad
    return [(a.repeat_interleave(k, 0), b.repeat_interleave(k, 0)) for a, b in kv], pad.repeat_interleave(k, 0)
