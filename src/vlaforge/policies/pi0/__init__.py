"""π0 (Physical Intelligence's flow-matching VLA on PaliGemma) as a vlaforge policy, without LeRobot or openpi.

Reference: LeRobot ``src/lerobot/policies/pi0/`` and ``src/lerobot/policies/pi_gemma.py`` at commit
7427f31801f944f5ec9ce53cda02862ce7d1638b (2026-08-23), itself a port of openpi's ``src/openpi/models_pytorch/``;
the layer maths are transformers 5.25's Gemma/PaliGemma/SigLIP modules (``model.py`` says what is restated).

Public API:
    Pi0, Pi0Config                  the policy and its switches (policy.py); network in model.py
    load_lerobot(dir, **switches)   a LeRobot π0 checkpoint directory -> Pi0 (lerobot.py layout)
    build_pi0_policy(**cfg)         ``--policy pi0 --policy.path DIR`` (the ``--policy.*`` switches)
    write_pi0_files, load_pi0_policy   vlaforge checkpoints (used by ``vlaforge.policies``)
    export_lerobot(policy, dir)     back to LeRobot's layout (LoRA merged, statistics in processor files)
    tiny_lerobot_dir(dir, ...)      a random tiny π0 in LeRobot's layout, offline (tests)
    configs(real_size=...)          LeRobot config + tokenizer of a random π0, tiny or at the real size (benchmarks)

``vlaforge.policies.load_policy(DIR)`` recognises a LeRobot π0 directory (config.json with ``"type": "pi0"``), so
``vlaforge eval --checkpoint DIR`` and ``vlaforge sft --init DIR`` read it directly. A vlaforge checkpoint of a π0
policy holds ``config.json`` (family ``pi0``: LeRobot's config and the switches), ``model.safetensors`` (the network
under this reader's names below ``model.``, LoRA layers as peft names them, the value head and the statistics) and
``tokenizer/``.

π0.5 is not served: its expert uses adaRMS norms conditioned on the time (``input_layernorm.dense.*`` keys), takes
the time through that condition instead of the action-time MLP, has no state token (the state is discretised into
the prompt), and its released layout differs (``time_mlp_*``); see docs/vlas.md.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

import vlaforge.policies.pi0.lerobot as L
from vlaforge.errors import CheckpointError
from vlaforge.policies.base import load_weights
from vlaforge.policies.pi0.policy import Pi0, Pi0Config
from vlaforge.policies.smolvla.lerobot import LeRobotFormatError, affine, read_stats, stats_from_affine
from vlaforge.policies.smolvla.lerobot import load_weights as read_safetensors
from vlaforge.schema import FORMAT_VERSION

__all__ = ["Pi0", "Pi0Config", "build_pi0_policy", "configs", "export_lerobot", "load_lerobot", "load_pi0_policy",
           "tiny_lerobot_dir", "write_pi0_files"]

SWITCHES = {f.name for f in fields(Pi0Config)} - {"lerobot", "state_dim", "action_dim", "views", "image_size"}
# --policy.* fields of the shared HF config that mean nothing here and are ignored when left at their defaults
_HF_ONLY_OK = {"trust_remote_code": False, "critic": "shared"}


def load_lerobot(path: str | Path, **switches) -> Pi0:
    """A LeRobot π0 directory -> policy with its weights and statistics (one-line errors on bad input)."""
    path = Path(path).expanduser()
    if not (path / "config.json").exists():
        raise LeRobotFormatError(f"no LeRobot checkpoint at '{path}' (expected config.json + model.safetensors)")
    lr = L.read_config(path)
    weights = read_safetensors(path)
    tok = L.find_tokenizer(path)
    policy = Pi0(Pi0Config(lerobot=lr, **switches), tok)
    own = policy.model.state_dict()
    by_base = {k.replace(".base_layer.", "."): k for k in own if "lora_" not in k}
    mine = L.check_keys({f"model.{k}": own[v] for k, v in by_base.items()}, weights, path)
    with torch.no_grad():
        for k, v in mine.items():
            dst = own[by_base[k[len("model."):]]]
            dst.copy_(v.to(dst.dtype))
    stats = read_stats(path, weights)
    modes = lr.get("normalization_mapping") or {}
    policy.set_stats(affine(stats, "observation.state", modes.get("STATE", "MEAN_STD"), policy.cfg.state_dim, path),
                     affine(stats, "action", modes.get("ACTION", "MEAN_STD"), policy.cfg.action_dim, path))
    return policy


def lerobot_meta(path: str | Path) -> dict:
    """The vlaforge ``config.json`` content equivalent to a LeRobot π0 directory (the registry's native meta)."""
    c = Pi0Config(lerobot=L.read_config(path))
    pol = {"family": "pi0", "lerobot": c.lerobot, "state_dim": c.state_dim, "action_dim": c.action_dim,
           "views": c.views, "image_size": c.image_size}
    return {"format_version": FORMAT_VERSION, "policy": pol, "lerobot_dir": True}


def build_pi0_policy(**cfg) -> Pi0:
    """``--policy pi0``: ``path`` names a LeRobot π0 directory; the other ``--policy.*`` switches that apply are
    passed on (see ``Pi0Config``)."""
    path = cfg.get("path")
    if not path:
        raise ValueError("--policy pi0 needs --policy.path DIR (a LeRobot pi0 checkpoint directory)")
    for k, ok in _HF_ONLY_OK.items():
        if k in cfg and cfg[k] != ok:
            raise ValueError(f"--policy.{k.replace('_', '-')} {cfg[k]} does not apply to --policy pi0")
    return load_lerobot(path, **{k: v for k, v in cfg.items() if k in SWITCHES})


def build_family(name: str, **cfg) -> Pi0:
    """The registry's ``build``."""
    return build_pi0_policy(**cfg)


def load_family(path: Path, name: str, cfg: dict, device: str = "cpu", trust_remote_code: bool = False) -> Pi0:
    """The registry's ``load`` (a vlaforge checkpoint of a π0)."""
    return load_pi0_policy(path, cfg, device)


def load_native(path: Path, device: str = "cpu") -> Pi0:
    """The registry's native loader: a LeRobot π0 folder as released."""
    return load_lerobot(path).to(device)


def fresh_family(name: str, cfg, spec) -> Pi0:
    """The registry's ``fresh``: the checkpoint fixes dims and chunk; the --policy.* switches that apply pass on."""
    import dataclasses

    return build_pi0_policy(**dataclasses.asdict(cfg.hf))


def write_pi0_files(policy: Pi0, d: Path) -> dict[str, torch.Tensor]:
    """Save the tokenizer beside the checkpoint; return the state for model.safetensors."""
    policy.tokenizer.save_pretrained(d / "tokenizer")
    return policy.state_dict()


def load_pi0_policy(path: str | Path, cfg: dict, device: str = "cpu") -> Pi0:
    """Rebuild a policy saved by ``write_pi0_files`` (``cfg``: its config.json policy dict without 'family')."""
    import transformers
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vlaforge.policies.hf.model import remote_code_files

    path = Path(path)
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"'{weights}' is missing or corrupt ({str(e).splitlines()[0]}); re-create the "
                              "checkpoint") from None
    known = {f.name for f in fields(Pi0Config)}
    if set(cfg) - known:
        raise CheckpointError(f"checkpoint '{path}' has unknown pi0 options {sorted(set(cfg) - known)}")
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
        policy = Pi0(Pi0Config(**cfg), tok)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint '{path}' has an incompatible config: {e}") from None
    load_weights(policy, state, path)
    return policy.to(device)


