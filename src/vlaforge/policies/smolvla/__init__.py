"""SmolVLA (LeRobot's flow-matching VLA on SmolVLM2) as a vlaforge policy, without LeRobot.

Public API:
    SmolVLA, SmolVLAConfig          the policy and its switches (policy.py); network in model.py
    load_lerobot(dir, **switches)   a LeRobot SmolVLA checkpoint directory -> SmolVLA (lerobot.py layout)
    build_smolvla_policy(**cfg)     ``--policy smolvla --policy.path DIR`` (the ``--policy.*`` switches)
    write_smolvla_files, load_smolvla_policy   vlaforge checkpoints (used by ``vlaforge.policies``)
    export_lerobot(policy, dir)     back to LeRobot's layout (LoRA merged, statistics in processor files)
    tiny_lerobot_dir(dir, ...)      a random tiny checkpoint in LeRobot's layout, offline (tests)
    configs(real_size=...)          LeRobot + VLM configs of a random SmolVLA, tiny or at the real size (benchmarks)

``vlaforge.policies.load_policy(DIR)`` recognises a LeRobot SmolVLA directory (config.json with
``"type": "smolvla"``), so ``vlaforge eval --checkpoint DIR`` and ``vlaforge sft --init DIR`` read
released checkpoints directly. A vlaforge checkpoint of a SmolVLA policy holds ``config.json``
(family ``smolvla``: LeRobot's config, the VLM's config and the switches), ``model.safetensors``
(every weight under LeRobot's names below ``model.``, LoRA layers as peft names them, the value head
and the statistics) and ``tokenizer/``; it needs nothing else to load.

π0 is its own family (``vlaforge.policies.pi0``); the RL side (SDE sampling, scoring, SFT, DSRL) is shared
through ``policies/heads/flow_chunk.py``.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

import vlaforge.policies.smolvla.lerobot as L
from vlaforge.errors import CheckpointError
from vlaforge.policies.base import load_weights
from vlaforge.policies.smolvla.lerobot import LeRobotFormatError, is_lerobot_dir
from vlaforge.policies.smolvla.policy import SmolVLA, SmolVLAConfig

__all__ = ["LeRobotFormatError", "SmolVLA", "SmolVLAConfig", "build_smolvla_policy", "configs", "export_lerobot",
           "is_lerobot_dir", "load_lerobot", "load_smolvla_policy", "tiny_lerobot_dir", "write_smolvla_files"]

SWITCHES = {f.name for f in fields(SmolVLAConfig)} - {"lerobot", "vlm", "state_dim", "action_dim", "views", "image_size"}
# --policy.* fields of the shared HF config that mean nothing here and are ignored when left at their defaults
_HF_ONLY_OK = {"trust_remote_code": False, "critic": "shared"}


def load_lerobot(path: str | Path, **switches) -> SmolVLA:
    """A LeRobot SmolVLA directory -> policy with its weights and statistics (one-line errors on bad input)."""
    path = Path(path).expanduser()
    if not (path / "config.json").exists():
        raise LeRobotFormatError(f"no LeRobot checkpoint at '{path}' (expected config.json + model.safetensors)")
    lr = L.read_config(path)
    weights = L.load_weights(path)
    vlm_cfg, tok = L.find_vlm(path, lr.get("vlm_model_name", "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"))
    policy = SmolVLA(SmolVLAConfig(lerobot=lr, vlm=vlm_cfg.to_dict(), **switches), tok)
    own = {k: v for k, v in policy.model.state_dict().items()}
    base = {k.replace(".base_layer.", "."): v for k, v in own.items() if "lora_" not in k}
    mine = L.check_keys({f"model.{k}": v for k, v in base.items()}, weights, path)
    by_base = {k.replace(".base_layer.", "."): k for k in own if "lora_" not in k}
    with torch.no_grad():
        for k, v in mine.items():
            own[by_base[k[len("model."):]]].copy_(v.to(own[by_base[k[len("model."):]]].dtype))
    stats = L.read_stats(path, weights)
    modes = lr.get("normalization_mapping") or {}
    policy.set_stats(L.affine(stats, "observation.state", modes.get("STATE", "MEAN_STD"), policy.cfg.state_dim, path),
                     L.affine(stats, "action", modes.get("ACTION", "MEAN_STD"), policy.cfg.action_dim, path))
    return policy


def build_smolvla_policy(**cfg) -> SmolVLA:
    """``--policy smolvla``: ``path`` names a LeRobot SmolVLA directory; the other ``--policy.*`` switches
    that apply are passed on (see ``SmolVLAConfig``)."""
    path = cfg.get("path")
    if not path:
        raise ValueError("--policy smolvla needs --policy.path DIR (a LeRobot SmolVLA checkpoint directory)")
    for k, ok in _HF_ONLY_OK.items():
        if k in cfg and cfg[k] != ok:
            raise ValueError(f"--policy.{k.replace('_', '-')} {cfg[k]} does not apply to --policy smolvla")
    return load_lerobot(path, **{k: v for k, v in cfg.items() if k in SWITCHES})


def build_family(name: str, **cfg) -> SmolVLA:
    """The registry's ``build``."""
    return build_smolvla_policy(**cfg)


