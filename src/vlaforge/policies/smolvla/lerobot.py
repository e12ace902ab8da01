"""LeRobot's published SmolVLA checkpoint layout, read and written without LeRobot.

A LeRobot SmolVLA directory (``lerobot/smolvla_base``, ``HuggingFaceVLA/smolvla_libero``, or what
``lerobot-train`` writes under ``pretrained_model/``) holds:

* ``config.json`` -- LeRobot's ``SmolVLAConfig`` as JSON: ``"type": "smolvla"``,
  ``input_features`` / ``output_features`` (``{"observation.state": {"type": "STATE", "shape":
  [8]}, "observation.images.image": {"type": "VISUAL", "shape": [3, 256, 256]}, ...}``),
  ``normalization_mapping`` (``{"STATE": "MEAN_STD", "ACTION": "MEAN_STD", ...}``), ``chunk_size``,
  ``n_action_steps``, ``num_steps``, ``vlm_model_name`` and the architecture fields of
  ``model.Arch``.
* ``model.safetensors`` -- the network under ``model.`` (``model.vlm_with_expert.vlm.*``,
  ``model.vlm_with_expert.lm_expert.*``, ``model.state_proj.*``, ``model.action_in_proj.*``,
  ``model.action_out_proj.*``, ``model.action_time_mlp_in.*``, ``model.action_time_mlp_out.*``); in
  checkpoints from before LeRobot's processor pipelines, also the normalisation buffers
  ``normalize_inputs.buffer_observation_state.mean`` ..., ``normalize_targets.buffer_action.*`` and
  ``unnormalize_outputs.buffer_action.*``.
* newer checkpoints: the statistics in ``policy_preprocessor_step_<i>_normalizer_processor.safetensors``
  (keys ``observation.state.mean``, ``action.std``, ...) and
  ``policy_postprocessor_step_<i>_unnormalizer_processor.safetensors``.

The VLM's own config and tokenizer are not in the directory: LeRobot fetches them from the hub by
``vlm_model_name``. Offline, they are looked up (without network) in ``DIR/vlm/``, then at
``vlm_model_name`` as a local path, then in the local Hugging Face cache; otherwise a one-line error
says how to provide them (``huggingface-cli download HuggingFaceTB/SmolVLM2-500M-Video-Instruct
--local-dir DIR/vlm`` on a machine with access).

``write_lerobot_dir`` writes the same layout (tests, ``benchmarks/gpu_smolvla.py``, and exporting a
vlaforge-trained policy back to LeRobot with its statistics in the processor files).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlaforge.errors import CheckpointError
from vlaforge.fsutil import atomic_dir
from vlaforge.policies.smolvla.policy import SmolVLAConfig
from vlaforge.schema import FORMAT_VERSION

LEGACY_STAT_PREFIXES = ("normalize_inputs.buffer_", "normalize_targets.buffer_", "unnormalize_outputs.buffer_")
IGNORED_KEYS = ("model.vlm_with_expert.vlm.lm_head.weight",)
NORM_MODES = ("IDENTITY", "MEAN_STD", "MIN_MAX", "QUANTILES")
PRE_STATS = "policy_preprocessor_step_5_normalizer_processor.safetensors"
POST_STATS = "policy_postprocessor_step_0_unnormalizer_processor.safetensors"


class LeRobotFormatError(CheckpointError):
    """A LeRobot directory that cannot be used; the message names the file and what to do."""


def is_lerobot_dir(path: str | Path) -> bool:
    """True when ``path/config.json`` is a LeRobot policy config of a type read here."""
    f = Path(path) / "config.json"
    try:
        return json.loads(f.read_text()).get("type") in ("smolvla",)
    except (OSError, ValueError, AttributeError):
        return False


def read_config(path: str | Path) -> dict:
    """LeRobot's config.json, checked for what this reader supports."""
    path = Path(path)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise LeRobotFormatError(f"cannot read '{path / 'config.json'}' ({type(e).__name__}); pass a LeRobot "
                                 "SmolVLA directory (config.json + model.safetensors)") from None
    if cfg.get("type") != "smolvla":
        hint = ("load it with --policy pi0 (vlaforge eval --checkpoint DIR recognises it)" if cfg.get("type") == "pi0"
                else "--policy smolvla reads smolvla only")
        raise LeRobotFormatError(f"'{path / 'config.json'}' is a LeRobot '{cfg.get('type')}' policy; {hint}")
    feats = cfg.get("input_features") or {}
    if "observation.state" not in feats or "action" not in (cfg.get("output_features") or {}):
        raise LeRobotFormatError(f"'{path / 'config.json'}' lacks input_features['observation.state'] or "
                                 "output_features['action']; re-save it with lerobot >= 0.3")
    if not image_keys(cfg):
        raise LeRobotFormatError(f"'{path / 'config.json'}' declares no VISUAL input feature")
    for flag in ("adapt_to_pi_aloha", "use_delta_joint_actions_aloha", "add_image_special_tokens"):
        if cfg.get(flag):
            raise LeRobotFormatError(f"'{path / 'config.json'}' sets {flag}=true, which vlaforge does not implement")
    for kind in ("STATE", "ACTION"):
        mode = (cfg.get("normalization_mapping") or {}).get(kind, "MEAN_STD")
        if mode not in NORM_MODES:
            raise LeRobotFormatError(f"'{path / 'config.json'}': normalisation '{mode}' for {kind} is not supported "
                                     f"({', '.join(NORM_MODES)})")
    return cfg