def export_lerobot(policy: Pi0, path: str | Path) -> Path:
    """Write ``policy`` in LeRobot's layout (config.json, model.safetensors with LoRA merged under the hub's names,
    statistics in the processor files, the tokenizer in ``tokenizer/``). The value head is not part of it."""
    modes = policy.cfg.lerobot.get("normalization_mapping") or {}
    stats = {}
    for feat, kind, (shift, scale) in (("observation.state", "STATE", (policy.state_shift, policy.state_scale)),
                                       ("action", "ACTION", (policy.action_shift, policy.action_scale))):
        mode = modes.get(kind, "MEAN_STD")
        if mode != "IDENTITY":
            stats[feat] = stats_from_affine(shift.cpu(), scale.cpu(), mode)
    return L.write_lerobot_dir(path, policy.cfg.lerobot, policy.lerobot_state(), stats, policy.tokenizer)


def configs(state_dim: int = 2, action_dim: int = 2, views: int = 1, image_size: int = 32, chunk_size: int = 4,
            n_action_steps: int | None = None, num_steps: int = 3, width: int = 32, expert_width: int = 16,
            depth: int = 2, real_size: bool = False, **lerobot_fields):
    """(LeRobot config dict, character tokenizer) of a random π0: tiny (Gemmas of ``width``/``expert_width`` with
    ``depth`` layers, 8 heads of 4 dims and 1 kv head as π0's layout, a 1-layer SigLIP at ``image_size``) or
    ``real_size`` (gemma_2b + gemma_300m + SigLIP So400m/14 at 224 px, max dims 32: the released π0's
    architecture, 3.245B parameters as built here without the vocabulary heads; the tokenizer's ids lie inside
    PaliGemma's 257,152-token vocabulary). Extra keyword arguments override LeRobot fields."""
    from vlaforge.policies.hf.tiny import make_tokenizer

    tok = make_tokenizer("idefics3", n_action_tokens=0)
    if real_size:
        variants, vision, max_dim, image_size = ("gemma_2b", "gemma_300m"), None, 32, 224
    else:
        g = dict(width=width, depth=depth, mlp_dim=2 * width, num_heads=8, num_kv_heads=1, head_dim=4,
                 vocab_size=len(tok))
        variants = (g, dict(g, width=expert_width, mlp_dim=2 * expert_width))
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      patch_size=image_size // 4)
        max_dim = 8
    images = {f"observation.images.{'image' if i == 0 else f'image{i + 1}'}":
              {"type": "VISUAL", "shape": [3, image_size, image_size]} for i in range(views)}
    lr = {"type": "pi0", "n_obs_steps": 1, "chunk_size": chunk_size, "n_action_steps": n_action_steps or chunk_size,
          "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "MEAN_STD", "ACTION": "MEAN_STD"},
          "input_features": {**images, "observation.state": {"type": "STATE", "shape": [state_dim]}},
          "output_features": {"action": {"type": "ACTION", "shape": [action_dim]}},
          "paligemma_variant": variants[0], "action_expert_variant": variants[1], "dtype": "float32",
          "max_state_dim": max_dim, "max_action_dim": max_dim, "num_inference_steps": num_steps,
          "time_sampling_beta_alpha": 1.5, "time_sampling_beta_beta": 1.0, "time_sampling_scale": 0.999,
          "time_sampling_offset": 0.001, "min_period": 4e-3, "max_period": 4.0, "use_relative_actions": False,
          "image_resolution": [image_size, image_size], "empty_cameras": 0, "gradient_checkpointing": False,
          "freeze_vision_encoder": False, "train_expert_only": False, "tokenizer_max_length": 48}
    if vision is not None:
        lr["vision_config"] = vision
    lr.update(lerobot_fields)
    return lr, tok


