"""π0's network (Black et al. 2024; LeRobot's ``policies/pi0``, a port of openpi's ``PI0Pytorch``), written here
on transformers building blocks: no LeRobot, no openpi, no remote code.

Reference pinned: LeRobot ``src/lerobot/policies/pi0/modeling_pi0.py`` and ``src/lerobot/policies/pi_gemma.py`` at
commit 7427f31801f944f5ec9ce53cda02862ce7d1638b (2026-08-23), read with transformers 5.25's Gemma/PaliGemma.

Module names follow LeRobot's ``PI0Pytorch`` exactly, so that its ``model.safetensors`` loads key for key under
the ``model.`` prefix::

    model.paligemma_with_expert.paligemma.model.vision_tower.*          SigLIP (So400m/14 at 224 px released)
    model.paligemma_with_expert.paligemma.model.multi_modal_projector.* vision width -> Gemma width (linear)
    model.paligemma_with_expert.paligemma.model.language_model.*        Gemma 2B (18 layers, 8 heads, 1 kv head)
    model.paligemma_with_expert.gemma_expert.model.*                    the action expert: Gemma 300M (width 1024)
    model.state_proj                      state (max_state_dim) -> one EXPERT token
    model.action_in_proj / action_out_proj   actions (max_action_dim) <-> expert width
    model.action_time_mlp_in / _out      [action emb, sin-cos time emb] -> expert token (SiLU MLP)

Sequence (LeRobot's ``embed_prefix`` / ``embed_suffix``). Prefix = per camera the SigLIP tokens after the linear
projector (NOT scaled), then the instruction tokens' embeddings times sqrt(width) (transformers 5's
``GemmaTextScaledWordEmbedding``, which LeRobot's ``embed_language_tokens`` calls; done explicitly here); every
prefix token sees every valid prefix token (ar = 0). Suffix = the state token (ar = 1: sees the prefix and
itself), then ``chunk_size`` action tokens (ar = 1, 0, 0, ...: a block that sees the prefix, the state and each
other, bidirectionally). Positions are ``cumsum(valid) - 1`` over prefix then suffix. Every layer is joint: VLM
layer i and expert layer i project their own tokens to q/k/v (same head count and head size), RoPE (θ = the text
config's ``rope_theta``, 10,000, on both streams) is applied with the joint positions, one softmax attention runs
over the concatenation (scale head_dim^-1/2, fp32 scores), and each stream takes its own rows through its own
o_proj, residual, post-attention RMSNorm, GeGLU MLP and residual (Gemma's layer). Norms are Gemma's RMSNorm
(``x·rsqrt(mean x² + eps)·(1 + w)``); π0's expert has no adaRMS (π0.5's has). Time embedding: sin/cos of
t·2π/period, periods geometric from ``min_period`` 4e-3 to ``max_period`` 4.0, computed in float64, cast to fp32.

Where this differs from LeRobot's code (not its maths): the prefix never sees the suffix, so the prefix is run once
(``prefix``) and its per-layer post-RoPE keys/values are reused by every denoising step and by every step of a
stored chain in one batched expert pass (``velocity``), in training as in sampling; LeRobot recomputes the prefix
jointly with the suffix in training (``tests/test_pi0.py`` checks the two agree to 1e-5). The vocabulary heads
(``paligemma.lm_head``, tied to the embedding, and the expert's unused ``gemma_expert.lm_head``) are not built;
their checkpoint keys are read as the embedding or ignored (``lerobot.py``).

    from vlaforge.policies.pi0.model import PI0Model  # built by vlaforge.policies.pi0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlaforge.policies.smolvla.model import attention, make_att_2d, rope

# openpi's ``gemma.get_config`` variants (LeRobot's ``get_gemma_config``); vocab as PaliGemma's
GEMMA_VARIANTS = {
    "gemma_300m": dict(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256, vocab_size=257152),
    "gemma_2b": dict(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256, vocab_size=257152),
}
# the SigLIP So400m/14 tower LeRobot builds (transformers' PaliGemma default with intermediate 4304)
SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                     patch_size=14)


@dataclass(frozen=True)
class Arch:
    """The fields of LeRobot's PI0Config that shape the network (variants resolved to sizes)."""

    vlm: dict = field(default_factory=lambda: dict(GEMMA_VARIANTS["gemma_2b"]))
    """PaliGemma's Gemma: width, depth, mlp_dim, num_heads, num_kv_heads, head_dim, vocab_size"""
    expert: dict = field(default_factory=lambda: dict(GEMMA_VARIANTS["gemma_300m"]))
    """the action expert's Gemma (same keys; depth, heads and head_dim must equal the VLM's)"""
    vision: dict = field(default_factory=lambda: dict(SIGLIP_SO400M))
    """SigLIP tower sizes (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, patch_size)"""
    image_size: int = 224
    """square image side the tower reads (LeRobot's image_resolution)"""
    max_state_dim: int = 32
    max_action_dim: int = 32
    chunk_size: int = 50
    min_period: float = 4e-3
    max_period: float = 4.0

    def check(self) -> None:
        """The joint attention needs one head layout for both streams (LeRobot zips the layers, concatenates)."""
        for k in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if self.vlm[k] != self.expert[k]:
                raise ValueError(f"PaliGemma and the action expert must share {k} for joint attention "
                                 f"({self.vlm[k]} vs {self.expert[k]})")
        if self.image_size % self.vision["patch_size"]:
            raise ValueError(f"image size {self.image_size} is not a multiple of the patch size "
                             f"{self.vision['patch_size']}")


