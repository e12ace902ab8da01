"""LeRobot's published π0 checkpoint layout, read and written without LeRobot.

A LeRobot π0 directory (``lerobot/pi0_base``, ``lerobot/pi0_libero``, or what ``lerobot-train --policy.type pi0``
writes under ``pretrained_model/``) holds:

* ``config.json`` -- LeRobot's ``PI0Config`` as JSON: ``"type": "pi0"``, ``input_features`` / ``output_features``,
  ``normalization_mapping``, ``chunk_size``, ``n_action_steps``, ``num_inference_steps``, ``max_state_dim``,
  ``max_action_dim``, ``image_resolution``, ``paligemma_variant`` ("gemma_2b"), ``action_expert_variant``
  ("gemma_300m"), ``tokenizer_max_length`` (48), ``freeze_vision_encoder``, ``train_expert_only``, ``dtype``,
  ``empty_cameras`` (that many ``observation.images.empty_camera_<i>`` features are added when absent, as LeRobot's
  ``validate_features`` does at run time; the suite never fills them: blank images, masked out).
* ``model.safetensors`` -- the network under ``model.`` with ``model.py``'s names, as LeRobot's pinned transformers
  (>= 5.4, < 5.6) and the hub checkpoints name them: the SigLIP tower under
  ``...paligemma.model.vision_tower.vision_model.*`` (transformers 5.25 dropped the ``vision_model`` level; it is
  mapped here), and the tied embedding saved once as ``...paligemma.lm_head.weight`` (read as
  ``...language_model.embed_tokens.weight``, which a checkpoint may hold instead). ``...gemma_expert.lm_head.weight``
  (the expert's vocabulary head, never used) is ignored. Older openpi conversions name the time MLP
  ``time_mlp_in/out``: read as ``action_time_mlp_in/out`` (LeRobot's ``_fix_pytorch_state_dict_keys``). The load logs
  quoted in LeRobot issues #2291 and #3109 show ``lerobot/pi0_base`` with ``vision_tower.vision_model.*`` keys and
  without ``language_model.embed_tokens.weight``.
* statistics in ``policy_preprocessor_step_<i>_normalizer_processor.safetensors`` (and the post-processor's
  unnormaliser file), or, in checkpoints from before the processor pipelines, as ``normalize_*`` buffers in
  ``model.safetensors`` (smolvla/lerobot.py reads both).

The tokenizer (PaliGemma's, ``google/paligemma-3b-pt-224``) is not in the directory: LeRobot fetches it. Offline
it is looked up (without network) in ``DIR/tokenizer/``, then in the local Hugging Face cache; otherwise a one-line
error says how to provide it.

vlaforge extension (tests and toy runs only; LeRobot itself refuses it): ``paligemma_variant`` and
``action_expert_variant`` may be a dict of openpi's Gemma sizes (width, depth, mlp_dim, num_heads, num_kv_heads,
head_dim, vocab_size) and ``vision_config`` a dict of SigLIP sizes, so that a tiny random π0 is written in this
layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlaforge.fsutil import atomic_dir
from vlaforge.policies.pi0.model import GEMMA_VARIANTS, SIGLIP_SO400M, Arch
from vlaforge.policies.smolvla.lerobot import (
    NORM_MODES,
    POST_STATS,
    PRE_STATS,
    LeRobotFormatError,
    image_keys,
)

TOKENIZER = "google/paligemma-3b-pt-224"
_P = "model.paligemma_with_expert."
VISION_OURS, VISION_HUB = _P + "paligemma.model.vision_tower.", _P + "paligemma.model.vision_tower.vision_model."
EMBED, LM_HEAD = _P + "paligemma.model.language_model.embed_tokens.weight", _P + "paligemma.lm_head.weight"
IGNORED_KEYS = (_P + "gemma_expert.lm_head.weight",)
GEMMA_KEYS = ("width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim", "vocab_size")


def is_pi0_dir(path: str | Path) -> bool:
    """True when ``path/config.json`` is a LeRobot π0 config."""
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("type") == "pi0"
    except (OSError, ValueError, AttributeError):
        return False


def _sizes(v, what: str, where: Path) -> dict:
    if isinstance(v, str):
        if v not in GEMMA_VARIANTS:
            raise LeRobotFormatError(f"'{where}': {what} '{v}' is not one of {', '.join(GEMMA_VARIANTS)}")
        return dict(GEMMA_VARIANTS[v])
    if isinstance(v, dict) and set(v) <= set(GEMMA_KEYS) and {k for k in GEMMA_KEYS if k != "vocab_size"} <= set(v):
        return {"vocab_size": 257152, **{k: int(x) for k, x in v.items()}}
    raise LeRobotFormatError(f"'{where}': {what} must be a variant name or a dict of {', '.join(GEMMA_KEYS)}")


def read_config(path: str | Path) -> dict:
    """LeRobot's config.json, checked for what this reader supports."""
    f = Path(path) / "config.json"
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise LeRobotFormatError(f"cannot read '{f}' ({type(e).__name__}); pass a LeRobot pi0 directory "
                                 "(config.json + model.safetensors)") from None
    if not isinstance(cfg, dict) or cfg.get("type") != "pi0":
        raise LeRobotFormatError(f"'{f}' is a LeRobot '{cfg.get('type') if isinstance(cfg, dict) else '?'}' policy; "
                                 "--policy pi0 reads pi0 only")
    feats = cfg.get("input_features") or {}
    if "observation.state" not in feats or "action" not in (cfg.get("output_features") or {}):
        raise LeRobotFormatError(f"'{f}' lacks input_features['observation.state'] or output_features['action']")
    res = cfg.get("image_resolution") or [224, 224]
    for i in range(int(cfg.get("empty_cameras") or 0)):  # LeRobot's validate_features adds these at run time
        feats.setdefault(f"observation.images.empty_camera_{i}", {"type": "VISUAL", "shape": [3, *res]})
    if not image_keys(cfg):
        raise LeRobotFormatError(f"'{f}' declares no VISUAL input feature")
    if cfg.get("use_relative_actions"):
        raise LeRobotFormatError(f"'{f}' sets use_relative_actions=true (actions relative to the state), which "
                                 "vlaforge does not implement")
    for kind in ("STATE", "ACTION"):
        mode = (cfg.get("normalization_mapping") or {}).get(kind, "MEAN_STD")
        if mode not in NORM_MODES:
            raise LeRobotFormatError(f"'{f}': normalisation '{mode}' for {kind} is not supported "
                                     f"({', '.join(NORM_MODES)})")
    if len(res) != 2 or res[0] != res[1]:
        raise LeRobotFormatError(f"'{f}': image_resolution {res} is not square (PaliGemma reads square images)")
    try:
        arch_of(cfg, f).check()
    except ValueError as e:
        raise LeRobotFormatError(f"'{f}': {e}") from None
    if int(cfg.get("n_action_steps", 50)) > int(cfg.get("chunk_size", 50)):
        raise LeRobotFormatError(f"'{f}': n_action_steps exceeds chunk_size")
    return cfg