def tiny_lerobot_dir(path: str | Path, seed: int = 0, **kw) -> Path:
    """A random tiny π0 written in LeRobot's layout (hub key names, processor statistics) with a character tokenizer
    in ``tokenizer/``; builds in about a second. ``kw`` go to ``configs``."""
    from vlaforge.policies.pi0.model import PI0Model

    lr, tok = configs(**kw)
    torch.manual_seed(seed)
    arch = L.arch_of(lr)
    model = PI0Model(arch)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # Gemma's norms start at 0 (scale 1 + w): move them so that the test can see them
        for n, p in model.named_parameters():
            if n.endswith("layernorm.weight") or n.endswith("norm.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    We, V = arch.expert["width"], arch.expert["vocab_size"]
    state[L.IGNORED_KEYS[0]] = torch.randn(V, We, generator=g) * 0.02  # the expert's unused head, as released
    sd, ad = lr["input_features"]["observation.state"]["shape"][0], lr["output_features"]["action"]["shape"][0]
    stats = {"observation.state": {"mean": torch.randn(sd, generator=g) * 0.1, "std": torch.rand(sd, generator=g) + 0.5},
             "action": {"mean": torch.randn(ad, generator=g) * 0.1, "std": torch.rand(ad, generator=g) * 0.3 + 0.2}}
    return L.write_lerobot_dir(path, lr, state, stats, tok)
