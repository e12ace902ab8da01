"""The tiny VLA's inference path (policies/tiny/fast.py): every cumulative ``ActPath`` gives the actions, log-probs,
values and ``taken`` records of the reference computation (``features()`` under ``no_grad``, restated here as
``act`` was before the path existed), its caches follow the weights, and ``--policy-only`` measures it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import benchmark_script

from vlaforge.policies import build_policy
from vlaforge.policies.base import denormalize
from vlaforge.policies.heads.common import TokenLearner
from vlaforge.policies.tiny.fast import ActPath, WeightCache
from vlaforge.types import Observation

ROOT = Path(__file__).resolve().parents[1]
PATHS = {"inference_mode": ActPath(True, False, False, False, 0), "layout": ActPath(True, True, False, False, 0),
         "cache": ActPath(True, True, True, False, 0), "fused": ActPath(jit_after=0),
         "fused_no_inference_mode": ActPath(False, jit_after=0), "jit": ActPath(jit_after=1)}


def _obs(n: int = 5, views: int = 2, size: int = 32, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    words = ["reach the red goal", "", "press the button from the top then open the drawer and close it twice",
             "Push the PUCK!"]  # plain, empty, longer than max_words, punctuation
    return Observation(images=rng.integers(0, 256, (n, views, size, size, 3), dtype=np.uint8),
                       state=rng.standard_normal((n, 3)).astype(np.float32),
                       instructions=[words[i % len(words)] for i in range(n)], task_ids=np.arange(n))


def _policy(head: str, views: int = 2, size: int = 32, seed: int = 0):
    """Weights moved off their initialisation: FiLM starts at zero, which would hide a wrong FiLM folding."""
    torch.manual_seed(seed)
    p = build_policy(head=head, state_dim=3, action_dim=2, chunk_size=3, views=views, image_size=size).eval()
    with torch.no_grad():
        for prm in p.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    p.set_action_stats(np.array([-0.5, -2.0]), np.array([0.5, 3.0]))
    return p


def _reference(p, obs, deterministic: bool, temperature: float = 1.0, seed: int = 1):
    """``TinyVLA.act`` as it was: the training path's features under no_grad, then the head."""
    torch.manual_seed(seed)
    with torch.no_grad():
        feats = p.features(obs)
        x, log_prob, taken = p.head.sample(feats, deterministic, temperature)
        return denormalize(x, p.act_lo, p.act_hi), log_prob, p._value(feats, obs), taken


def _assert_same(p, obs, deterministic: bool, temperature: float = 1.0, atol: float = 1e-5):
    actions, log_prob, value, taken = _reference(p, obs, deterministic, temperature)
    torch.manual_seed(1)
    out = p.act(obs, deterministic=deterministic, temperature=temperature)
    torch.testing.assert_close(out.actions, actions, atol=atol, rtol=0)
    torch.testing.assert_close(out.log_prob, log_prob, atol=atol, rtol=0)
    torch.testing.assert_close(out.value, value, atol=atol, rtol=0)
    assert out.taken.keys() == taken.keys()
    for k in taken:
        torch.testing.assert_close(out.taken[k].float(), taken[k].float(), atol=atol, rtol=0)


CASES = [("gaussian", path) for path in PATHS] + [("tokens", "fused"), ("flow", "fused"), ("flow", "jit")]


@pytest.mark.parametrize("head,path", CASES)
def test_every_act_path_equals_the_reference(head, path):
    p, obs = _policy(head), _obs()
    p.act_path = PATHS[path]
    for deterministic in (True, False):
        _assert_same(p, obs, deterministic, temperature=1.3)
    _assert_same(p, _obs(n=3, views=2, seed=5), False)  # another batch size and other frames: no stale constants


def test_one_view_64px_and_the_state_backbone():
    p = _policy("gaussian", views=1, size=64)
    _assert_same(p, _obs(n=4, views=1, size=64), False)
    torch.manual_seed(0)
    s = build_policy(backbone="state", state_dim=3, action_dim=2, chunk_size=3).eval()
    _assert_same(s, _obs(n=4), False, atol=0)  # no vision: act is features() exactly


def test_value_without_grad_takes_the_fast_path_and_agrees():
    p, obs = _policy("gaussian"), _obs()
    with torch.no_grad():
        ref = p._value(p.features(obs), obs)
        calls = []
        fusion = p.fusion.forward
        p.fusion.forward = lambda *a, **k: calls.append(1) or fusion(*a, **k)  # the reference's encoder
        torch.testing.assert_close(p.value(obs), ref, atol=1e-5, rtol=0)
        assert calls == []
    torch.testing.assert_close(p.value(obs), ref, atol=1e-5, rtol=0)  # with grad: the training path itself
    assert calls == [1]


def test_the_reference_path_is_the_old_act_bit_for_bit():
    p, obs = _policy("gaussian"), _obs()
    p.act_path = ActPath.reference()
    _assert_same(p, obs, False, atol=0)


@pytest.mark.parametrize("jit_after", [0, 1])
def test_caches_follow_the_weights(jit_after):
    """An optimizer step, load_state_dict, an in-place edit and a dtype change each change the constants the fast
    path keeps (and the weights a trace reads); every act after them must match the reference again (and the
    reference must have moved)."""
    p, obs = _policy("gaussian"), _obs()
    p.act_path = ActPath(jit_after=jit_after)
    _assert_same(p, obs, True)
    before = _reference(p, obs, True)[0]

    opt = torch.optim.AdamW(p.parameters(), lr=1e-2)
    loss, _ = p.sft_loss(obs, torch.zeros(len(obs.state), 3, 2))
    loss.backward()
    opt.step()
    after_step = _reference(p, obs, True)[0]
    assert not torch.allclose(before, after_step, atol=1e-4)
    _assert_same(p, obs, True)

    p.load_state_dict(_policy("gaussian", seed=3).state_dict())
    _assert_same(p, obs, True)

    with torch.no_grad():
        p.film.bias.add_(0.5)  # FiLM shifts only: in the cached constants, nowhere else
        p.conv1.weight.mul_(1.5)
    assert not torch.allclose(_reference(p, obs, True)[0], after_step, atol=1e-4)
    _assert_same(p, obs, True)

    p.double()  # new parameter tensors (another dtype): the stamp changes
    p.float()
    _assert_same(p, obs, True)