def arch_of(cfg: dict, where: Path | str = "config.json") -> Arch:
    """The network's shape from LeRobot's config (variants resolved to sizes)."""
    vision = dict(SIGLIP_SO400M)
    vision.update(cfg.get("vision_config") or {})
    return Arch(vlm=_sizes(cfg.get("paligemma_variant", "gemma_2b"), "paligemma_variant", Path(where)),
                expert=_sizes(cfg.get("action_expert_variant", "gemma_300m"), "action_expert_variant", Path(where)),
                vision=vision, image_size=int((cfg.get("image_resolution") or [224])[0]),
                max_state_dim=int(cfg.get("max_state_dim", 32)), max_action_dim=int(cfg.get("max_action_dim", 32)),
                chunk_size=int(cfg.get("chunk_size", 50)), min_period=float(cfg.get("min_period", 4e-3)),
                max_period=float(cfg.get("max_period", 4.0)))


def find_tokenizer(path: Path):
    """PaliGemma's tokenizer for a checkpoint, offline (see the module docstring)."""
    import transformers

    from vlaforge.policies.hf.model import remote_code_files

    tried = []
    kw = {"local_files_only": True, "trust_remote_code": False}
    for cand in (path / "tokenizer", TOKENIZER):
        if isinstance(cand, Path) and not cand.is_dir():
            tried.append(str(cand))
            continue
        files = remote_code_files(cand) if isinstance(cand, Path) else []
        if files:
            raise LeRobotFormatError(f"'{files[0]}' asks to run the tokenizer's own Python code (auto_map); vlaforge "
                                     "never runs a checkpoint's code")
        try:
            return transformers.AutoTokenizer.from_pretrained(cand, **kw)
        except (OSError, ValueError) as e:
            tried.append(f"{cand} ({type(e).__name__})")
    raise LeRobotFormatError(
        f"pi0 checkpoint '{path}' needs PaliGemma's tokenizer, not found offline (tried {', '.join(tried)}); put it in "
        f"'{path / 'tokenizer'}' (e.g. `huggingface-cli download {TOKENIZER} --local-dir {path / 'tokenizer'}` "
        "where the hub is reachable)")


