"""Off-policy RL (SAC/RLPD, DSRL): the maths against hand values, the replay buffer, checkpointed state, and
short learning and resume runs on PointReach."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from vlaforge.algos import get_algo
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
from vlaforge.hooks import Hooks
from vlaforge.policies import build_policy, load_policy
from vlaforge.train.checkpoint import load_algo_state
from vlaforge.train.loop import TrainConfig, train

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


# -- SAC and DSRL on the training loop ---------------------------------------------------------------

PRIV = {"radius": 0.2, "privileged": 1.0, "shaping": 1.0}


def _rollout(policy, n=8, seed=0):
    from vlaforge.envs import make_vec_env
    from vlaforge.rollout.collect import collect

    torch.manual_seed(seed)
    venv = make_vec_env("pointreach", n, **PRIV)
    r, _ = collect(policy, venv, np.arange(n) % 4, np.arange(n) + 100)
    return r


def test_transitions_pair_each_decision_with_the_next_observation():
    from vlaforge.algos.sac import transitions

    p = build_policy(backbone="state", state_dim=4, action_dim=2)
    r = _rollout(p)
    b, m = transitions(r)
    f = b.fields
    T = r.num_steps
    t, n = f["frame"] // r.num_episodes, f["frame"] % r.num_episodes
    assert torch.equal(f["next_frame"], torch.where(t + 1 < T, t + 1, t) * r.num_episodes + n)
    assert torch.equal(f["next_state"], r.obs_state[(t + 1).clamp_max(T - 1), n])
    assert (f["done"][t == T - 1] == 1).all()  # at the last row only terminal steps are kept
    assert len(b) + m["replay/dropped_truncated"] == int((r.alive & r.valid).sum())


def _sac_cfg(**kw):
    cfg = get_algo("sac").config(**kw)
    return cfg


def test_sac_state_round_trip_and_update_moves_actor_and_critics():
    from safetensors.torch import load, save

    torch.manual_seed(0)
    p = build_policy(backbone="state", state_dim=4, action_dim=2)
    algo = get_algo("sac")
    cfg = _sac_cfg(critics=3, batch_size=32, utd=0.1)
    st = algo.new_state(p, cfg)
    assert p.head.squash
    batch, _ = algo.prepare(_rollout(p), cfg)
    before = [x.detach().clone() for x in p.parameters()]
    opt = torch.optim.Adam(p.parameters(), lr=1e-3)
    m = algo.update(p, opt, batch, cfg, 0, torch.Generator().manual_seed(0), state=st)
    assert m["train/optimizer_steps"] == max(1, round(0.1 * len(batch))) and len(st.online) == len(batch)
    assert all(np.isfinite(v) for v in m.values())
    assert any(not torch.equal(b, x) for b, x in zip(before, p.head.parameters()))
    assert m["replay/bytes_per_transition"] == 4 * (8 + 1 + 1 + 4 + 4) + 8  # action, r, d, s, s' + instruction id
    tensors, meta = st.state_dict()
    st2 = algo.new_state(build_policy(backbone="state", state_dim=4, action_dim=2), cfg)
    st2.load_state_dict(load(save(tensors)), json.loads(json.dumps(meta)))
    for a, b in zip(st.q.state_dict().values(), st2.q.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(st.log_alpha, st2.log_alpha) and st2.online.size == st.online.size
    assert st2.q_opt.state_dict()["state"][0]["step"] == st.q_opt.state_dict()["state"][0]["step"]


def test_sac_refuses_other_heads_and_bad_options():
    with pytest.raises(ValueError, match="Gaussian"):
        get_algo("sac").new_state(build_policy(head="flow", backbone="state"), _sac_cfg())
    with pytest.raises(ValueError, match="critic"):
        get_algo("sac").new_state(build_policy(backbone="state"), _sac_cfg(critic="pixels"))
    with pytest.raises(ValueError, match="target-subset"):
        get_algo("sac").new_state(build_policy(backbone="state"), _sac_cfg(critics=2, target_subset=3))


def test_sac_demo_buffer_from_a_collect_directory(tmp_path):
    from vlaforge.data.demos import collect_demos
    from vlaforge.envs import make_vec_env

    venv = make_vec_env("pointreach", 4, **PRIV)
    collect_demos(venv, tmp_path / "demos", [venv.spec.tasks[0].name], 4)
    p = build_policy(backbone="state", state_dim=venv.spec.state_dim, action_dim=2, chunk_size=4)
    st = get_algo("sac").new_state(p, _sac_cfg(demos=str(tmp_path / "demos"), critic="privileged"))
    d = st.demos.data
    n = len(st.demos)
    assert n > 0 and d["done"][:n].sum() == 4 * min(4, n // 4)  # the last C frames of each episode are terminal
    assert torch.equal(d["reward"][:n], d["done"][:n]) and d["sim"].shape[1] == len(venv.spec.sim_state_names)
    with pytest.raises(ValueError, match="dims"):
        get_algo("sac").new_state(build_policy(backbone="state", state_dim=7, action_dim=2),
                                  _sac_cfg(demos=str(tmp_path / "demos")))


def test_dsrl_starts_at_the_base_policy_and_trains_only_the_noise_policy():
    from vlaforge.types import Observation

    torch.manual_seed(0)
    p = build_policy(head="flow", backbone="state", state_dim=4, action_dim=2)
    obs = Observation(torch.zeros(3, 0), torch.randn(3, 4), [""] * 3, torch.zeros(3, dtype=torch.long))
    base = p.act(obs, deterministic=True).actions
    algo = get_algo("dsrl")
    cfg = algo.config(batch_size=16, utd=0.1)
    st = algo.new_state(p, cfg)
    assert torch.allclose(p.act(obs, deterministic=True).actions, base, atol=1e-6)  # w = 0 at the start
    vla = {k: v.clone() for k, v in p.state_dict().items() if not k.startswith("noise_policy.")}
    noise = [x.detach().clone() for x in p.noise_policy.parameters()]
    batch, _ = algo.prepare(_rollout(p), cfg)
    assert batch.fields["w"].abs().max() < cfg.bound
    m = algo.update(p, torch.optim.Adam(p.parameters()), batch, cfg, 0, torch.Generator().manual_seed(0), state=st)
    assert m["train/optimizer_steps"] > 0 and all(np.isfinite(v) for v in m.values())
    assert all(torch.equal(v, p.state_dict()[k]) for k, v in vla.items())  # the VLA is frozen
    assert any(not torch.equal(a, b) for a, b in zip(noise, p.noise_policy.parameters()))
    assert m["replay/bytes_per_transition"] < 3000  # features, not images
    with pytest.raises(ValueError, match="noise policy"):  # PPO & co. would score the wrong distribution
        p.evaluate(obs, {})
    with pytest.raises(ValueError, match="flow"):
        algo.new_state(build_policy(head="gaussian", backbone="state"), cfg)


def _loop_cfg(out, algo, **kw):
    base = dict(algo=algo, suite="pointreach", tasks="train", backbone="state", env_kwargs=PRIV, groups=16, num_envs=16,
                eval_every=0, progress=False, tensorboard=False, out=str(out), lr=1e-3, threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow
def test_sac_learning_raises_success(tmp_path):
    """State-only PointReach with the goal offset in the state and distance shaping (see docs/offpolicy.md)."""
    cfg = _loop_cfg(tmp_path / "run", "sac", iterations=6, groups=8, num_envs=8)
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    succ = [r["rollout/success"] for r in rows if "rollout/success" in r]
    assert np.mean(succ[-2:]) > np.mean(succ[:2]) + 0.3, succ


class _CopyCheckpoint(Hooks):
    """Copies the on-disk checkpoint (written at the end of iteration ``at``) before the next one overwrites it."""

    def __init__(self, src, dst, at):
        self.src, self.dst, self.at = src, dst, at

    def after_iteration(self, iteration, policy, rollout):
        if iteration == self.at:
            shutil.copytree(self.src, self.dst)
        return {}


@pytest.mark.parametrize("algo,head", [("sac", "gaussian"), ("dsrl", "flow")])
def test_resume_is_exact(tmp_path, algo, head):
    """4 iterations straight == 2 iterations, then --resume from that checkpoint for the other 2."""
    kw = dict(iterations=4, groups=4, num_envs=4, head=head)
    ref = _loop_cfg(tmp_path / "ref", algo, **kw)
    ref.algo_cfg.utd = 0.25
    train(ref, _CopyCheckpoint(tmp_path / "ref" / "checkpoint", tmp_path / "ck2", at=2))
    assert json.loads((tmp_path / "ck2" / "state.json").read_text())["iteration"] == 2
    train(_loop_cfg(tmp_path / "res", algo, resume=str(tmp_path / "ck2")))
    a, b = load_policy(tmp_path / "ref" / "final"), load_policy(tmp_path / "res" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    ta, _ = load_algo_state(tmp_path / "ref" / "checkpoint")
    tb, _ = load_algo_state(tmp_path / "res" / "checkpoint")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_the_offpolicy_step_skeleton_skips_nonfinite_steps_and_averages_the_rest():
    from vlaforge.algos.common import gradient_step, replay_updates

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    assert gradient_step((w * float("nan")).sum(), [w], opt, 10.0) is None  # non-finite loss: no step
    assert gradient_step((w * 1e39 * 1e39).sum(), [w], opt, 10.0) is None  # inf gradient: no step
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0])) and w.grad is None
    gn = gradient_step((w ** 2).sum(), [w], opt, 10.0)  # grad 2w = (2, -4), |g| = sqrt(20) < 10: unclipped
    assert gn == pytest.approx(20 ** 0.5) and torch.allclose(w.detach(), torch.tensor([0.0, 0.0]))
    seen = []
    out = replay_updates(4, lambda: len(seen), lambda i, mb: seen.append(mb) or (None if i == 2 else {"x": float(i)}))
    assert seen == [0, 1, 2, 3]  # one replay batch per step, drawn before it
    assert out == {"train/x": (0 + 1 + 3) / 3, "train/optimizer_steps": 3, "train/skipped_nonfinite": 1}