def load_family(path: Path, name: str, cfg: dict, device: str = "cpu", trust_remote_code: bool = False) -> SmolVLA:
    """The registry's ``load`` (a vlaforge checkpoint of a SmolVLA)."""
    return load_smolvla_policy(path, cfg, device)


def load_native(path: Path, device: str = "cpu") -> SmolVLA:
    """The registry's native loader: a LeRobot SmolVLA folder as released."""
    return load_lerobot(path).to(device)


def fresh_family(name: str, cfg, spec) -> SmolVLA:
    """The registry's ``fresh``: the checkpoint fixes dims and chunk; the --policy.* switches that apply pass on."""
    import dataclasses

    return build_smolvla_policy(**dataclasses.asdict(cfg.hf))


def write_smolvla_files(policy: SmolVLA, d: Path) -> dict[str, torch.Tensor]:
    """Save the tokenizer beside the checkpoint; return the state for model.safetensors."""
    policy.tokenizer.save_pretrained(d / "tokenizer")
    return policy.state_dict()


def load_smolvla_policy(path: str | Path, cfg: dict, device: str = "cpu") -> SmolVLA:
    """Rebuild a policy saved by ``write_smolvla_files`` (``cfg``: its config.json policy dict without 'family')."""
    import transformers
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{weights}' is missing or corrupt ({str(e).splitlines()[0]}); re-create the "
                              "checkpoint") from None
    known = {f.name for f in fields(SmolVLAConfig)}
    if set(cfg) - known:
        raise CheckpointError(f"checkpoint '{path}' has unknown smolvla options {sorted(set(cfg) - known)}")
    from vlaforge.policies.hf.model import remote_code_files

    files = remote_code_files(path / "tokenizer")
    if files:
        raise CheckpointError(f"'{files[0]}' asks to run the tokenizer's own Python code (auto_map); vlaforge never "
                              "runs a checkpoint's code: re-create the checkpoint")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True,
                                                         trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"'{path / 'tokenizer'}' is missing or unreadable ({type(e).__name__}): the checkpoint "
                              "is partial; re-create it") from None
    try:
        policy = SmolVLA(SmolVLAConfig(**cfg), tok)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint '{path}' has an incompatible config: {e}") from None
    load_weights(policy, state, path)
    return policy.to(device)


def export_lerobot(policy: SmolVLA, path: str | Path) -> Path:
    """Write ``policy`` in LeRobot's layout (config.json, model.safetensors with LoRA merged, statistics in the
    processor files, the VLM's config and tokenizer in ``vlm/``). The value head is not part of it."""
    import transformers

    from vlaforge.policies.smolvla.lerobot import stats_from_affine, write_lerobot_dir

    modes = policy.cfg.lerobot.get("normalization_mapping") or {}
    stats = {}
    for feat, kind, (shift, scale) in (("observation.state", "STATE", (policy.state_shift, policy.state_scale)),
                                       ("action", "ACTION", (policy.action_shift, policy.action_scale))):
        mode = modes.get(kind, "MEAN_STD")
        if mode != "IDENTITY":
            stats[feat] = stats_from_affine(shift.cpu(), scale.cpu(), mode)
    vlm_cfg = transformers.AutoConfig.for_model(**policy.cfg.vlm)
    return write_lerobot_dir(path, policy.cfg.lerobot, policy.lerobot_state(), stats, vlm_cfg, policy.tokenizer)


# SmolVLM2-500M-Video-Instruct's architecture (SmolVLA's VLM), for random-weight runs at the real size
SMOLVLM2_500M = dict(text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                               num_key_value_heads=5, head_dim=64, vocab_size=49280, rope_theta=100000.0,
                               max_position_embeddings=8192, rms_norm_eps=1e-5),
                     vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                 image_size=512, patch_size=16),
                     scale_factor=4, num_vlm_layers=16)