def gemma_config(sizes: dict, **kw):
    """A transformers GemmaConfig of openpi's size dict (GeGLU with tanh GELU, eps 1e-6, RoPE θ 10,000)."""
    import transformers

    return transformers.GemmaConfig(hidden_size=sizes["width"], num_hidden_layers=sizes["depth"],
                                    intermediate_size=sizes["mlp_dim"], num_attention_heads=sizes["num_heads"],
                                    num_key_value_heads=sizes["num_kv_heads"], head_dim=sizes["head_dim"],
                                    vocab_size=sizes["vocab_size"], hidden_act="gelu_pytorch_tanh", **kw)


def _lin(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mod(x.to(mod.weight.dtype))


def _qkv(layer, x: torch.Tensor, d: int):
    """Gemma layer's input norm then q, k, v: x (B, L, W) -> (B, L, H, d), (B, L, G, d), (B, L, G, d)."""
    h = layer.input_layernorm(x)
    B, L = h.shape[:2]
    a = layer.self_attn
    return (_lin(a.q_proj, h).view(B, L, -1, d), _lin(a.k_proj, h).view(B, L, -1, d),
            _lin(a.v_proj, h).view(B, L, -1, d))


def _tail(layer, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """Gemma layer after attention: residual o_proj, then residual GeGLU MLP on the post-attention norm."""
    out = _lin(layer.self_attn.o_proj, att) + h.to(layer.self_attn.o_proj.weight.dtype)
    m = layer.mlp
    return m(layer.post_attention_layernorm(out).to(m.gate_proj.weight.dtype)) + out


class PaliGemmaWithExpert(nn.Module):
    """``paligemma`` (transformers' PaliGemmaForConditionalGeneration, vocab head not built) and ``gemma_expert``
    (GemmaForCausalLM, no embedding, vocab head not built), with LeRobot's attribute names."""

    def __init__(self, arch: Arch):
        super().__init__()
        import transformers

        arch.check()
        text = gemma_config(arch.vlm)
        vision = dict(model_type="siglip_vision_model", image_size=arch.image_size, vision_use_head=False,
                      projection_dim=arch.vlm["width"], **arch.vision)
        cfg = transformers.PaliGemmaConfig(vision_config=vision, text_config=text.to_dict(),
                                           projection_dim=arch.vlm["width"], vocab_size=arch.vlm["vocab_size"],
                                           image_token_index=arch.vlm["vocab_size"] - 1)
        self.paligemma = transformers.PaliGemmaForConditionalGeneration(cfg)
        self.paligemma.lm_head = nn.Identity()  # tied to the embedding, never used
        self.gemma_expert = transformers.GemmaForCausalLM(gemma_config(arch.expert))
        self.gemma_expert.model.embed_tokens = None
        self.gemma_expert.lm_head = nn.Identity()  # never used
        self.config = cfg
        self.head_dim = arch.vlm["head_dim"]
        self.rope_theta = float((text.rope_parameters or {}).get("rope_theta", 10_000.0))
        self.gradient_checkpointing = False

    @property
    def language_model(self):
        return self.paligemma.model.language_model

    @property
    def expert_model(self):
        return self.gemma_expert.model

    def _ckpt(self, fn, *args):
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # -- prefix -----------------------------------------------------------------------------
    def embed_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, 3, s, s) in [-1, 1] -> SigLIP tokens after the projector (B, (s/patch)², width)"""
        m = self.paligemma.model
        dtype = m.multi_modal_projector.linear.weight.dtype
        return m.get_image_features(pixels.to(next(m.vision_tower.parameters()).dtype)).pooler_output.to(dtype)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> embeddings times sqrt(width) (B, L, width), the scale rounded to the weight's dtype"""
        w = self.language_model.embed_tokens.weight
        return F.embedding(ids, w) * torch.tensor(w.shape[1] ** 0.5, dtype=w.dtype, device=w.device)

    def _vlm_layer(self, i, h, pos, mask):
        layer = self.language_model.layers[i]
        q, k, v = _qkv(layer, h, self.head_dim)
        q, k = rope(q, pos, self.rope_theta), rope(k, pos, self.rope_theta)
        return _tail(layer, h, attention(q, k, v, mask)), k, v

    def prefix(self, embs: torch.Tensor, pad: torch.Tensor):
        """embs (B, Lp, W), pad (B, Lp) bool -> (final-normed hidden (B, Lp, W), [(K, V)] per layer, each
        (B, Lp, G, d), K after RoPE). Every valid prefix token sees every valid prefix token."""
        mask = make_att_2d(pad, torch.zeros_like(pad, dtype=torch.long))
        pos = pad.long().cumsum(1) - 1
        h, kv = embs, []
        for i in range(len(self.language_model.layers)):
            h, k, v = self._ckpt(self._vlm_layer, i, h, pos, mask)
            kv.append((k, v))
        return self.language_model.norm(h), kv

    # -- expert -----------------------------------------------------------------------------
    def _expert_layer(self, i, h, k_pre, v_pre, pos, mask):
        layer = self.expert_model.layers[i]
        q, k, v = _qkv(layer, h, self.head_dim)
        q, k = rope(q, pos, self.rope_theta), rope(k, pos, self.rope_theta)
        k = torch.cat([k_pre.to(k.dtype), k], 1)
        v = torch.cat([v_pre.to(v.dtype), v], 1)
        return _tail(layer, h, attention(q, k, v, mask))

    def expert(self, embs: torch.Tensor, ar: torch.Tensor, kv, pad: torch.Tensor) -> torch.Tensor:
        """Expert stream over suffix tokens ``embs (M, Ls, We)`` with autoregressive flags ``ar (Ls,)`` given the
        prefix ``kv`` (M rows) and prefix ``pad (M, Lp)`` -> final-normed expert hidden (M, Ls, We)."""
        M, Ls = embs.shape[:2]
        pre_mask = pad[:, None, :].expand(M, Ls, pad.shape[1])
        ones = torch.ones(M, Ls, dtype=torch.bool, device=embs.device)
        suf_mask = make_att_2d(ones, ar[None].expand(M, Ls))
        mask = torch.cat([pre_mask, suf_mask], 2)
        pos = pad.long().sum(1, keepdim=True) + torch.arange(Ls, device=embs.device)
        h = embs
        for i, (k, v) in enumerate(kv):
            h = self._ckpt(self._expert_layer, i, h, k, v, pos, mask)
        return self.expert_model.norm(h)


def time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """openpi's sine-cosine embedding: t (M,) -> (M, dim) = [sin(2π t / p_j), cos(2π t / p_j)], p_j geometric from
    min_period to max_period over dim/2 values; float64 where the device has it, returned as fp32."""
    dt = torch.float64 if t.device.type in ("cpu", "cuda") else torch.float32
    frac = torch.linspace(0.0, 1.0, dim // 2, dtype=dt, device=t.device)
    period = min_period * (max_period / min_period) ** frac
    ang = t.to(dt)[:, None] * (1.0 / period * 2 * math.pi)
    return torch.cat([ang.sin(), ang.cos()], -1).float()


class PI0Model(nn.Module):
    """LeRobot's ``PI0Pytorch`` network (``policy.model``): embeddings, prefix and velocity."""

    def __init__(self, arch: Arch):
        super().__init__()
        self.arch = arch
        self.paligemma_with_expert = PaliGemmaWithExpert(arch)
        We = arch.expert["width"]
        self.action_in_proj = nn.Linear(arch.max_action_dim, We)
        self.action_out_proj = nn.Linear(We, arch.max_action_dim)
        self.state_proj = nn.Linear(arch.max_state_dim, We)
        self.action_time_mlp_in = nn.Linear(2 * We, We)
        self.action_time_mlp_out = nn.Linear(We, We)

    def embed_prefix(self, images: list[torch.Tensor], img_masks: list[torch.Tensor], lang: torch.Tensor,
                     lang_mask: torch.Tensor):
        """images: per camera (B, 3, s, s) in [-1, 1]; img_masks (B,) bool; lang (B, Lt) ids, lang_mask (B, Lt)
        bool -> embs (B, Lp, W), pad (B, Lp) bool."""
        pw = self.paligemma_with_expert
        embs, pads = [], []
        for img, m in zip(images, img_masks):
            e = pw.embed_image(img)
            embs.append(e)
            pads.append(m[:, None].expand(e.shape[0], e.shape[1]))
        t = pw.embed_tokens(lang)
        embs.append(t.to(embs[0].dtype) if embs else t)
        pads.append(lang_mask.bool())
        return torch.cat(embs, 1), torch.cat(pads, 1)

    def embed_suffix(self, state: torch.Tensor, x: torch.Tensor, t: torch.Tensor):
        """state (M, max_state_dim) normalised, x (M, chunk, max_action_dim) noisy actions, t (M,) ->
        (expert tokens (M, 1 + chunk, We), ar (1 + chunk,) long = [1, 1, 0, ..., 0])."""
        s = _lin(self.state_proj, state.float())[:, None]
        a = _lin(self.action_in_proj, x)
        te = time_embedding(t, a.shape[-1], self.arch.min_period, self.arch.max_period).to(a.dtype)
        h = _lin(self.action_time_mlp_in, torch.cat([a, te[:, None].expand_as(a)], -1))
        h = _lin(self.action_time_mlp_out, F.silu(h))
        ar = torch.zeros(1 + x.shape[1], dtype=torch.long, device=x.device)
        ar[:2] = 1
        return torch.cat([s.to(h.dtype), h], 1), ar

    def prefix(self, images, img_masks, lang, lang_mask):
        """-> (hidden (B, Lp, W), kv per layer, pad (B, Lp))"""
        embs, pad = self.embed_prefix(images, img_masks, lang, lang_mask)
        h, kv = self.paligemma_with_expert.prefix(embs, pad)
        return h, kv, pad

    def velocity(self, kv, pad: torch.Tensor, state: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted velocity v (M, chunk, max_action_dim) in fp32 of noisy actions x (M, chunk, max_action_dim) at
        times t (M,), given the prefix ``kv``/``pad`` and normalised padded ``state`` (M, max_state_dim), all
        already repeated to M rows."""
        embs, ar = self.embed_suffix(state, x, t)
        h = self.paligemma_with_expert.expert(embs, ar, kv, pad)
        return _lin(self.action_out_proj, h[:, -self.arch.chunk_size:].float()).float()
