"""The tiny VLA: shapes, sampling/scoring consistency, save/load round trips, bad checkpoints."""

import json

import numpy as np
import pytest
import torch

from vlaforge.envs import make_vec_env
from vlaforge.policies import CheckpointError, build_policy, load_policy, save_policy
from vlaforge.policies.base import action_stats, denormalize, normalize
from vlaforge.policies.heads.tokens import actions_to_tokens, tokens_to_actions

HEADS = ["gaussian", "tokens", "flow"]


@pytest.fixture(scope="module")
def obs():
    v = make_vec_env("pointreach", 4)
    return v.reset([0, 1, 2, 3], [0, 1, 2, 3])


@pytest.mark.parametrize("head", HEADS)
def test_act_evaluate_consistent(head, obs):
    torch.manual_seed(0)
    p = build_policy(head=head, chunk_size=3)
    out = p.act(obs)
    assert out.actions.shape == (4, 3, 2) and out.log_prob.shape == (4, 3, 2) and out.value.shape == (4,)
    assert out.actions.abs().max() <= 1.0
    lp, ent, v = p.evaluate(obs, out.taken)
    torch.testing.assert_close(lp, out.log_prob, atol=1e-5, rtol=0)  # ratio = 1 under unchanged parameters
    assert torch.isfinite(ent).all()
    torch.testing.assert_close(v, out.value)


@pytest.mark.parametrize("head", HEADS)
def test_temperature_applies_to_sampling_and_scoring(head, obs):
    torch.manual_seed(0)
    p = build_policy(head=head)
    out = p.act(obs, temperature=1.7)
    lp, _, _ = p.evaluate(obs, out.taken, temperature=1.7)
    torch.testing.assert_close(lp, out.log_prob, atol=1e-5, rtol=0)
    lp1, _, _ = p.evaluate(obs, out.taken, temperature=1.0)
    assert not torch.allclose(lp1, lp)


@pytest.mark.parametrize("head", HEADS)
def test_save_load_round_trip(head, obs, tmp_path):
    torch.manual_seed(0)
    p = build_policy(head=head)
    p.set_action_stats(np.array([-0.5, -2.0]), np.array([0.5, 3.0]))
    save_policy(p, tmp_path / "ckpt")
    q = load_policy(tmp_path / "ckpt")
    a = p.act(obs, deterministic=True).actions
    b = q.act(obs, deterministic=True).actions
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(q.act_hi, torch.tensor([0.5, 3.0]))
    assert not list(tmp_path.glob(".ckpt.tmp-*"))


def test_log_std_init_shapes_only_the_gaussian_spread(tmp_path):
    """``--log-std-init`` (PolicyShape): a fresh policy from train's path starts its Gaussian at that log-std, every
    other weight as without the flag (same seed), and sft builds it the same way; unset keeps the model's -1."""
    from vlaforge.envs import suite_spec
    from vlaforge.train.config import TrainConfig
    from vlaforge.train.loop import fresh_policy

    spec = suite_spec("pointreach", "train")
    built = {}
    for v in (None, 0.0):
        torch.manual_seed(3)
        built[v] = fresh_policy(TrainConfig(image_size=32, log_std_init=v), spec)
    assert built[None].head.log_std.eq(-1.0).all() and built[0.0].head.log_std.eq(0.0).all()
    a, b = built[None].state_dict(), built[0.0].state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == ["head.log_std"]
    torch.manual_seed(3)  # what benchmarks/peer_sb3.py built by hand before the flag existed
    by_hand = build_policy(state_dim=spec.state_dim, action_dim=spec.action_dim, views=spec.image_shape[0],
                           image_size=32, log_std_init=0.0)
    assert all(torch.equal(x, by_hand.state_dict()[k]) for k, x in b.items())
    out = built[0.0].act(make_vec_env("pointreach", 2, image_size=32).reset([0, 1], [0, 1]))
    assert out.log_prob.shape == out.actions.shape  # N(mean, 1): still a valid policy


def test_state_backbone(obs):
    p = build_policy(backbone="state")
    out = p.act(obs)
    assert out.actions.shape == (4, 4, 2)


def test_corrupt_and_partial_checkpoints_refused(tmp_path):
    p = build_policy()
    d = save_policy(p, tmp_path / "c")
    (d / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_policy(d)
    d2 = save_policy(p, tmp_path / "c2")
    (d2 / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="partial"):
        load_policy(d2)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_policy(tmp_path / "nothing")
    d3 = save_policy(p, tmp_path / "c3")
    cfg = json.loads((d3 / "config.json").read_text())
    cfg["policy"]["dim"] = 32
    (d3 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_policy(d3)


def test_save_failure_leaves_no_partial_dir(tmp_path, monkeypatch):
    import vlaforge.policies as pol

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError):
        pol.save_policy(build_policy(), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_action_normalisation_hand_values():
    acts = np.stack([np.linspace(-2, 2, 101), np.full(101, 0.3)], 1)
    lo, hi = action_stats(acts)
    np.testing.assert_allclose(lo, [-1.96, -0.7], atol=1e-6)  # constant dim gets a unit range
    np.testing.assert_allclose(hi, [1.96, 1.3], atol=1e-6)
    x = normalize(torch.tensor([[0.98, 0.3]]), torch.tensor(lo), torch.tensor(hi))
    torch.testing.assert_close(x, torch.tensor([[0.5, 0.0]]))
    torch.testing.assert_close(denormalize(torch.tensor([[0.5, 0.0]]), torch.tensor(lo), torch.tensor(hi)),
                               torch.tensor([[0.98, 0.3]]))


def test_token_bins_hand_values():
    a = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0])
    t = actions_to_tokens(a, 256)
    assert t.tolist() == [0, 0, 128, 255, 255]
    np.testing.assert_allclose(tokens_to_actions(torch.tensor([0, 255]), 256).numpy(), [-255 / 256, 255 / 256])
    # decoding a bin centre and re-encoding is the identity
    ids = torch.arange(256)
    assert torch.equal(actions_to_tokens(tokens_to_actions(ids, 256), 256), ids)
