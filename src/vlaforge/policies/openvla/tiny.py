"""Tiny random OpenVLA / OpenVLA-OFT checkpoints in the released layout, offline (tests, benchmarks, trying).

``save_tiny_openvla(dir)`` writes what a released checkpoint directory holds, at toy sizes: config.json
with their ``OpenVLAConfig`` fields (+ ``vlaforge_vit_overrides``, the only addition, shrinking the
timm towers), the weights sharded over several ``model-0000k-of-0000n.safetensors`` with
``model.safetensors.index.json``, a character-level tokenizer with Llama-2's special pieces (``<s>``,
``</s>``, ``<unk>``, ``<PAD>``, ``▁``) whose un-padded vocabulary ends in ``n_bins`` filler ids (the
action bins), norm_stats under one dataset key, and with ``oft=True`` the OFT component files
(``action_head--1_checkpoint.*``, ``proprio_projector--1_checkpoint.*``). Random weights: these
models only exercise code paths. ``real_size=True`` keeps OpenVLA-7B's sizes (GPU benchmarks).

    python -c "from vlaforge.policies.openvla.tiny import save_tiny_openvla; save_tiny_openvla('runs/tiny-openvla')"
    vlaforge train --policy openvla --policy.path runs/tiny-openvla --image-size 28 --iterations 1
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlaforge.fsutil import atomic_dir

_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
DINO, SIGLIP = "vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"


def make_tokenizer(vocab: int):
    """Char-level fast tokenizer of exactly ``vocab`` ids: specials, '▁', ASCII, then filler ids up to ``vocab``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "▁"] + _CHARS
    words += [f"<extra_{i}>" for i in range(vocab - len(words))]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.add_special_tokens({"pad_token": "<PAD>"})  # id = vocab, as Llama-2's <PAD> is 32000 in OpenVLA
    return tok


def tiny_config(action_dim: int = 2, state_dim: int = 2, key: str = "pointreach", n_bins: int = 256,
                real_size: bool = False, image_size: int = 28) -> dict:
    """A config.json dict with their fields (sizes shrunk through text_config and vlaforge_vit_overrides)."""
    vocab = 32000 if real_size else 384
    text = {"model_type": "llama", "pad_token_id": vocab, "vocab_size": vocab + 64}
    if not real_size:
        text.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=False)
    lo, hi = [-0.8] * action_dim, [0.6] * action_dim
    stats = {key: {"action": {"q01": lo, "q99": hi, "mask": [True] * action_dim},
                   "proprio": {"q01": [-1.5] * state_dim, "q99": [1.5] * state_dim}}}
    cfg = {"model_type": "openvla", "architectures": ["OpenVLAForActionPrediction"], "arch_specifier": "no-align+fused-gelu-mlp",
           "vision_backbone_id": "dinosiglip-vit-so-224px", "llm_backbone_id": "llama2-7b-pure",
           "hf_llm_id": "meta-llama/Llama-2-7b-hf", "use_fused_vision_backbone": True,
           "image_resize_strategy": "resize-naive", "timm_model_ids": [DINO, SIGLIP],
           "timm_override_act_layers": [None, None], "image_sizes": [224, 224] if real_size else [image_size] * 2,
           "llm_max_length": 2048, "pad_token_id": vocab, "pad_to_multiple_of": 64, "n_action_bins": n_bins,
           "norm_stats": stats, "output_projector_states": False, "text_config": text, "torch_dtype": "bfloat16"}
    if not real_size:
        cfg["vlaforge_vit_overrides"] = [dict(embed_dim=16, depth=3, num_heads=2, mlp_hidden=32),
                                         dict(embed_dim=24, depth=3, num_heads=2, mlp_hidden=48)]
    return cfg


def save_tiny_openvla(path: str | Path, oft: bool = False, action_dim: int = 2, state_dim: int = 2,
                      key: str = "pointreach", seed: int = 0, component_format: str = "safetensors",
                      shard_bytes: int = 200_000, image_size: int = 28) -> Path:
    """Write a random tiny checkpoint in the released layout into ``path`` (atomically)."""
    from safetensors.torch import save_file

    from vlaforge.policies.openvla.oft import L1RegressionActionHead, ProprioProjector
    from vlaforge.policies.openvla.prismatic import PrismaticVLM, read_prismatic_config, write_prismatic

    path = Path(path)
    raw = tiny_config(action_dim, state_dim, key, image_size=image_size)
    torch.manual_seed(seed)
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(raw))
        cfg = read_prismatic_config(tmp)
        model = PrismaticVLM(cfg)
        with torch.no_grad():  # LayerScale's 1e-5 and zero tokens would hide layout mistakes: randomise all
            for p in model.parameters():
                p.normal_(0, 0.2)
        write_prismatic(model, cfg, tmp, shard_bytes=shard_bytes)
        make_tokenizer(cfg.vocab_size).save_pretrained(tmp)
        if oft:
            D = cfg.text_config["hidden_size"]
            parts = {"action_head": L1RegressionActionHead(D, action_dim), "proprio_projector": ProprioProjector(D, state_dim)}
            for name, mod in parts.items():
                sd = {f"module.{k}": v.detach().clone() for k, v in mod.state_dict().items()}  # DDP names, as released
                if component_format == "pt":
                    torch.save(sd, tmp / f"{name}--1_checkpoint.pt")
                else:
                    save_file(sd, str(tmp / f"{name}--1_checkpoint.safetensors"))
    return path