def to_ours(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hub/LeRobot names -> this reader's (vision_model level dropped, lm_head read as the embedding, time_mlp
    renamed, the expert's vocabulary head dropped); non-``model.`` keys (legacy statistics) are left out."""
    out = {}
    for k, v in weights.items():
        if not k.startswith("model.") or k in IGNORED_KEYS:
            continue
        if k.startswith(VISION_HUB):
            k = VISION_OURS + k[len(VISION_HUB):]
        elif k == LM_HEAD:
            if EMBED in weights:
                continue
            k = EMBED
        elif k.startswith(("model.time_mlp_in.", "model.time_mlp_out.")):
            k = k.replace("model.time_mlp_", "model.action_time_mlp_")
        out[k] = v
    return out


def to_hub(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This reader's names -> the hub's (inverse of ``to_ours``; the tied embedding saved as ``lm_head``)."""
    out = {}
    for k, v in state.items():
        if k.startswith(VISION_OURS):
            k = VISION_HUB + k[len(VISION_OURS):]
        elif k == EMBED:
            k = LM_HEAD
        out[k] = v
    return out


def check_keys(model_state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], where: Path) -> dict:
    """The checkpoint's weights in our names matching ``model_state`` (names and shapes), or a one-line error."""
    mine = to_ours(weights)
    missing = [k for k in model_state if k not in mine]
    unexpected = [k for k in mine if k not in model_state]
    if missing or unexpected:
        raise LeRobotFormatError(f"'{where}/model.safetensors' does not match its config.json: missing "
                                 f"{missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)}), unexpected "
                                 f"{unexpected[:3]} ({len(unexpected)}); is it a pi0 checkpoint of this config?")
    bad = [(k, tuple(v.shape), tuple(model_state[k].shape)) for k, v in mine.items() if v.shape != model_state[k].shape]
    if bad:
        k, got, want = bad[0]
        raise LeRobotFormatError(f"'{where}/model.safetensors': '{k}' has shape {got} but the config gives {want} "
                                 f"({len(bad)} such tensors); the config.json does not match the weights")
    return mine


def write_lerobot_dir(path: str | Path, config: dict, model_state: dict[str, torch.Tensor],
                      stats: dict[str, dict[str, torch.Tensor]], tokenizer=None) -> Path:
    """Write LeRobot's layout: config.json, model.safetensors (hub names, ``to_hub``), statistics in the processor
    files, and, when given, the tokenizer in ``tokenizer/`` (so that the directory loads offline). Atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in to_hub(model_state).items()}
    with atomic_dir(path) as tmp:
        flat = {f"{feat}.{n}": v.detach().float().contiguous().cpu() for feat, s in stats.items() for n, v in s.items()}
        save_file(flat, str(tmp / PRE_STATS))
        save_file({k: v for k, v in flat.items() if k.startswith("action.")}, str(tmp / POST_STATS))
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "tokenizer")
    return path
