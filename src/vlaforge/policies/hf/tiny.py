"""Tiny random-weight VLMs of every supported family, built offline from configs.

Tests and ``benchmarks/memory.py`` need real transformers models without downloads:
``make_tiny_vlm(family)`` returns ``(model, tokenizer, image_processor)`` with a character-level
tokenizer (every printable ASCII character is a token, so any instruction tokenises), the
family's special tokens, and ``n_action_tokens`` spare tokens at the end of the vocabulary (the
ids the binned action head uses, as OpenVLA reuses the least-used ids). ``save_tiny_vlm(dir,
family)`` writes them with ``save_pretrained`` so that ``--policy hf --policy.path DIR`` loads
them like any local checkpoint. Random weights: these models only exercise the code paths.

    python -c "from vlaforge.policies.hf.tiny import save_tiny_vlm; save_tiny_vlm('runs/tiny-llava', 'llava')"
"""

from __future__ import annotations

from pathlib import Path

from vlaforge.fsutil import atomic_dir

FAMILY_NAMES = ("paligemma", "idefics3", "qwen2_vl", "llava")
_CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
_SPECIAL = {
    "paligemma": ["<image>"],
    "llava": ["<image>"],
    "idefics3": ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"],
    "qwen2_vl": ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
}


def make_tokenizer(family: str, n_action_tokens: int = 32):
    """Character-level fast tokenizer: pad/unk/bos/eos, the family's specials, ASCII, then action tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = _SPECIAL[family]
    actions = [f"<act_{i}>" for i in range(n_action_tokens)]
    words = ["<pad>", "<unk>", "<bos>", "<eos>"] + special + _CHARS + actions
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
                                  eos_token="<eos>")
    tok.add_special_tokens({"additional_special_tokens": special + actions})
    assert len(tok) == len(words)
    return tok


def make_tiny_vlm(family: str, hidden: int = 64, layers: int = 2, vision_hidden: int = 32, vision_layers: int = 1,
                  image_size: int = 32, patch: int = 8, n_action_tokens: int = 32, heads: int = 4, seed: int = 0):
    """A random-weight ``(model, tokenizer, image_processor)`` of ``family`` (see FAMILY_NAMES)."""
    import torch
    import transformers as T

    if family not in FAMILY_NAMES:
        raise ValueError(f"unknown tiny family '{family}'; choose one of {', '.join(FAMILY_NAMES)}")
    tok = make_tokenizer(family, n_action_tokens)
    ids = tok.convert_tokens_to_ids
    text = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=max(heads // 2, 1), head_dim=hidden // heads, vocab_size=len(tok),
                max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id)
    vision = dict(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
                  num_attention_heads=2, image_size=image_size, patch_size=patch)
    torch.manual_seed(seed)
    if family == "paligemma":
        cfg = T.PaliGemmaConfig(vision_config=dict(model_type="siglip_vision_model", **vision),
                                text_config=dict(model_type="gemma", **text), image_token_index=ids("<image>"),
                                projection_dim=hidden)
        model = T.PaliGemmaForConditionalGeneration(cfg)
        ip = T.SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    elif family == "llava":
        cfg = T.LlavaConfig(vision_config=dict(model_type="siglip_vision_model", **vision),
                            text_config=dict(model_type="llama", **text), image_token_index=ids("<image>"),
                            vision_feature_layer=-1, vision_feature_select_strategy="full")
        model = T.LlavaForConditionalGeneration(cfg)
        ip = T.SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    elif family == "idefics3":
        cfg = T.Idefics3Config(vision_config=vision, text_config=dict(model_type="llama", **text),
                               image_token_id=ids("<image>"), scale_factor=2)
        model = T.Idefics3ForConditionalGeneration(cfg)
        ip = T.Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": image_size},
                                         max_image_size={"longest_edge": image_size})
    else:  # qwen2_vl
        half = hidden // heads // 2
        mrope = [half - 2 * (half // 3), half // 3, half // 3]
        cfg = T.Qwen2VLConfig(
            vision_config=dict(depth=vision_layers, embed_dim=vision_hidden, hidden_size=hidden, num_heads=2,
                               patch_size=patch, spatial_merge_size=2, temporal_patch_size=2),
            text_config=dict(**text, rope_parameters={"rope_type": "default", "mrope_section": mrope,
                                                      "rope_theta": 10000.0}),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
        model = T.Qwen2VLForConditionalGeneration(cfg)
        ip = T.Qwen2VLImageProcessorPil(size={"shortest_edge": image_size * image_size,
                                              "longest_edge": image_size * image_size},
                                        patch_size=patch, merge_size=2, temporal_patch_size=2)
    return model.eval(), tok, ip


def save_tiny_vlm(path: str | Path, family: str, **kw) -> Path:
    """Write a tiny random VLM, its tokenizer and image processor with ``save_pretrained``."""
    model, tok, ip = make_tiny_vlm(family, **kw)
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        ip.save_pretrained(tmp)
    return path