def lerobot_meta(path: str | Path) -> dict:
    """The vlaforge ``config.json`` content equivalent to a LeRobot directory (what ``read_config`` returns)."""
    c = SmolVLAConfig(lerobot=read_config(path))
    pol = {"family": "smolvla", "lerobot": c.lerobot, "state_dim": c.state_dim, "action_dim": c.action_dim,
           "views": c.views, "image_size": c.image_size}
    return {"format_version": FORMAT_VERSION, "policy": pol, "lerobot_dir": True}


def image_keys(cfg: dict) -> list[str]:
    return [k for k, v in (cfg.get("input_features") or {}).items() if v.get("type") == "VISUAL"]


def find_vlm(path: Path, name: str):
    """(VLM config, tokenizer) for a checkpoint, offline (see the module docstring)."""
    import transformers

    from vlaforge.policies.hf.model import remote_code_files

    tried = []
    kw = {"local_files_only": True, "trust_remote_code": False}  # a model file never decides to run code
    for cand in (path / "vlm", Path(name).expanduser(), name):
        if isinstance(cand, Path) and not (cand / "config.json").exists():
            tried.append(str(cand))
            continue
        files = remote_code_files(cand) if isinstance(cand, Path) else []
        if files:
            raise LeRobotFormatError(f"'{files[0]}' asks to run the model's own Python code (auto_map); vlaforge never "
                                     "runs a SmolVLA checkpoint's code: use the VLM's plain config and tokenizer")
        try:
            cfg = transformers.AutoConfig.from_pretrained(cand, **kw)
            tok = transformers.AutoTokenizer.from_pretrained(cand, **kw)
            return cfg, tok
        except (OSError, ValueError) as e:
            tried.append(f"{cand} ({type(e).__name__})")
    raise LeRobotFormatError(
        f"SmolVLA checkpoint '{path}' needs the config and tokenizer of its VLM '{name}', not found offline "
        f"(tried {', '.join(tried)}); put them in '{path / 'vlm'}' (e.g. `huggingface-cli download {name} "
        f"--local-dir {path / 'vlm'}` where the hub is reachable)")


