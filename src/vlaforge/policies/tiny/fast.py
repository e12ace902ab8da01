"""The tiny VLA's inference path: ``TinyVLA.features`` restated for ``act``, the driver's CPU cost in a rollout.

``act`` runs once per action chunk for each group of envs, thousands of times per training iteration, with no
gradient; ``features`` (model.py) stays the reference that training differentiates, untouched. Each switch of
``ActPath`` keeps actions, log-probs and values equal to the reference to float tolerance (tests/test_tiny_fast.py
compares every cumulative setting with ``act`` as it was); ``benchmarks/rollout_throughput.py --policy-only``
measures what each one saves (docs/benchmarks.md, "Tiny VLA: CPU time per env step"):

* ``inference_mode``: ``torch.inference_mode`` instead of ``no_grad`` (no version counters or view tracking);
  the outputs are cloned out of it, so learners get ordinary tensors.
* ``layout``: the uint8 frames (N, V, H, W, 3) become the conv input once, channels-last (the camera's own
  layout), with the CoordConv channels written beside them; the convs run channels-last and conv3's patch
  tokens are a view.
* ``cache_instructions``: word tokens, FiLM's (1 + g, b) and the fusion's key mask depend on the instruction and
  the weights only: kept per instruction tuple (``WeightCache``) while those weights are unchanged.
* ``fused``, from profiling (torch.profiler, one thread, 4 Meta-World-shaped observations): half of ``act`` was
  ``nn.TransformerEncoder``'s inference fast path, whose masked softmax over the padded words costs ~0.7 ms per
  layer; the layers are written out (``_fusion``: baddbmm with an additive mask, softmax, bmm). conv1 of
  ``[x/127.5 − 1, coords]`` is ``conv(x, W_rgb/127.5)`` plus a constant map, folded into FiLM's shift: conv1
  reads 3 channels of raw pixels and FiLM is one in-place ``addcmul``; conv weights are kept channels-last (no
  reorder per call); the spatial soft-argmax reads the channels-last maps in place (one matmul). Elementwise
  ops between tensors of different layouts are ~15x slower: every cached map has the conv outputs' layout.
* ``jit_after``: on the CPU, once a batch shape has been acted on that many times (32), the ``fused`` features
  run as a ``torch.jit.trace`` of themselves (~1 s to trace; the same kernels without Python's per-op cost,
  same numbers; parameters are read live, so optimizer steps and ``load_state_dict`` need no new trace). Not
  under a TorchFunctionMode, so that tests/device_audit.py sees every op.
* ``compile``: ``torch.compile`` of the ``fused`` features instead (off: ~90 s of compiling on 2 cores, and no
  faster than the trace there; docs/benchmarks.md).

The head's attention pooling (``TokenLearner``) and the value MLP are shared with training; without grad the
pooling skips ``nn.MultiheadAttention``'s argument checks, with bit-identical values (heads/common.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlaforge.device import host_to_device


@dataclass
class ActPath:
    """Switches of the inference path (module docstring); all on but ``compile`` by default. Cumulative: each
    switch assumes the ones above it."""

    inference_mode: bool = True
    layout: bool = True
    cache_instructions: bool = True
    fused: bool = True
    jit_after: int = 32
    """on the CPU, run the ``fused`` features as a ``torch.jit.trace`` of them once a batch shape has been seen this
    many times (tracing takes ~1 s; parameters stay live); 0 = never"""
    compile: bool = False

    @classmethod
    def reference(cls) -> ActPath:
        """``act`` exactly as before this module: ``features()`` under ``no_grad``."""
        return cls(False, False, False, False, 0, False)


class WeightCache:
    """Values computed from some parameters, valid while those parameters are unchanged.

    ``get(key, params, make, *args)`` returns ``make(*args)`` cached under ``key``. The cache empties when any tensor of
    ``params`` is another tensor, moved, or (with ``versions``) modified in place since it was filled: an
    optimizer step, ``load_state_dict`` (``copy_``) and every in-place op bump a tensor's version counter, which
    is what is compared (O(1) per tensor). Writes through ``.data`` bypass that counter; nothing in vlaforge
    writes parameters that way. ``versions=False`` is for values that read the parameters live (a trace).
    Copies and pickles of a cache are empty.
    """

    def __init__(self, limit: int = 64, versions: bool = True):
        self.limit, self.versions = limit, versions
        self._stamp: tuple | None = None
        self._values: dict = {}

    def __getstate__(self) -> dict:  # a copy or a pickle (Ray) starts empty: caches are not state
        return {"limit": self.limit, "versions": self.versions, "_stamp": None, "_values": {}}

    def __deepcopy__(self, memo) -> WeightCache:
        return WeightCache(self.limit, self.versions)

    def stamp(self, params: list[torch.Tensor]) -> tuple:
        return tuple((id(p), p.data_ptr(), p._version if self.versions else 0, p.device, p.dtype) for p in params)

    def get(self, key, params: list[torch.Tensor], make, *args):
        stamp = self.stamp(params)
        if stamp != self._stamp or len(self._values) >= self.limit:
            self._values, self._stamp = {}, stamp
        value = self._values.get(key)
        if value is None:
            value = self._values[key] = make(*args)
        return value


def _coord_input(m, img: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> conv1's input (B, 5, H, W) in channels-last memory: RGB in [-1, 1], then (x, y)."""
    b, h, w, _ = img.shape
    x = torch.empty(b, h, w, 5, device=img.device, dtype=m.coords.dtype)
    torch.div(img, 127.5, out=x[..., :3]).sub_(1.0)
    x[..., 3:] = m.coords.permute(1, 2, 0)
    return x.permute(0, 3, 1, 2)


