"""The ``tiny`` VLA: a small vision-language-action model that trains on a CPU in minutes.

Backbone: a 3-layer CNN (CoordConv input, FiLM-conditioned on the instruction as in RT-1's
image encoder) turns each 64x64 view into an 8x8 grid of patch tokens; instruction words are hashed into a fixed vocabulary (no tokenizer files to download) and embedded; the
proprioceptive state is one more token; a small pre-norm transformer fuses them all.
Heads: the action head named in the config (``gaussian``, ``tokens`` or ``flow``) and a value
head (MLP on the mean-pooled fused tokens). ``backbone="state"`` replaces vision and language
by an MLP on the state alone: the baseline for debugging algorithms apart from vision.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlaforge.device import host_to_device
from vlaforge.errors import UsageError
from vlaforge.policies.base import Policy, denormalize, normalize
from vlaforge.policies.heads import HEADS
from vlaforge.policies.heads.common import mlp
from vlaforge.policies.heads.noise import NoisePolicy
from vlaforge.policies.options import SuiteDims
from vlaforge.policies.privileged import PrivilegedCritic, aux_regression_loss
from vlaforge.policies.tiny.fast import ActPath, WeightCache, act_features
from vlaforge.types import ActionOutput, Observation


@dataclass
class TinyConfig(SuiteDims):
    """Architecture of the tiny VLA (saved as JSON next to the weights)."""

    chunk_size: int = 4
    """actions predicted per decision C (one render per chunk)"""
    image_size: int = 64
    """square image size H = W"""
    head: str = "gaussian"
    """action head: gaussian | tokens | flow"""
    backbone: str = "vision"
    """vision (CNN + words + state, fused by a transformer) or state (MLP on state only)"""
    dim: int = 64
    """token width"""
    layers: int = 2
    """fusion transformer layers"""
    heads: int = 4
    """attention heads"""
    vocab: int = 512
    """hashed word vocabulary size"""
    max_words: int = 12
    """instruction words kept"""
    head_hidden: int = 256
    """hidden width of the action and value heads"""
    n_bins: int = 256
    """bins per action dim for the token head"""
    log_std_init: float = -1.0
    """initial log-std of the Gaussian head"""
    flow_steps: int = 5
    """denoising steps of the flow head"""
    flow_noise: float = 0.5
    """noise level a of the flow head's SDE sampler"""
    value_head: bool = True
    """build a value head (PPO); group methods ignore it"""
    critic: str = "image"
    """value head input: image (the fused tokens the actor reads) or privileged (``sim_state`` + proprio, an
    asymmetric critic for training only; the actor never reads ``sim_state``)"""
    sim_state_dim: int = 0
    """dims P of the suite's privileged ``sim_state`` (needed by the privileged critic and the readout)"""
    aux_index: list[int] = field(default_factory=list)
    """``sim_state`` entries the perception readout predicts from the image features (empty = no readout;
    ``policies.privileged.perception_targets`` picks object/goal positions)"""
    aux_weight: float = 1.0
    """weight of the readout's loss in ``sft_loss`` (standardised mean squared error)"""
    dsrl_bound: float = 0.0
    """DSRL (flow head only): bound b of a latent-noise policy that picks the flow sampler's initial noise
    (``policies/heads/noise.py``; trained by ``--algo dsrl``, used by ``act``); 0 = none"""
    dsrl_hidden: int = 256
    """hidden width of the DSRL noise policy"""


def _word_id(word: str, vocab: int) -> int:
    h = 2166136261
    for ch in word.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return 1 + h % (vocab - 1)  # 0 = padding