def read_stats(path: Path, weights: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{feature: {stat: tensor}} from the processor files, else from legacy buffers in ``weights``."""
    from safetensors.torch import load_file

    stats: dict[str, dict[str, torch.Tensor]] = {}
    files = sorted(path.glob("policy_postprocessor*normalizer_processor.safetensors")) + sorted(
        path.glob("policy_preprocessor*normalizer_processor.safetensors"))  # the preprocessor's win
    for f in files:
        for k, v in load_file(str(f)).items():
            feat, _, stat = k.rpartition(".")
            stats.setdefault(feat, {})[stat] = v.float()
    if stats:
        return stats
    for k, v in weights.items():
        for p in LEGACY_STAT_PREFIXES:
            if k.startswith(p):
                feat, _, stat = k[len(p):].rpartition(".")
                stats.setdefault(feat.replace("_", "."), {})[stat] = v.float()
    return stats


def affine(stats: dict[str, dict[str, torch.Tensor]], feature: str, mode: str, dim: int, where: str):
    """(shift, scale) with normalised = (x - shift) / scale and x = normalised * scale + shift, per LeRobot's
    normaliser (eps 1e-8 on MEAN_STD; MIN_MAX and QUANTILES map [min, max] / [q01, q99] to [-1, 1])."""
    if mode == "IDENTITY":
        return torch.zeros(dim), torch.ones(dim)
    s = stats.get(feature, {})
    need = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "QUANTILES": ("q01", "q99")}[mode]
    if not all(n in s for n in need):
        raise LeRobotFormatError(f"{where} has no '{feature}' {'/'.join(need)} statistics for its {mode} "
                                 "normalisation (expected *normalizer_processor.safetensors or legacy normalize_* "
                                 "buffers); re-save the checkpoint with its dataset statistics")
    a, b = (s[n].flatten()[:dim].float() for n in need)
    if a.numel() != dim:
        raise LeRobotFormatError(f"{where}: '{feature}' statistics have {a.numel()} dims, the config says {dim}")
    if mode == "MEAN_STD":
        return a, b + 1e-8
    r = b - a
    r = torch.where(r == 0, torch.full_like(r, 1e-8), r)
    return a + r / 2, r / 2


def stats_from_affine(shift: torch.Tensor, scale: torch.Tensor, mode: str) -> dict[str, torch.Tensor]:
    """Inverse of ``affine`` for writing statistics back (MEAN_STD loses the 1e-8)."""
    if mode == "MEAN_STD":
        return {"mean": shift, "std": scale - 1e-8}
    lo, hi = shift - scale, shift + scale
    return {"min": lo, "max": hi} if mode == "MIN_MAX" else {"q01": lo, "q99": hi}


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    f = path / "model.safetensors"
    if not f.exists():
        raise LeRobotFormatError(f"'{f}' is missing: the checkpoint is partial; download it again")
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise LeRobotFormatError(f"'{f}' is corrupt ({str(e).splitlines()[0]}); download it again") from None


def check_keys(model_state: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], where: Path) -> dict:
    """The ``model.*`` weights matching ``model_state`` (names and shapes), or a one-line error."""
    mine = {k: v for k, v in weights.items() if k.startswith("model.") and k not in IGNORED_KEYS}
    missing = [k for k in model_state if k not in mine]
    unexpected = [k for k in mine if k not in model_state]
    if missing or unexpected:
        raise LeRobotFormatError(f"'{where}/model.safetensors' does not match its config.json: missing "
                                 f"{missing[:3]}{' ...' if len(missing) > 3 else ''} ({len(missing)}), unexpected "
                                 f"{unexpected[:3]} ({len(unexpected)}); is it a SmolVLA checkpoint of this config?")
    bad = [(k, tuple(v.shape), tuple(model_state[k].shape)) for k, v in mine.items() if v.shape != model_state[k].shape]
    if bad:
        k, got, want = bad[0]
        raise LeRobotFormatError(f"'{where}/model.safetensors': '{k}' has shape {got} but the config gives {want} "
                                 f"({len(bad)} such tensors); the config.json or the VLM config does not match")
    return mine


def write_lerobot_dir(path: str | Path, config: dict, model_state: dict[str, torch.Tensor],
                      stats: dict[str, dict[str, torch.Tensor]], vlm_config=None, tokenizer=None,
                      legacy_stats: bool = False) -> Path:
    """Write LeRobot's layout: config.json, model.safetensors (``model.*`` keys), statistics in the
    processor files (or, ``legacy_stats``, as normalize_* buffers in model.safetensors), and, when given,
    the VLM's config and tokenizer in ``vlm/`` (so that the directory loads offline). Atomic."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    with atomic_dir(path) as tmp:
        if legacy_stats:
            for feat, s in stats.items():
                prefixes = (("normalize_inputs.buffer_",) if feat != "action" else
                            ("normalize_targets.buffer_", "unnormalize_outputs.buffer_"))
                for p in prefixes:
                    for n, v in s.items():
                        state[f"{p}{feat.replace('.', '_')}.{n}"] = v.detach().float().cpu().clone()
        else:
            flat = {f"{feat}.{n}": v.detach().float().contiguous().cpu() for feat, s in stats.items()
                    for n, v in s.items()}
            save_file(flat, str(tmp / PRE_STATS))
            save_file({k: v for k, v in flat.items() if k.startswith("action.")}, str(tmp / POST_STATS))
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if vlm_config is not None:
            (tmp / "vlm").mkdir()
            vlm_config.save_pretrained(tmp / "vlm")
            tokenizer.save_pretrained(tmp / "vlm")
    return path