def _constants(m, instructions: tuple[str, ...], views: int, size: int, fused: bool):
    """What depends on the instructions and the weights only, as ``features`` computes it: word tokens
    w (N, Wd, D); FiLM's (1 + g, b) per conv, each (N·V, C, 1, 1); the fusion's additive key mask
    (N, 1, 1, L), −inf on padded words; with ``fused`` conv1 split into its image part and a constant:
    conv1([x/127.5 − 1, coords]) = conv(x, W_rgb/127.5) + M (M: the conv of [−1, coords] with the same zero
    padding, plus the bias), and FiLM's shift b1 + (1 + g1)·M (N·V, 32, h, w) taken with it."""
    dev = m.act_lo.device
    words = m._words(list(instructions), dev)
    w = m.word_emb(words) + m.word_pos  # (N, Wd, D)
    keep = (words != 0).float().unsqueeze(-1)
    sentence = (w * keep).sum(1) / keep.sum(1).clamp_min(1)
    g1, b1, g2, b2 = (f[:, :, None, None] for f in m.film(sentence).repeat_interleave(views, 0).split([32, 32, 64, 64], -1))
    film = (1 + g1, b1, 1 + g2, b2)
    g = size // 8
    pad = torch.cat([torch.zeros(len(instructions), views * (g * g + 1), dtype=torch.bool, device=dev), words == 0,
                     torch.zeros(len(instructions), 1, dtype=torch.bool, device=dev)], 1)
    mask = torch.zeros(pad.shape, device=dev).masked_fill_(pad, float("-inf"))[:, None, None, :]
    if not fused:
        return w, film, mask, None
    heads, length = m.cfg.heads, mask.shape[-1]
    mask = mask.expand(-1, heads, length, -1).reshape(-1, length, length).contiguous()  # (N·H, L, L) for baddbmm
    cl = torch.channels_last  # the conv outputs' layout (a mixed-layout elementwise op is ~15x slower)
    w1 = m.conv1.weight
    const = torch.cat([-torch.ones(1, 3, size, size, device=dev), m.coords.unsqueeze(0)], 1)
    cmap = F.conv2d(const, w1, m.conv1.bias, m.conv1.stride, m.conv1.padding)  # (1, 32, h, w)
    shift = torch.addcmul(b1, cmap, film[0]).contiguous(memory_format=cl)  # (N·V, 32, h, w)
    convs = ((w1[:, :3] / 127.5).contiguous(memory_format=cl), shift, m.conv2.weight.contiguous(memory_format=cl),
             m.conv3.weight.contiguous(memory_format=cl))  # conv2/3 weights in their inputs' layout: no reorder per call
    h = _out_size(_out_size(size, m.conv1), m.conv2)  # conv2's maps are h x h
    c = torch.linspace(-1, 1, h, device=dev)
    grid = torch.stack([c.repeat(h), c.repeat_interleave(h)])  # (2, h·h): (x, y) of each row-major position
    return w, film, mask, (*convs, grid)