class TinyVLA(nn.Module, Policy):
    """See the module docstring. Implements ``vlaforge.policies.base.Policy``."""

    def __init__(self, cfg: TinyConfig):
        super().__init__()
        if cfg.head not in HEADS:
            raise ValueError(f"unknown head '{cfg.head}'; choose one of {', '.join(HEADS)}")
        self.cfg = cfg
        self.chunk_size, self.action_dim = cfg.chunk_size, cfg.action_dim
        d = cfg.dim
        if cfg.backbone == "vision":
            # CoordConv input (RGB + x, y), FiLM-conditioned on the instruction (as in RT-1's FiLM encoder)
            self.conv1 = nn.Conv2d(5, 32, 5, 2, 2)
            self.conv2 = nn.Conv2d(32, 64, 3, 2, 1)
            self.conv3 = nn.Conv2d(64, d, 3, 2, 1)
            self.film = nn.Linear(d, 2 * (32 + 64))
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
            self.keypoints = nn.Linear(2 * 64, d)  # spatial soft-argmax of conv2's 64 maps -> one token
            c = torch.linspace(-1, 1, cfg.image_size)
            self.register_buffer("coords", torch.stack(torch.meshgrid(c, c, indexing="ij")), persistent=False)
            g = cfg.image_size // 8
            self.img_pos = nn.Parameter(torch.randn(cfg.views, g * g + 1, d) * 0.02)
            self.word_emb = nn.Embedding(cfg.vocab, d, padding_idx=0)
            self.word_pos = nn.Parameter(torch.randn(cfg.max_words, d) * 0.02)
            self.state_proj = nn.Linear(cfg.state_dim, d)
            layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True,
                                               activation="gelu")
            self.fusion = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.out_norm = nn.LayerNorm(d)
        elif cfg.backbone == "state":
            self.state_mlp = nn.Sequential(nn.Linear(cfg.state_dim, 128), nn.Tanh(), nn.Linear(128, 4 * d), nn.Tanh())
        else:
            raise ValueError(f"unknown backbone '{cfg.backbone}'; choose vision or state")
        self.head = HEADS[cfg.head](d, cfg.chunk_size, cfg.action_dim, hidden=cfg.head_hidden, n_bins=cfg.n_bins,
                                    log_std_init=cfg.log_std_init, steps=cfg.flow_steps, noise=cfg.flow_noise)
        self.value_net = self._make_critic() if cfg.value_head else None
        if cfg.aux_index:
            if max(cfg.aux_index) >= cfg.sim_state_dim:
                raise ValueError(f"aux_index {cfg.aux_index} out of range for sim_state_dim {cfg.sim_state_dim}")
            self.aux_head = mlp(d, cfg.head_hidden, len(cfg.aux_index), layers=2)
            self.register_buffer("aux_mu", torch.zeros(len(cfg.aux_index)))
            self.register_buffer("aux_sd", torch.ones(len(cfg.aux_index)))
        else:
            self.aux_head = None
        self.register_buffer("act_lo", -torch.ones(cfg.action_dim))
        self.register_buffer("act_hi", torch.ones(cfg.action_dim))
        self._word_cache: dict[str, list[int]] = {}
        self.act_path = ActPath()  # how act() computes (fast.py); not part of the saved config
        self._act_cache = WeightCache()  # act's per-instruction constants (fast.py)
        self._act_traces = WeightCache(limit=8, versions=False)  # act's traced features per batch shape
        self._act_seen: dict = {}  # acts per batch shape (fast.py traces after ActPath.jit_after)
        self.noise_policy = None
        if cfg.dsrl_bound > 0:
            self.attach_noise_policy(cfg.dsrl_bound, cfg.dsrl_hidden)

    def attach_noise_policy(self, bound: float, hidden: int = 256) -> None:
        """Add a fresh DSRL noise policy over the flow head's initial noise (``act`` then steers through it).
        Its parameters start with ``requires_grad=False``: only DSRL's own optimizer trains them, never the
        training loop's (so a resumed run builds the same loop optimizer as the fresh one)."""
        if self.cfg.head != "flow":
            raise ValueError(f"DSRL steers a flow head's initial noise; this policy's head is '{self.cfg.head}' "
                             "(use --head flow, or --init a flow-head checkpoint)")
        self.cfg.dsrl_bound, self.cfg.dsrl_hidden = float(bound), int(hidden)
        cond = self.head.pool.queries.numel() + self.cfg.state_dim
        self.noise_policy = NoisePolicy(cond, self.cfg.chunk_size, self.cfg.action_dim, bound, hidden)
        self.noise_policy.to(self.act_lo.device).requires_grad_(False)

    def noise_condition(self, obs: Observation, feats: torch.Tensor | None = None) -> torch.Tensor:
        """DSRL's noise-policy input (N, Q·D + S): the flow head's pooled context and proprioception."""
        feats = self.features(obs) if feats is None else feats
        state = torch.as_tensor(obs.state, dtype=torch.float32, device=self.act_lo.device)
        return torch.cat([self.head.context(feats).float(), state], -1)

    def _make_critic(self) -> nn.Module:
        if self.cfg.critic == "privileged":
            return PrivilegedCritic(self.cfg.sim_state_dim, self.cfg.state_dim, self.cfg.head_hidden)
        if self.cfg.critic != "image":
            raise ValueError(f"unknown critic '{self.cfg.critic}'; choose image or privileged")
        return mlp(self.cfg.dim, self.cfg.head_hidden, 1, layers=3)

    def use_privileged_critic(self, sim_state_dim: int) -> None:
        """Replace the value head by a fresh asymmetric critic on ``sim_state`` (dims P) + proprio (RL from
        an SFT checkpoint whose critic read images or was never trained). The actor is untouched."""
        self.cfg.critic, self.cfg.sim_state_dim, self.cfg.value_head = "privileged", int(sim_state_dim), True
        self.value_net = self._make_critic().to(self.act_lo.device)

    def set_aux_stats(self, mu, sd) -> None:
        """Standardisation of the readout's targets (mean and std of the training frames' positions)."""
        self.aux_mu.copy_(torch.as_tensor(mu, dtype=torch.float32))
        self.aux_sd.copy_(torch.as_tensor(sd, dtype=torch.float32).clamp_min(1e-3))

    # -- parameter groups --------------------------------------------------------------------
    def backbone_parameters(self):
        return [p for n, p in self.named_parameters()
                if not n.startswith(("head.", "value_net.", "aux_head.", "noise_policy."))]

    def head_parameters(self):
        return list(self.head.parameters())

    def value_parameters(self):
        return list(self.value_net.parameters()) if self.value_net is not None else []

    @property
    def reads_images(self) -> bool:
        return self.cfg.backbone != "state"

    def set_action_stats(self, lo, hi) -> None:
        self.act_lo.copy_(torch.as_tensor(lo, dtype=torch.float32))
        self.act_hi.copy_(torch.as_tensor(hi, dtype=torch.float32))

    def _act_weights(self) -> list[torch.Tensor]:
        """The parameters act's cached constants are made from (fast.py): the cache empties when they change."""
        return [self.word_emb.weight, self.word_pos, self.film.weight, self.film.bias, self.conv1.weight,
                self.conv1.bias, self.conv2.weight, self.conv3.weight]

    # -- backbone ------------------------------------------------------------------------------
    def _words(self, instructions: list[str], device) -> torch.Tensor:
        rows = []
        for s in instructions:
            ids = self._word_cache.get(s)
            if ids is None:
                words = re.findall(r"[a-z0-9]+", s.lower())[: self.cfg.max_words]
                ids = [_word_id(w, self.cfg.vocab) for w in words]
                ids += [0] * (self.cfg.max_words - len(ids))
                self._word_cache[s] = ids
            rows.append(ids)
        return torch.tensor(rows, dtype=torch.long, device=device)

    def features(self, obs: Observation) -> torch.Tensor:
        """Fused tokens (N, L, D)."""
        dev = self.act_lo.device
        state = host_to_device(obs.state, dev, torch.float32)  # the observation crosses to the device once
        if self.cfg.backbone == "state":
            return self.state_mlp(state).view(state.shape[0], 4, self.cfg.dim)
        img = host_to_device(obs.images, dev)  # (N, V, H, W, 3) uint8
        n, v = img.shape[:2]
        words = self._words(obs.instructions, dev)
        w = self.word_emb(words) + self.word_pos  # (N, Wd, D)
        keep = (words != 0).float().unsqueeze(-1)
        sentence = (w * keep).sum(1) / keep.sum(1).clamp_min(1)  # (N, D)
        g1, b1, g2, b2 = self.film(sentence).repeat_interleave(v, 0).split([32, 32, 64, 64], -1)
        x = img.reshape(n * v, *img.shape[2:]).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        x = torch.cat([x, self.coords.expand(n * v, -1, -1, -1)], 1)
        x = F.gelu(self.conv1(x) * (1 + g1[:, :, None, None]) + b1[:, :, None, None])
        x = F.gelu(self.conv2(x) * (1 + g2[:, :, None, None]) + b2[:, :, None, None])
        kp = self._soft_argmax(x).view(n, v, -1)  # (N, V, 128): where each feature map peaks
        patches = self.conv3(x).flatten(2).transpose(1, 2).reshape(n, v, -1, self.cfg.dim)
        patches = torch.cat([patches, self.keypoints(kp).unsqueeze(2)], 2) + self.img_pos
        tokens = torch.cat([patches.flatten(1, 2), w, self.state_proj(state).unsqueeze(1)], 1)
        pad = torch.cat([torch.zeros(n, patches.shape[1] * patches.shape[2], dtype=torch.bool, device=dev),
                         words == 0, torch.zeros(n, 1, dtype=torch.bool, device=dev)], 1)
        return self.out_norm(self.fusion(tokens, src_key_padding_mask=pad))

    @staticmethod
    def _soft_argmax(x: torch.Tensor) -> torch.Tensor:
        """Spatial softmax (Levine et al. 2016): (B, K, h, w) -> expected (x, y) per map, (B, 2K)."""
        b, k, h, w = x.shape
        p = torch.softmax(x.flatten(2), -1).view(b, k, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        return torch.cat([(p.sum(2) * xs).sum(-1), (p.sum(3) * ys).sum(-1)], 1)

    def _sim_state(self, obs: Observation) -> torch.Tensor:
        if obs.sim_state is None or obs.sim_state.shape[-1] != self.cfg.sim_state_dim:
            got = None if obs.sim_state is None else obs.sim_state.shape[-1]
            raise ValueError(f"this policy's privileged critic/readout needs sim_state with {self.cfg.sim_state_dim} "
                             f"dims; the observation has {got}")
        return torch.as_tensor(obs.sim_state, dtype=torch.float32, device=self.act_lo.device)

    def _value(self, feats: torch.Tensor, obs: Observation) -> torch.Tensor | None:
        if self.value_net is None:
            return None
        if self.cfg.critic == "privileged":
            state = torch.as_tensor(obs.state, dtype=torch.float32, device=self.act_lo.device)
            return self.value_net(self._sim_state(obs), state)
        return self.value_net(feats.mean(1))[:, 0]

    def aux_predict(self, obs: Observation) -> torch.Tensor:
        """The readout's position estimates in ``sim_state`` units, (N, K) for the K entries of ``aux_index``."""
        if self.aux_head is None:
            raise ValueError("this policy has no perception readout (built without aux_index)")
        return self.aux_head(self.features(obs).mean(1)) * self.aux_sd + self.aux_mu

    def readout_loss(self, obs: Observation):
        """The perception readout's loss on ``obs`` (which must carry ``sim_state``): (loss, metrics)."""
        if self.aux_head is None:
            raise ValueError("this policy has no perception readout (SFT it with --aux)")
        return self._aux_loss(self.features(obs), obs)

    def _aux_loss(self, feats: torch.Tensor, obs: Observation):
        target = self._sim_state(obs)[:, self.cfg.aux_index]
        return aux_regression_loss(self.aux_head(feats.mean(1)), target, self.aux_mu, self.aux_sd)

    # -- Policy protocol -----------------------------------------------------------------------
    def act(self, obs: Observation, deterministic: bool = False, temperature: float = 1.0) -> ActionOutput:
        """Sample a chunk per env, no gradient; computed as ``self.act_path`` says (fast.py: equal to the
        reference ``features()`` path to float tolerance). Returns ordinary tensors (never inference tensors)."""
        if not self.act_path.inference_mode:
            with torch.no_grad():
                return self._act(obs, deterministic, temperature)
        with torch.inference_mode():
            out = self._act(obs, deterministic, temperature)
        return ActionOutput(out.actions.clone(), out.log_prob.clone(),
                            None if out.value is None else out.value.clone(), {k: v.clone() for k, v in out.taken.items()})

    def _act(self, obs: Observation, deterministic: bool, temperature: float) -> ActionOutput:
        feats = act_features(self, obs, self.act_path)
        if self.noise_policy is not None:  # DSRL: the noise policy picks w, the flow ODE maps it to the action
            w, log_prob = self.noise_policy.rsample(self.noise_condition(obs, feats), deterministic)
            x, _, taken = self.head.sample(feats, True, 1.0, x1=w)
            taken = {**taken, "w": w}
            return ActionOutput(denormalize(x, self.act_lo, self.act_hi), log_prob, self._value(feats, obs), taken)
        x, log_prob, taken = self.head.sample(feats, deterministic, temperature)
        return ActionOutput(denormalize(x, self.act_lo, self.act_hi), log_prob, self._value(feats, obs), taken)

    def evaluate(self, obs: Observation, taken: dict[str, torch.Tensor], temperature: float = 1.0):
        if self.noise_policy is not None:  # act() sampled w, not the head's chain: these log-probs would not match
            raise UsageError("this policy acts through a DSRL noise policy (dsrl_bound > 0): train it with --algo dsrl, "
                             "or start the other algorithms from the checkpoint it was trained from")
        feats = self.features(obs)
        log_prob, entropy = self.head.evaluate(feats, taken, temperature)
        return log_prob, entropy, self._value(feats, obs)

    def value(self, obs: Observation) -> torch.Tensor:
        """V(obs) (N,). Without grad (collect's bootstrap value) through act's inference path, like ``act``."""
        if self.cfg.critic != "image":
            feats = None
        elif torch.is_grad_enabled():
            feats = self.features(obs)
        else:
            feats = act_features(self, obs, self.act_path)
        v = self._value(feats, obs)
        if v is None:
            raise ValueError("this policy has no value head (built with value_head=False)")
        return v

    def sft_loss(self, obs: Observation, expert_actions: torch.Tensor, mask: torch.Tensor | None = None):
        target = normalize(torch.as_tensor(expert_actions, dtype=torch.float32, device=self.act_lo.device),
                           self.act_lo, self.act_hi)
        feats = self.features(obs)
        loss, metrics = self.head.sft_loss(feats, target, mask)
        if self.aux_head is not None and obs.sim_state is not None and self.cfg.aux_weight > 0:
            aux, am = self._aux_loss(feats, obs)
            loss = loss + self.cfg.aux_weight * aux
            metrics = {**metrics, **am}
        return loss, metrics

    def config_dict(self) -> dict:
        return {"family": "tiny", **asdict(self.cfg)}