def test_autocast_constants_are_kept_apart():
    """bf16 constants made under autocast must not serve a later fp32 act."""
    p, obs = _policy("gaussian"), _obs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p.act(obs)
    _assert_same(p, obs, True)


def test_trace_after_warmup_only_on_the_cpu_and_never_under_a_function_mode():
    from torch.overrides import TorchFunctionMode

    class PassThrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    p, obs = _policy("gaussian"), _obs()
    p.act_path = ActPath(jit_after=3)
    for k in range(4):
        p.act(obs)
        assert len(p._act_traces._values) == (1 if k >= 2 else 0)  # traced at the third act of this shape
    _assert_same(p, obs, False)
    traced = p.act(obs, deterministic=True)
    p.act_path = ActPath(jit_after=0)
    eager = p.act(obs, deterministic=True)  # the trace runs the same kernels: the same numbers, bit for bit
    assert torch.equal(traced.actions, eager.actions) and torch.equal(traced.value, eager.value)
    q = _policy("gaussian")
    q.act_path = ActPath(jit_after=1)
    with PassThrough():
        q.act(obs)
    assert q._act_traces._values == {}
    import copy

    r = copy.deepcopy(p)  # a copy (TPO's reference, a Ray actor) starts with empty caches and its own trace
    assert r._act_traces._values == {} and r._act_cache._values == {}
    _assert_same(r, obs, False)


def test_weight_cache_stamp():
    w = torch.nn.Parameter(torch.ones(3))
    cache, calls = WeightCache(limit=2), []

    def make(x):
        calls.append(x)
        return w.detach() * x

    assert cache.get("a", [w], make, 2).tolist() == [2, 2, 2]
    cache.get("a", [w], make, 2)
    assert calls == [2]  # cached
    with torch.no_grad():
        w.add_(1)
    assert cache.get("a", [w], make, 2).tolist() == [4, 4, 4] and calls == [2, 2]  # refreshed after the edit
    cache.get("b", [w], make, 3)
    cache.get("c", [w], make, 4)  # over the limit: emptied, then filled again
    assert len(cache._values) <= 2


def test_act_returns_ordinary_tensors_that_train():
    """Outputs made under inference_mode are cloned out: a learner may stack them, edit them and backprop."""
    p, obs = _policy("gaussian"), _obs()
    out = p.act(obs)
    assert not any(t.is_inference() for t in (out.actions, out.log_prob, out.value, *out.taken.values()))
    p.train()
    lp, _, v = p.evaluate(obs, out.taken)
    ((lp - out.log_prob).sum() + v.sum()).backward()
    assert p.conv1.weight.grad is not None and p.conv1.weight.grad.abs().sum() > 0
    out.taken["x"].mul_(2)  # in place on an inference tensor would raise


@pytest.mark.parametrize("shape", [(2, 7, 16, 3), (4, 78, 64, 4)])
def test_token_learner_inference_is_multihead_attention_bit_for_bit(shape):
    """Without grad TokenLearner writes the attention out; its values must equal nn.MultiheadAttention's exactly
    (acting and training then see the same numbers); with grad the module itself runs."""
    n, length, d, nq = shape
    torch.manual_seed(0)
    tl = TokenLearner(d, num_queries=nq, num_heads=4)
    feats = torch.randn(n, length, d)
    q = tl.queries.unsqueeze(0).expand(n, -1, -1)
    with torch.no_grad():
        ref = tl.norm(tl.attn(q, feats, feats, need_weights=False)[0] + q).flatten(1)
        torch.testing.assert_close(tl(feats), ref, atol=0, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(tl(feats), ref, atol=0, rtol=0)
    with_grad = tl(feats)
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), ref, atol=0, rtol=0)


def _bench_module():
    return benchmark_script("rollout_throughput")


def test_policy_only_benchmark_rows_and_merge(tmp_path):
    bench = _bench_module()
    res = bench.policy_only("pointreach", None, [2], 4, "gaussian", rounds=1, acts=1, with_compile=False,
                             warmup=1)
    rows = res["batches"][0]["rows"]
    assert [r["step"] for r in rows] == [name for name, _ in bench.POLICY_ROWS]
    assert rows[0]["max_abs_diff_vs_baseline"] == 0 and all(r["max_abs_diff_vs_baseline"] < 1e-5 for r in rows)
    assert all(r["ms_per_act"] > 0 and r["ms_per_env_step"] == r["ms_per_act"] / 8 for r in rows)
    out = tmp_path / "rt.json"
    out.write_text(json.dumps({"rows": [1, 2], "date": "old"}))
    bench._write_merged(str(out), {"policy_cpu": res})
    merged = json.loads(out.read_text())
    assert merged["rows"] == [1, 2] and merged["policy_cpu"]["batches"][0]["batch"] == 2


def test_policy_only_bad_batch_is_refused_before_work(tmp_path):
    out = tmp_path / "x.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "rollout_throughput.py"), "--policy-only",
                        "--suites", "pointreach", "--batch", "0", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "--batch takes positive integers" in r.stderr and not out.exists()
