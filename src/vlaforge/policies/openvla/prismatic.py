"""OpenVLA's Prismatic VLM in the published checkpoint layout: config, modules, sharded weights, actions.

A released OpenVLA directory (e.g. ``openvla/openvla-7b``, or an OpenVLA-OFT fine-tune) holds
``config.json`` (``model_type: openvla``; the fields of their ``OpenVLAConfig``: ``vision_backbone_id``,
``llm_backbone_id``, ``arch_specifier``, ``use_fused_vision_backbone``, ``image_resize_strategy``,
``text_config``, ``norm_stats``, ``n_action_bins``, ``pad_to_multiple_of``, ``timm_model_ids``,
``image_sizes``...), ``model.safetensors.index.json`` + ``model-0000k-of-0000n.safetensors`` with keys

    vision_backbone.featurizer.*        DINOv2 ViT-L/14 reg4 (timm names, LayerScale as ``scale_factor``)
    vision_backbone.fused_featurizer.*  SigLIP so400m/14 (when ``use_fused_vision_backbone``)
    projector.fc1, fc2[, fc3]           the MLP projector (fused: D_v -> 4 D_v -> D_llm -> D_llm, GELU between)
    language_model.model.*, language_model.lm_head   Llama-2 (transformers' LlamaForCausalLM names)

and the tokenizer files. ``PrismaticVLM`` is that module tree on transformers' ``LlamaForCausalLM`` and
the ViTs of ``vit.py``; ``load_prismatic(dir)`` reads it without their remote code, refusing a missing
shard, a missing or unexpected key or a wrong shape with one line; ``write_prismatic`` writes it (the
inverse, sharded with an index), so a trained model can be handed back to their code.

Actions (as ``OpenVLAForActionPrediction.predict_action`` decodes them): the last ``n_action_bins`` ids
of the un-padded vocabulary ``V = text_config.vocab_size - pad_to_multiple_of`` are the bins; token id
``t`` -> ``d = clip(V - t - 1, 0, n_bins - 2)`` -> ``bin_centers[d]`` with ``bins = linspace(-1, 1,
n_bins)`` (so the two lowest ids share the last centre), then un-normalisation with the chosen
dataset's statistics: ``where(mask, (x + 1) / 2 * (q99 - q01) + q01, x)`` (OFT adds 1e-8 to the range).
Encoding (their ``ActionTokenizer``): ``t = V - digitize(clip(a, -1, 1), bins)``. Here a bin index
``b = V - 1 - t`` in [0, n_bins) stands for the id.

Images: OpenVLA's processor resizes to 224 (PIL bicubic) and normalises per tower (DINOv2: ImageNet
mean/std, SigLIP: 0.5/0.5), stacking the two 3-channel results into 6 channels. Here the resize is
torch's antialiased bicubic (identical when frames already have the model's size: render at 224).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.errors import UsageError as UserError
from vlaforge.policies.openvla.vit import TIMM_NORMALIZE, TIMM_VARIANTS, ViT, vit_spec

# vision_backbone_id -> timm ids and sizes (their configuration_prismatic tables, for configs without them)
VISION_BACKBONES = {
    "dinosiglip-vit-so-224px": (["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"], [224, 224]),
    "siglip-vit-so400m": (["vit_so400m_patch14_siglip_224"], [224]),
    "dinov2-vit-l": (["vit_large_patch14_reg4_dinov2.lvd142m"], [224]),
}
INDEX_FILE = "model.safetensors.index.json"


class LayoutError(UserError):
    """A checkpoint directory does not match the published OpenVLA layout (message says what is wrong)."""


@dataclass
class PrismaticConfig:
    """The fields of a released OpenVLA config.json this code reads."""

    timm_model_ids: list[str]
    image_sizes: list[int]
    use_fused_vision_backbone: bool
    text_config: dict
    norm_stats: dict = field(default_factory=dict)
    n_action_bins: int = 256
    pad_to_multiple_of: int = 64
    image_resize_strategy: str = "resize-naive"
    vit_overrides: list[dict] | None = None  # vlaforge extension for tiny test checkpoints (absent in releases)
    raw: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """The un-padded vocabulary V (action ids are V - n_bins .. V - 1)."""
        return int(self.text_config.get("vocab_size", 32000)) - int(self.pad_to_multiple_of)


MAX_PARAM_BYTES = 64 * 2 ** 30
"""a config whose bf16 parameters would take more than this is refused before anything is allocated"""
_TEXT_DIMS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_VIT_DIMS = ("embed_dim", "depth", "num_heads", "mlp_hidden", "patch_size")


def _whole(v, lo: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def prismatic_problem(raw: dict) -> str | None:
    """What makes a released config.json unusable before anything is built (None: fine): its Llama ``text_config``
    an object of positive whole dimensions, image sizes whole numbers in [14, 4096], action bins and padding that fit
    the vocabulary, ViT overrides of positive dimensions, and at most ``MAX_PARAM_BYTES`` of bf16 parameters."""
    text = raw.get("text_config")
    if not isinstance(text, dict):
        return f"text_config is {type(text).__name__}, not an object"
    for k in _TEXT_DIMS:
        if k in text and not _whole(text[k]):
            return f"text_config.{k} = {json.dumps(text[k])[:40]} is not a positive whole number"
    if "num_key_value_heads" in text and not _whole(text["num_key_value_heads"]):
        return "text_config.num_key_value_heads is not a positive whole number"
    sizes = raw.get("image_sizes")
    if sizes is not None and not (isinstance(sizes, list) and sizes and all(_whole(x, 14) and x <= 4096 for x in sizes)):
        return f"image_sizes = {json.dumps(sizes)[:40]} is not a list of whole numbers in [14, 4096]"
    ids = raw.get("timm_model_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(x, str) for x in ids)):
        return "timm_model_ids is not a list of names"
    if ids is not None and sizes is not None and len(ids) != len(sizes):
        return f"timm_model_ids names {len(ids)} towers but image_sizes gives {len(sizes)} sizes"
    vocab, pad = text.get("vocab_size", 32000), raw.get("pad_to_multiple_of", 64)
    bins = raw.get("n_action_bins", 256)
    if not _whole(pad, 0) or not _whole(bins, 2) or bins > vocab - pad:
        return (f"n_action_bins = {json.dumps(bins)[:20]} and pad_to_multiple_of = {json.dumps(pad)[:20]} do not fit "
                f"the vocabulary of {vocab}")
    ov = raw.get("vlaforge_vit_overrides")
    if ov is not None:
        if not (isinstance(ov, list) and all(isinstance(o, dict) for o in ov)):
            return "vlaforge_vit_overrides is not a list of objects"
        for o in ov:
            bad = [k for k in _VIT_DIMS if k in o and not _whole(o[k])]
            if bad:
                return f"vlaforge_vit_overrides' {bad[0]} = {json.dumps(o[bad[0]])[:20]} is not a positive whole number"
    D, inter = text.get("hidden_size", 4096), text.get("intermediate_size", 11008)
    n = 2 * vocab * D + text.get("num_hidden_layers", 32) * (4 * D * D + 3 * D * inter)
    for i, t in enumerate(ids or []):
        spec = {**TIMM_VARIANTS.get(t, {}), **((ov[i] if ov is not None and i < len(ov) else None) or {})}
        e = spec.get("embed_dim", 0)
        n += spec.get("depth", 0) * (4 * e * e + 2 * e * spec.get("mlp_hidden", 0))
    if n * 2 > MAX_PARAM_BYTES:
        return (f"its dimensions give about {n:,} parameters ({n * 2 / 2 ** 30:,.0f} GiB in bf16), more than "
                f"{MAX_PARAM_BYTES // 2 ** 30} GiB")
    return None


def read_prismatic_config(path: str | Path) -> PrismaticConfig:
    p = Path(path).expanduser()
    f = p / "config.json"
    if not f.exists():
        raise LayoutError(f"no OpenVLA checkpoint at '{path}' (config.json missing); pass the directory of a released "
                          "OpenVLA / OpenVLA-OFT model (config.json + model*.safetensors + tokenizer files)")
    try:
        raw = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise LayoutError(f"'{f}' is not valid JSON ({e.msg}); re-download the checkpoint") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LayoutError(f"cannot read '{f}' ({type(e).__name__}); re-download the checkpoint") from None
    if raw.get("model_type") not in ("openvla", "prismatic"):
        raise LayoutError(f"'{f}' has model_type '{raw.get('model_type')}', not 'openvla'; for other Hugging Face "
                          "models use --policy hf")
    if not isinstance(raw, dict):
        raise LayoutError(f"'{f}' is not a JSON object; re-download the checkpoint")
    problem = prismatic_problem(raw)
    if problem:
        raise LayoutError(f"'{f}': {problem}; re-download the checkpoint")
    vid = raw.get("vision_backbone_id")
    ids, sizes = raw.get("timm_model_ids"), raw.get("image_sizes")
    if ids is None or sizes is None:
        if vid not in VISION_BACKBONES:
            raise LayoutError(f"'{f}': vision backbone '{vid}' is not supported; supported: {', '.join(VISION_BACKBONES)}")
        ids, sizes = VISION_BACKBONES[vid]
    bad = [t for t in ids if t not in TIMM_VARIANTS]
    if bad:
        raise LayoutError(f"'{f}': vision tower '{bad[0]}' is not supported; supported: {', '.join(TIMM_VARIANTS)}")
    fused = raw.get("use_fused_vision_backbone")
    if fused is None:
        fused = str(vid).startswith(("dinoclip", "dinosiglip"))
    if "text_config" not in raw or raw["text_config"].get("model_type", "llama") != "llama":
        raise LayoutError(f"'{f}': only Llama language models are supported (text_config.model_type 'llama')")
    strategy = raw.get("image_resize_strategy", "resize-naive")
    if strategy not in ("resize-naive",):
        raise LayoutError(f"'{f}': image_resize_strategy '{strategy}' is not supported (OpenVLA uses 'resize-naive')")
    return PrismaticConfig(timm_model_ids=list(ids), image_sizes=[int(s) for s in sizes], use_fused_vision_backbone=bool(fused),
                           text_config=dict(raw["text_config"]), norm_stats=raw.get("norm_stats") or {},
                           n_action_bins=int(raw.get("n_action_bins", 256)),
                           pad_to_multiple_of=int(raw.get("pad_to_multiple_of", 64)), image_resize_strategy=strategy,
                           vit_overrides=raw.get("vlaforge_vit_overrides"), raw=raw)


# -- modules --------------------------------------------------------------------------------------

class PrismaticVisionBackbone(nn.Module):
    """``featurizer`` (+ ``fused_featurizer``): (B, 3*T*I, H, W) -> (B, I*P, sum D_t) for I images of T towers.

    Each image carries its towers' channels stacked (6 for the fused pair); patch features of the towers
    are concatenated along features, those of the images along the sequence (OFT's multi-image input)."""

    def __init__(self, cfg: PrismaticConfig):
        super().__init__()
        ov = cfg.vit_overrides or [None] * len(cfg.timm_model_ids)
        self.featurizer = ViT(vit_spec(cfg.timm_model_ids[0], cfg.image_sizes[0], ov[0]))
        self.fused_featurizer = None
        if cfg.use_fused_vision_backbone:
            self.fused_featurizer = ViT(vit_spec(cfg.timm_model_ids[1], cfg.image_sizes[1], ov[1]))
        self.towers = [self.featurizer] + ([self.fused_featurizer] if self.fused_featurizer is not None else [])
        self.embed_dim = sum(t.spec.embed_dim for t in self.towers)
        self.num_patches = self.featurizer.spec.num_patches

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        per_image = 3 * len(self.towers)
        out = []
        for img in torch.split(pixel_values, per_image, dim=1):
            chans = torch.split(img, 3, dim=1)
            out.append(torch.cat([t.features(c) for t, c in zip(self.towers, chans)], dim=2))
        return torch.cat(out, dim=1)


class PrismaticProjector(nn.Module):
    """fc1 -> GELU -> fc2 [-> GELU -> fc3]: the fused 3-layer MLP (4x widening first), or the 2-layer one."""

    def __init__(self, fused: bool, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fused = fused
        if fused:
            self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
            self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
            self.fc3 = nn.Linear(llm_dim, llm_dim)
        else:
            self.fc1 = nn.Linear(vision_dim, llm_dim)
            self.fc2 = nn.Linear(llm_dim, llm_dim)

    def forward(self, x):
        x = self.fc2(F.gelu(self.fc1(x)))
        return self.fc3(F.gelu(x)) if self.fused else x


def llama_config(text_config: dict):
    """transformers' LlamaConfig from a release's text_config (absent fields: Llama-2-7B's defaults)."""
    from transformers import LlamaConfig

    tc = {k: v for k, v in text_config.items() if k not in ("model_type", "torch_dtype", "dtype", "architectures",
                                                             "_name_or_path", "transformers_version")}
    cfg = LlamaConfig(**tc)
    cfg.use_cache = False
    return cfg


class PrismaticVLM(nn.Module):
    """``vision_backbone``, ``projector``, ``language_model`` (a transformers LlamaForCausalLM)."""

    def __init__(self, cfg: PrismaticConfig):
        super().__init__()
        from transformers import LlamaForCausalLM

        self.cfg = cfg
        self.vision_backbone = PrismaticVisionBackbone(cfg)
        lcfg = llama_config(cfg.text_config)
        self.projector = PrismaticProjector(cfg.use_fused_vision_backbone, self.vision_backbone.embed_dim,
                                            lcfg.hidden_size)
        self.language_model = LlamaForCausalLM(lcfg)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3*T*I, H, W) -> projected patch embeddings (B, I*P, D_llm)."""
        return self.projector(self.vision_backbone(pixel_values))


# -- weights: read and write the published layout ---------------------------------------------------

def _shard_files(p: Path) -> dict[str, str]:
    """key -> shard file name, from the index (sharded) or the single model.safetensors."""
    from safetensors import safe_open

    idx = p / INDEX_FILE
    if idx.exists():
        try:
            weight_map = json.loads(idx.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LayoutError(f"'{idx}' is corrupt (no weight_map); re-download the checkpoint") from None
        missing = sorted({f for f in weight_map.values() if not (p / f).exists()})
        if missing:
            raise LayoutError(f"checkpoint '{p}' is partial: shard {missing[0]} named by {INDEX_FILE} is missing "
                              f"({len(missing)} missing); re-download it")
        return dict(weight_map)
    single = p / "model.safetensors"
    if not single.exists():
        raise LayoutError(f"checkpoint '{p}' has no weights ({INDEX_FILE} or model.safetensors); re-download it")
    with safe_open(str(single), "pt") as f:
        return {k: "model.safetensors" for k in f.keys()}


def load_prismatic(path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
                   ) -> tuple[PrismaticVLM, PrismaticConfig]:
    """Build the module tree on the meta device and fill it from the checkpoint's safetensors (strict:
    every key present, none extra, shapes equal). Never runs remote code, never unpickles."""
    from safetensors import SafetensorError, safe_open

    p = Path(path).expanduser()
    cfg = read_prismatic_config(p)
    with torch.device("meta"):
        model = PrismaticVLM(cfg)
    expected = model.state_dict()
    files = _shard_files(p)
    missing = [k for k in expected if k not in files]
    unexpected = [k for k in files if k not in expected]
    if missing or unexpected:
        what = f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}"
        raise LayoutError(f"weights in '{p}' do not match its config.json ({what}; {len(missing)} missing, "
                          f"{len(unexpected)} unexpected); is it an OpenVLA checkpoint of this architecture?")
    state: dict[str, torch.Tensor] = {}
    for fname in sorted(set(files.values())):
        try:
            with safe_open(str(p / fname), "pt", device="cpu") as f:
                for k in f.keys():
                    t = f.get_tensor(k)
                    if tuple(t.shape) != tuple(expected[k].shape):
                        raise LayoutError(f"'{p / fname}': {k} has shape {tuple(t.shape)}, config.json implies "
                                          f"{tuple(expected[k].shape)}; the weights and config.json disagree")
                    state[k] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        except (SafetensorError, OSError) as e:
            raise LayoutError(f"'{p / fname}' is unreadable ({str(e).splitlines()[0]}); re-download it") from None
    model.load_state_dict(state, strict=True, assign=True)
    _rebuild_rotary(model.language_model, device)
    return model, cfg


def _rebuild_rotary(lm, device) -> None:
    """Recompute the rotary embedding's non-persistent buffers (left on the meta device by the build)."""
    rot = lm.model.rotary_emb
    with torch.device(device):
        lm.model.rotary_emb = type(rot)(config=lm.config)


