"""The two timm Vision Transformers of OpenVLA's fused backbone, written here with timm's parameter names.

OpenVLA's released weights name the vision towers by timm's ``VisionTransformer`` module tree
(``patch_embed.proj``, ``cls_token``, ``reg_token``, ``pos_embed``, ``blocks.i.{norm1,attn.qkv,attn.proj,
ls1,norm2,mlp.fc1,mlp.fc2,ls2}``, ``norm``, and SigLIP's ``attn_pool.*``), with one release-specific
rename: LayerScale's ``gamma`` is stored as ``scale_factor`` (OpenVLA patched it because transformers
rewrites parameters named ``gamma``). This module builds the same tree in plain torch:

* ``ViT(spec)``: pre-norm blocks ``x + ls1(attn(norm1(x)))``, ``x + ls2(mlp(norm2(x)))``, LayerNorm eps 1e-6,
  exact-erf GELU (timm's default; OpenVLA's DINOv2/SigLIP pair overrides no activation), qkv with bias.
* Prefix tokens: DINOv2-reg4 adds ``pos_embed`` to the patches only and then prepends [cls, 4 registers]
  (``no_embed_class``); SigLIP has no prefix tokens and adds ``pos_embed`` to the patches.
* ``features(x)``: what OpenVLA's featurizer returns, i.e. timm's ``get_intermediate_layers(n={depth-2})``:
  the output of the SECOND-TO-LAST block, without the final norm, prefix tokens dropped, (B, P, D).
  The last block, ``norm`` and ``attn_pool`` exist (the release stores them) but never run.

Why not timm itself: timm imports torchvision at import time, and no torchvision wheel for this
project's CPU torch loads beside it (the index's CUDA build fails on ``torchvision::nms``). The layout is
checked by ``tests/test_openvla.py`` against an independent functional re-computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ViTSpec:
    """Sizes of one timm ViT variant (timm's defaults for the id, possibly overridden for tiny tests)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_hidden: int
    patch_size: int = 14
    img_size: int = 224
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    layer_scale: bool = False
    attn_pool: bool = False

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_prefix(self) -> int:
        return int(self.class_token) + self.reg_tokens


# timm ids OpenVLA names in config.json (timm_model_ids) -> their architecture (timm's model_args)
TIMM_VARIANTS: dict[str, dict] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": dict(embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096,
                                                  reg_tokens=4, no_embed_class=True, layer_scale=True),
    "vit_so400m_patch14_siglip_224": dict(embed_dim=1152, depth=27, num_heads=16, mlp_hidden=int(1152 * 3.7362),
                                          class_token=False, attn_pool=True),
    "vit_so400m_patch14_siglip_384": dict(embed_dim=1152, depth=27, num_heads=16, mlp_hidden=int(1152 * 3.7362),
                                          class_token=False, attn_pool=True),
}
# ImageNet mean/std for DINOv2, 0.5/0.5 for SigLIP (the timm data configs OpenVLA's processor used)
TIMM_NORMALIZE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "vit_so400m_patch14_siglip_224": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vit_so400m_patch14_siglip_384": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def vit_spec(timm_id: str, img_size: int, override: dict | None = None) -> ViTSpec:
    if timm_id not in TIMM_VARIANTS:
        raise ValueError(f"vision tower '{timm_id}' is not supported; supported: {', '.join(TIMM_VARIANTS)}")
    return ViTSpec(img_size=img_size, **{**TIMM_VARIANTS[timm_id], **(override or {})})


def _ln(d: int) -> nn.LayerNorm:
    return nn.LayerNorm(d, eps=1e-6)


class LayerScale(nn.Module):
    """timm's LayerScale with OpenVLA's parameter name (``scale_factor`` instead of ``gamma``)."""

    def __init__(self, d: int):
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((d,), 1e-5))

    def forward(self, x):
        return x * self.scale_factor


class PatchEmbed(nn.Module):
    def __init__(self, s: ViTSpec):
        super().__init__()
        self.proj = nn.Conv2d(3, s.embed_dim, s.patch_size, s.patch_size)

    def forward(self, x):
        """(B, 3, H, W) -> (B, P, D)"""
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, s: ViTSpec):
        super().__init__()
        d = s.embed_dim
        self.norm1 = _ln(d)
        self.attn = Attention(d, s.num_heads)
        self.ls1 = LayerScale(d) if s.layer_scale else nn.Identity()
        self.norm2 = _ln(d)
        self.mlp = Mlp(d, s.mlp_hidden)
        self.ls2 = LayerScale(d) if s.layer_scale else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """Parameters of SigLIP's MAP head (stored in the release, unused by OpenVLA's featurizer)."""

    def __init__(self, s: ViTSpec):
        super().__init__()
        d = s.embed_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = _ln(d)
        self.mlp = Mlp(d, s.mlp_hidden)


class ViT(nn.Module):
    """See the module docstring. ``features(x (B, 3, H, W)) -> (B, P, D)``."""

    def __init__(self, s: ViTSpec):
        super().__init__()
        self.spec = s
        d = s.embed_dim
        self.patch_embed = PatchEmbed(s)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if s.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, s.reg_tokens, d)) if s.reg_tokens else None
        n_pos = s.num_patches + (0 if s.no_embed_class else s.num_prefix)
        self.pos_embed = nn.Parameter(torch.randn(1, n_pos, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(s) for _ in range(s.depth)])
        self.norm = _ln(d)
        self.attn_pool = AttentionPoolLatent(s) if s.attn_pool else None
        self.grad_checkpointing = False

    def _prefix(self, B: int) -> list[torch.Tensor]:
        out = []
        if self.cls_token is not None:
            out.append(self.cls_token.expand(B, -1, -1))
        if self.reg_token is not None:
            out.append(self.reg_token.expand(B, -1, -1))
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens after the second-to-last block (no final norm): (B, 3, H, W) -> (B, P, D)."""
        x = self.patch_embed(x)
        pre = self._prefix(x.shape[0])
        if self.spec.no_embed_class:
            x = torch.cat(pre + [x + self.pos_embed], 1)
        else:
            x = torch.cat(pre + [x], 1) + self.pos_embed
        for blk in self.blocks[: self.spec.depth - 1]:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x[:, self.spec.num_prefix:]
