"""What differs between the supported Hugging Face VLM families, in one table.

Each ``Family`` says how many placeholder tokens one image takes, how the image placeholder
is written into the prompt, which extra tensors the model's forward needs, and where its
vision tower lives (to give a clear error when a checkpoint lacks one). Supported model types:

    paligemma          PaliGemma / PaliGemma 2 (SigLIP + Gemma; prefix-LM attention)
    idefics3, smolvlm  Idefics3 and SmolVLM (SigLIP-like tower, pixel shuffle, Llama)
    qwen2_vl, qwen2_5_vl  Qwen2-VL / Qwen2.5-VL (native-resolution ViT, M-RoPE)
    llava              LLaVA-style (CLIP/SigLIP tower + projector + Llama/Mistral)

Not supported yet: OpenVLA (model type ``openvla``). Its Prismatic remote code has no ``.model``
backbone and its own forward signature, so it is refused as an unknown family (loading any
remote-code checkpoint needs ``trust_remote_code=True`` in the first place).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlaforge.errors import UsageError

FAMILIES: dict[str, str] = {
    "paligemma": "paligemma",
    "idefics3": "idefics3",
    "smolvlm": "idefics3",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_vl",
    "llava": "llava",
}


@dataclass(frozen=True)
class Family:
    name: str
    image_token: str
    """the placeholder token the model replaces by image features"""
    prefix_lm: bool = False
    """PaliGemma: bidirectional attention over the prefix, causal over the suffix (token_type_ids)"""
    mrope: bool = False
    """Qwen2-VL: multimodal RoPE needs mm_token_type_ids (1 on image tokens) with image_grid_thw"""


SPECS = {
    "paligemma": Family("paligemma", "<image>", prefix_lm=True),
    "idefics3": Family("idefics3", "<image>"),
    "qwen2_vl": Family("qwen2_vl", "<|image_pad|>", mrope=True),
    "llava": Family("llava", "<image>"),
}


def detect_family(config) -> Family:
    """The family of a transformers config, or a ValueError naming the supported ones."""
    mt = getattr(config, "model_type", None)
    if mt not in FAMILIES:
        raise UsageError(f"unknown VLM family '{mt}': vlaforge supports model types {', '.join(sorted(FAMILIES))}; "
                         "other image-text models need a Family entry in vlaforge/policies/hf/families.py")
    if getattr(config, "vision_config", None) is None:
        raise UsageError(f"model of type '{mt}' has no vision tower (config.vision_config is missing); "
                         "load an image-text checkpoint, not a text-only one")
    return SPECS[FAMILIES[mt]]


def check_vision_tower(model, family: Family) -> None:
    """Raise a ValueError naming what is missing if the loaded model has no vision tower."""
    inner = getattr(model, "model", None)
    if inner is None:
        raise UsageError(f"{type(model).__name__} has no '.model' backbone (expected a *ForConditionalGeneration "
                         "of a supported family)")
    names = ("vision_tower", "vision_model", "visual")
    if not any(getattr(inner, n, None) is not None for n in names):
        raise UsageError(f"{type(model).__name__} ({family.name}) has no vision tower (none of {', '.join(names)}); "
                         "load an image-text checkpoint")
    if getattr(model, "lm_head", None) is None:
        raise UsageError(f"{type(model).__name__} has no lm_head; load an *ForConditionalGeneration checkpoint")


def image_tokens(family: Family, config, pixel: dict, view: int) -> int:
    """Number of placeholder tokens image ``view`` (flat index over the batch's images) takes."""
    vc = config.vision_config
    if family.name == "paligemma":
        return int(config.text_config.num_image_tokens) if hasattr(config.text_config, "num_image_tokens") else \
            (vc.image_size // vc.patch_size) ** 2
    if family.name == "idefics3":
        return (vc.image_size // vc.patch_size) ** 2 // (config.scale_factor ** 2)
    if family.name == "qwen2_vl":
        t, h, w = (int(x) for x in pixel["image_grid_thw"][view])
        return t * h * w // (vc.spatial_merge_size ** 2)
    # llava: one token per patch, minus the CLS token with the "default" feature strategy
    n = (vc.image_size // vc.patch_size) ** 2
    cls = 1 if getattr(vc, "model_type", "") == "clip_vision_model" else 0
    return n + cls - (1 if config.vision_feature_select_strategy == "default" else 0)


def image_placeholder(family: Family, n_tokens: int, tokenizer) -> str:
    """The prompt text standing for one image of ``n_tokens`` placeholder tokens."""
    if family.name == "idefics3":
        return "<fake_token_around_image><global-img>" + "<image>" * n_tokens + "<fake_token_around_image>"
    if family.name == "qwen2_vl":
        return "<|vision_start|>" + "<|image_pad|>" * n_tokens + "<|vision_end|>"
    return family.image_token * n_tokens


def required_tokens(family: Family) -> list[str]:
    """Special tokens the tokenizer must know for this family's prompts."""
    return {"paligemma": ["<image>"], "llava": ["<image>"],
            "idefics3": ["<fake_token_around_image>", "<image>", "<global-img>"],
            "qwen2_vl": ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"]}[family.name]


def image_processor_kwargs(family: Family) -> dict:
    """Per-call options of the family's image processor (one image, no tiling)."""
    return {"do_image_splitting": False} if family.name == "idefics3" else {}