def write_prismatic(model: PrismaticVLM, cfg: PrismaticConfig, path: str | Path, shard_bytes: int = 2 << 30,
                    state: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``config.json`` + sharded safetensors + index in the released layout into the directory ``path``."""
    from safetensors.torch import save_file

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else model.state_dict()
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v.detach().contiguous().cpu()
        size += nbytes
    weight_map, total = {}, 0
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, str(p / name), metadata={"format": "pt"})
        for k, v in sh.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (p / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (p / "config.json").write_text(json.dumps(cfg.raw, indent=2))


# -- dataset statistics and actions -------------------------------------------------------------------

def choose_unnorm_key(norm_stats: dict, key: str | None, where: str = "the checkpoint") -> str:
    """Their ``_check_unnorm_key`` as a one-line error: the only key, or the named one."""
    keys = sorted(norm_stats)
    if not keys:
        raise UserError(f"{where} has no dataset statistics (norm_stats); fine-tune it with `vlaforge sft` first or "
                         "use a checkpoint that carries them")
    if key is None:
        if len(keys) != 1:
            raise UserError(f"{where} holds statistics of {len(keys)} datasets; choose one with --openvla.unnorm-key "
                             f"(one of: {', '.join(keys)})")
        return keys[0]
    if key not in norm_stats:
        raise UserError(f"--openvla.unnorm-key '{key}' is not in {where}; choose one of: {', '.join(keys)}")
    return key


def bin_edges(n_bins: int) -> torch.Tensor:
    return torch.from_numpy(np.linspace(-1, 1, n_bins))


def bins_to_normalized(b: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin index b = V - 1 - token id, in [0, n_bins) -> normalised action (their bin_centers[clip(b, 0, n_bins-2)])."""
    e = bin_edges(n_bins)
    centers = ((e[:-1] + e[1:]) / 2).to(torch.float32).to(b.device)
    return centers[b.long().clamp(0, n_bins - 2)]


def normalized_to_bins(a: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Normalised action -> bin index b = digitize(clip(a, -1, 1), bins) - 1 in [0, n_bins) (their ActionTokenizer)."""
    e = bin_edges(n_bins).to(a.device)
    return torch.bucketize(a.double().clamp(-1, 1), e, right=True) - 1


def action_bounds(stats: dict, group: str = "action") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q01, q99, mask) float32/bool tensors of ``norm_stats[key][group]``; mask defaults to all True."""
    s = stats[group]
    lo, hi = torch.tensor(s["q01"], dtype=torch.float32), torch.tensor(s["q99"], dtype=torch.float32)
    mask = torch.tensor(s.get("mask", [True] * len(lo)), dtype=torch.bool)
    return lo, hi, mask


def unnormalize(x: torch.Tensor, lo, hi, mask, eps: float = 0.0) -> torch.Tensor:
    """[-1, 1] -> dataset units where ``mask``; masked-out dims (the gripper) pass through."""
    return torch.where(mask, 0.5 * (x + 1) * (hi - lo + eps) + lo, x)


def normalize_actions(a: torch.Tensor, lo, hi, mask, eps: float = 0.0) -> torch.Tensor:
    """Dataset units -> [-1, 1] (BOUNDS_Q99, clipped), the inverse of ``unnormalize`` on the unmasked dims."""
    return torch.where(mask, 2 * (a - lo) / (hi - lo + eps) - 1, a).clamp(-1, 1)


# -- images -----------------------------------------------------------------------------------------

def tower_normalization(cfg: PrismaticConfig, checkpoint: Path | None = None) -> list[tuple[list, list]]:
    """(mean, std) per tower: from preprocessor_config.json when the checkpoint has one, else timm's data config."""
    if checkpoint is not None and (checkpoint / "preprocessor_config.json").exists():
        pc = json.loads((checkpoint / "preprocessor_config.json").read_text())
        if "means" in pc and "stds" in pc:
            return [(list(m), list(s)) for m, s in zip(pc["means"], pc["stds"])]
    return [tuple(map(list, TIMM_NORMALIZE[t])) for t in cfg.timm_model_ids]


def pixel_values(images: torch.Tensor, size: int, norms: list[tuple[list, list]], mirror: bool = False,
                 center_crop: float = 1.0) -> torch.Tensor:
    """uint8 (N, I, H, W, 3) -> (N, I * 3 * T, size, size) float32: per image, each tower's normalisation,
    channel-stacked (their processor's ``torch.vstack`` of the towers), images stacked after each other.

    ``mirror`` flips columns (LIBERO frames as OpenVLA's training data shows them, see ``conventions.py``);
    ``center_crop`` < 1 keeps the central fraction of the AREA (OFT/OpenVLA's LIBERO eval: 0.9) before resizing."""
    N, I, H, W, _ = images.shape
    x = images.reshape(N * I, H, W, 3).permute(0, 3, 1, 2).float() / 255.0
    if mirror:
        x = x.flip(-1)
    if center_crop < 1.0:
        side = math.sqrt(center_crop)
        h, w = max(int(round(H * side)), 1), max(int(round(W * side)), 1)
        top, left = (H - h) // 2, (W - w) // 2
        x = x[:, :, top:top + h, left:left + w]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    outs = []
    for mean, std in norms:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        outs.append((x - m) / s)
    px = torch.cat(outs, 1)  # (N*I, 3T, size, size)
    return px.view(N, I * px.shape[1], size, size)