def _out_size(size: int, conv) -> int:
    return (size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1


def _soft_argmax(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``TinyVLA._soft_argmax`` on channels-last maps without a transposing copy: x (B, K, h, w) stored as
    (B, h, w, K), grid (2, h·w) -> (B, 2K) = [expected x of each map, expected y of each map]."""
    b, k, h, w = x.shape
    p = torch.softmax(x.permute(0, 2, 3, 1).reshape(b, h * w, k), 1)  # (B, h·w, K), a view of the memory
    return torch.matmul(grid, p).reshape(b, 2 * k)


def _fusion(m, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The pre-norm encoder layers of ``m.fusion`` (GELU, no dropout) written out: tokens (N, L, D), additive key
    mask (N·H, L, L) -> (N, L, D). Attention as ``softmax(mask + q·kᵀ/√d_h)·v`` by two batched matmuls (cheaper
    on the CPU at L ≈ 80 than SDPA's kernels, and far cheaper than the module's masked-softmax path)."""
    n, length, d = tokens.shape
    x = tokens
    for layer in m.fusion.layers:
        att = layer.self_attn
        heads = att.num_heads
        dh = d // heads
        qkv = F.linear(layer.norm1(x), att.in_proj_weight, att.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, heads, dh).permute(2, 0, 3, 1, 4).reshape(3, n * heads, length, dh)
        p = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=dh ** -0.5).softmax(-1)  # (N·H, L, L)
        a = torch.bmm(p, v).view(n, heads, length, dh).transpose(1, 2).reshape(n, length, d)
        x = x + F.linear(a, att.out_proj.weight, att.out_proj.bias)
        x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))
    return x


def _fused(m, frames: torch.Tensor, state: torch.Tensor, consts) -> torch.Tensor:
    """The ``fused`` path from the frames (N·V, H, W, 3) uint8, state (N, S) and ``_constants`` to the fused tokens."""
    w, (s1, _, s2, b2), mask, (w_rgb, c1, w2, w3, grid) = consts
    n, v, d = state.shape[0], frames.shape[0] // state.shape[0], m.cfg.dim
    x = frames.permute(0, 3, 1, 2).float()  # (N·V, 3, H, W), channels-last: the camera's own layout
    x = F.conv2d(x, w_rgb, None, m.conv1.stride, m.conv1.padding)
    x = F.gelu(torch.addcmul(c1, x, s1, out=x))  # conv1's constant part folded into FiLM's shift: one pass
    x = F.conv2d(x, w2, m.conv2.bias, m.conv2.stride, m.conv2.padding)
    x = F.gelu(torch.addcmul(b2, x, s2, out=x))
    kp = _soft_argmax(x, grid).view(n, v, -1)
    y = F.conv2d(x, w3, m.conv3.bias, m.conv3.stride, m.conv3.padding)  # (N·V, D, g, g), channels-last
    patches = torch.cat([y.permute(0, 2, 3, 1).reshape(n, v, -1, d), m.keypoints(kp).unsqueeze(2)], 2) + m.img_pos
    tokens = torch.cat([patches.flatten(1, 2), w, m.state_proj(state).unsqueeze(1)], 1)
    return m.out_norm(_fusion(m, tokens, mask))