def configs(state_dim: int = 2, action_dim: int = 2, views: int = 1, image_size: int = 32, chunk_size: int = 4,
            n_action_steps: int | None = None, num_steps: int = 3, hidden: int = 64, layers: int = 4,
            real_size: bool = False, **lerobot_fields):
    """(LeRobot config dict, VLM config, character tokenizer) of a random SmolVLA: tiny (``hidden``, ``layers``,
    a 1-layer vision tower at ``image_size``), or ``real_size`` (SmolVLM2-500M cut to 16 layers, 512 px, max
    dims 32: the released SmolVLA's ~450M parameters). Extra keyword arguments override LeRobot fields."""
    import transformers as T

    from vlaforge.policies.hf.tiny import make_tokenizer

    tok = make_tokenizer("idefics3", n_action_tokens=0)
    if real_size:
        R = SMOLVLM2_500M
        text, vision = dict(R["text"]), dict(R["vision"])
        scale, n_layers, max_dim, resize = R["scale_factor"], R["num_vlm_layers"], 32, [512, 512]
    else:
        heads = 4
        text = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                    num_key_value_heads=heads // 2, head_dim=hidden // heads, vocab_size=len(tok),
                    max_position_embeddings=512)
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      image_size=image_size, patch_size=image_size // 4)
        scale, n_layers, max_dim, resize = 2, layers, 8, [image_size, image_size]
    vlm_cfg = T.SmolVLMConfig(vision_config=vision, text_config=dict(model_type="llama", pad_token_id=tok.pad_token_id,
                                                                     **text),
                              scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"))
    images = {f"observation.images.{'image' if i == 0 else f'image{i + 1}'}":
              {"type": "VISUAL", "shape": [3, image_size, image_size]} for i in range(views)}
    lr = {"type": "smolvla", "n_obs_steps": 1, "chunk_size": chunk_size,
          "n_action_steps": n_action_steps or chunk_size,
          "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
          "input_features": {**images, "observation.state": {"type": "STATE", "shape": [state_dim]}},
          "output_features": {"action": {"type": "ACTION", "shape": [action_dim]}},
          "max_state_dim": max_dim, "max_action_dim": max_dim, "resize_imgs_with_padding": resize,
          "empty_cameras": 0, "tokenizer_max_length": 48, "num_steps": num_steps, "use_cache": True,
          "freeze_vision_encoder": True, "train_expert_only": True, "train_state_proj": True,
          "vlm_model_name": "HuggingFaceTB/SmolVLM2-500M-Video-Instruct", "load_vlm_weights": True,
          "add_image_special_tokens": False, "attention_mode": "cross_attn", "prefix_length": -1,
          "pad_language_to": "longest", "num_expert_layers": -1, "num_vlm_layers": n_layers,
          "self_attn_every_n_layers": 2, "expert_width_multiplier": 0.75, "min_period": 4e-3, "max_period": 4.0}
    lr.update(lerobot_fields)
    return lr, vlm_cfg, tok


def tiny_lerobot_dir(path: str | Path, seed: int = 0, legacy_stats: bool = False, **kw) -> Path:
    """A random tiny SmolVLA written in LeRobot's layout, with its VLM config and a character tokenizer in
    ``vlm/``. Every config field and weight name is LeRobot's; sizes are tiny (builds in about a second).
    ``kw`` go to ``configs`` (dims, views, image_size, chunk_size, n_action_steps, num_steps, LeRobot fields)."""
    from vlaforge.policies.smolvla.lerobot import write_lerobot_dir
    from vlaforge.policies.smolvla.model import SmolVLAModel

    lr, vlm_cfg, tok = configs(**kw)
    torch.manual_seed(seed)
    model = SmolVLAModel(vlm_cfg, SmolVLAConfig(lerobot=lr).arch())
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["model.vlm_with_expert.vlm.lm_head.weight"] = torch.randn(vlm_cfg.text_config.vocab_size,
                                                                    vlm_cfg.text_config.hidden_size) * 0.02  # as released
    g = torch.Generator().manual_seed(seed + 1)
    sd, ad = lr["input_features"]["observation.state"]["shape"][0], lr["output_features"]["action"]["shape"][0]
    stats = {"observation.state": {"mean": torch.randn(sd, generator=g) * 0.1, "std": torch.rand(sd, generator=g) + 0.5},
             "action": {"mean": torch.randn(ad, generator=g) * 0.1, "std": torch.rand(ad, generator=g) * 0.3 + 0.2}}
    return write_lerobot_dir(path, lr, state, stats, vlm_cfg, tok, legacy_stats=legacy_stats)
