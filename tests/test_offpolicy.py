"""Off-policy RL (SAC/RLPD, DSRL): the maths against hand values, the replay buffer, checkpointed state, and
short learning and resume runs on PointReach."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from vlaforge.algos.state import flatten, unflatten
from vlaforge.core.offpolicy import (
    actor_loss,
    critic_loss,
    critic_target,
    polyak,
    random_subset,
    squashed_gaussian_log_prob,
    squashed_gaussian_sample,
    tanh_log_det,
    temperature_loss,
)
from vlaforge.data.replay import ReplayBuffer, sample_symmetric


# -- maths ------------------------------------------------------------------------------------------

def test_tanh_log_prob_matches_a_transformed_distribution():
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3), torch.randn(5, 3) * 0.3
    u = mean + log_std.exp() * torch.randn(5, 3)
    dist = torch.distributions.TransformedDistribution(torch.distributions.Normal(mean, log_std.exp()),
                                                       [torch.distributions.TanhTransform()])
    ours = squashed_gaussian_log_prob(u, mean, log_std)
    assert torch.allclose(ours, dist.log_prob(torch.tanh(u)), atol=1e-4)
    # by hand at u = 0.5, mean 0, std 1: log N(0.5) - log(1 - tanh(0.5)^2)
    hand = -0.5 * 0.25 - 0.5 * math.log(2 * math.pi) - math.log(1 - math.tanh(0.5) ** 2)
    assert squashed_gaussian_log_prob(torch.tensor([0.5]), torch.zeros(1), torch.zeros(1)).item() == pytest.approx(hand)
    assert torch.isfinite(tanh_log_det(torch.tensor([40.0, -40.0]))).all()  # stable where tanh saturates


def test_squashed_sample_is_reparameterised_and_bounded():
    mean = torch.zeros(4, 2, requires_grad=True)
    a, lp = squashed_gaussian_sample(mean, torch.full((4, 2), 1.0), torch.Generator().manual_seed(0))
    assert (a.abs() < 1).all() and lp.shape == (4, 2)
    a.sum().backward()
    assert mean.grad is not None and mean.grad.abs().sum() > 0
    a0, _ = squashed_gaussian_sample(torch.full((1, 1), 0.3), torch.zeros(1, 1), deterministic=True)
    assert a0.item() == pytest.approx(math.tanh(0.3))


def test_critic_target_min_over_the_subset_hand_values():
    reward = torch.tensor([1.0, 0.0])
    done = torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[3.0, 5.0], [2.0, 7.0], [9.0, 1.0]])  # (E=3, B=2)
    logp = torch.tensor([-1.0, 2.0])
    y = critic_target(reward, done, next_q, logp, alpha=0.5, gamma=0.9, subset=torch.tensor([0, 2]))
    # row 0: min(3, 9) = 3; 1 + 0.9 * (3 - 0.5 * -1) = 4.15 ; row 1: terminal -> 0
    assert y.tolist() == pytest.approx([4.15, 0.0])
    y_all = critic_target(reward, done, next_q, logp, alpha=0.5, gamma=0.9)
    assert y_all[0].item() == pytest.approx(1 + 0.9 * (2 + 0.5))
    s = random_subset(10, 2, torch.Generator().manual_seed(0))
    assert len(set(s.tolist())) == 2 and all(0 <= i < 10 for i in s.tolist())
    with pytest.raises(ValueError):
        random_subset(2, 3)


def test_critic_and_actor_losses_hand_values():
    q = torch.tensor([[1.0, 2.0], [3.0, 0.0]])  # (E=2, B=2)
    y = torch.tensor([2.0, 1.0])
    loss, _ = critic_loss(q, y)
    # 0.5 * [mean((1-2)^2, (2-1)^2) + mean((3-2)^2, (0-1)^2)] = 0.5 * (1 + 1) = 1
    assert loss.item() == pytest.approx(1.0)
    logp = torch.tensor([-2.0, 1.0])
    la, _ = actor_loss(logp, q, alpha=0.1, reduce="mean")  # mean_B [0.1 logp - mean_E q] = mean(-0.2-2, 0.1-1)
    assert la.item() == pytest.approx(((-0.2 - 2.0) + (0.1 - 1.0)) / 2)
    lm, _ = actor_loss(logp, q, alpha=0.1, reduce="min")  # min_E q = (1, 0)
    assert lm.item() == pytest.approx(((-0.2 - 1.0) + (0.1 - 0.0)) / 2)


@pytest.mark.parametrize("entropy_low", [True, False])
def test_temperature_moves_towards_the_target_entropy(entropy_low):
    log_alpha = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([log_alpha], lr=0.1)
    target = -2.0
    logp = torch.full((8,), 5.0 if entropy_low else -5.0)  # entropy -5 (< target) or 5 (> target)
    loss, _ = temperature_loss(log_alpha, logp, target)
    assert loss.item() == pytest.approx(-0.0)  # log alpha = 0: the value is 0, the gradient is not
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(-(5.0 - 2.0) if entropy_low else -(-5.0 - 2.0))
    opt.step()
    assert (log_alpha.item() > 0) == entropy_low  # too little entropy -> alpha up; too much -> down


def test_polyak_hand_values():
    t, s = [torch.tensor([0.0, 10.0])], [torch.tensor([1.0, 0.0])]
    polyak(t, s, tau=0.25)
    assert t[0].tolist() == pytest.approx([0.25, 7.5])


# -- replay -----------------------------------------------------------------------------------------

def _rows(start, n):
    return {"x": torch.arange(start, start + n, dtype=torch.float32).unsqueeze(1), "k": torch.arange(start, start + n)}


def test_replay_capacity_and_wraparound():
    b = ReplayBuffer(5)
    b.add(_rows(0, 3))
    assert len(b) == 3 and b.ptr == 3
    b.add(_rows(3, 4))  # 3, 4 fill the end; 5, 6 overwrite rows 0 and 1
    assert len(b) == 5 and b.ptr == 2
    assert sorted(b.data["k"].tolist()) == [2, 3, 4, 5, 6]
    b.add(_rows(10, 12))  # more than capacity: only the newest 5 survive
    assert sorted(b.data["k"].tolist()) == [17, 18, 19, 20, 21] and len(b) == 5
    assert b.bytes_per_transition == 4 + 8
    s = b.sample(100, torch.Generator().manual_seed(0))
    assert set(s["k"].tolist()) <= {17, 18, 19, 20, 21}
    with pytest.raises(ValueError):
        b.add({"x": torch.zeros(2, 1)})  # a field missing


def test_replay_state_round_trip_through_flatten():
    from safetensors.torch import load, save

    b = ReplayBuffer(6)
    b.add(_rows(0, 8))
    tensors, meta = flatten({"buf": b.state_dict()})
    tensors = load(save(tensors))  # through safetensors bytes, as the checkpoint does
    c = ReplayBuffer(1)
    c.load_state_dict(unflatten(tensors, json.loads(json.dumps(meta)))["buf"])
    assert (c.capacity, c.ptr, c.size) == (b.capacity, b.ptr, b.size)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(b.sample(20, g1)["k"], c.sample(20, g2)["k"])
    c.add(_rows(100, 1))
    assert c.data["k"][b.ptr].item() == 100  # the write position survived too


def test_symmetric_sampling_is_exactly_half_demos():
    demos, online = ReplayBuffer(10), ReplayBuffer(10)
    demos.add({"src": torch.zeros(4)})
    online.add({"src": torch.ones(7)})
    for n in (256, 255, 2):
        mb = sample_symmetric(demos, online, n, torch.Generator().manual_seed(n))
        assert int((mb["src"] == 0).sum()) == n // 2 and len(mb["src"]) == n
    assert sample_symmetric(None, online, 8, torch.Generator())["src"].eq(1).all()