_compiled = None


class _Fused(torch.nn.Module):
    """``_fused`` as a module over the policy, for ``torch.jit.trace`` (which keeps module parameters live)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, frames, state, w, s1, s2, b2, mask, w_rgb, c1, w2, w3, grid):
        return _fused(self.m, frames, state, (w, (s1, None, s2, b2), mask, (w_rgb, c1, w2, w3, grid)))


def _flat(frames, state, consts) -> tuple:
    w, (s1, _, s2, b2), mask, convs = consts
    return (frames, state, w, s1, s2, b2, mask, *convs)


def _trace(m, args: tuple):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints: the trace is per batch shape anyway
        return torch.jit.trace(_Fused(m), args, check_trace=False)


def _traced(m, frames, state, consts, key, after: int):
    """The traced ``_fused`` for this batch shape once it has been seen ``after`` times, else None. Traces read
    the parameters live (in-place updates are seen); a moved or replaced parameter makes a new trace. Never
    under a TorchFunctionMode (tests/device_audit.py must see every op) or off the CPU."""
    if after <= 0 or frames.device.type != "cpu" or torch._C._is_torch_function_mode_enabled():
        return None
    seen = m._act_seen
    seen[key] = seen.get(key, 0) + 1
    if seen[key] < after:
        return None
    args = _flat(frames, state, consts)
    # sentinels of the traced modules: .to(), .double() or load_state_dict(assign=True) replace all of them
    sentinels = [m.conv3.weight, m.fusion.layers[0].self_attn.in_proj_weight, m.out_norm.weight, m.img_pos]
    return m._act_traces.get(key, sentinels, _trace, m, args)


def act_features(m, obs, path: ActPath) -> torch.Tensor:
    """Fused tokens (N, L, D) of the vision backbone, equal to ``m.features(obs)`` to float tolerance."""
    if not path.layout or m.cfg.backbone != "vision":
        return m.features(obs)
    dev = m.act_lo.device
    state = host_to_device(obs.state, dev, torch.float32)
    img = host_to_device(obs.images, dev)  # (N, V, H, W, 3) uint8
    n, v, size = img.shape[0], img.shape[1], img.shape[2]
    frames = img.reshape(n * v, *img.shape[2:])
    key = (tuple(obs.instructions), v, size, path.fused, torch.is_autocast_enabled(dev.type))  # dtypes follow autocast
    cache = m._act_cache if path.cache_instructions else None
    consts = cache.get(key, m._act_weights(), _constants, m, *key[:4]) if cache else _constants(m, *key[:4])
    if path.fused and path.compile:
        global _compiled
        _compiled = _compiled or torch.compile(_fused, dynamic=False)
        return _compiled(m, frames, state, consts)
    if path.fused:
        traced = _traced(m, frames, state, consts, (tuple(frames.shape), *key[1:]), path.jit_after)
        return _fused(m, frames, state, consts) if traced is None else traced(*_flat(frames, state, consts))
    w, (s1, b1, s2, b2), mask, _ = consts
    x = _coord_input(m, frames)
    x = F.gelu(m.conv1(x) * s1 + b1)
    x = F.gelu(m.conv2(x) * s2 + b2)
    kp = m._soft_argmax(x).view(n, v, -1)
    y = m.conv3(x)  # (N·V, D, g, g), channels-last memory: the patch tokens are a view
    patches = torch.cat([y.permute(0, 2, 3, 1).reshape(n, v, -1, m.cfg.dim), m.keypoints(kp).unsqueeze(2)], 2)
    tokens = torch.cat([(patches + m.img_pos).flatten(1, 2), w, m.state_proj(state).unsqueeze(1)], 1)
    pad = torch.isinf(mask[:, 0, 0])  # the reference's boolean key padding mask (N, L)
    return m.out_norm(m.fusion(tokens, src_key_padding_mask=pad))
