"""Flow-matching head: SDE step densities, sample/evaluate consistency, ODE limit, SFT, grads, tiny VLA."""

import math

import pytest
import torch
from torch.distributions import Normal

from vlaforge.policies.heads.flow import FlowHead, gaussian_log_prob, sde_step

torch.set_num_threads(1)

D, C, A, K = 16, 2, 3, 4


def _head(**kw):
    torch.manual_seed(0)
    kw = {"num_queries": 2, "hidden": 32, "steps": K, "noise": 0.5, **kw}
    return FlowHead(D, C, A, **kw)


def _feats(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, D, generator=g)


def test_step_density_is_closed_form_gaussian():
    head = _head()
    feats = _feats()
    torch.manual_seed(2)
    _, log_prob, taken = head.sample(feats)
    chain = taken["chain"]
    assert chain.shape == (5, K + 1, C, A) and chain.dtype == torch.float32
    t, delta, sigma = head.grid(head.noise)
    ctx = head.context(feats)
    want = torch.zeros_like(log_prob)
    for k in range(K):
        x, tk, sk = chain[:, k], t[k].item(), sigma[k].item()
        v = head.predict_velocity(ctx, x, t[k].expand(5))
        # the formula of ALGORITHMS.md §0, written out by hand
        x0, x1 = x - tk * v, x + (1 - tk) * v
        mean = (1 - tk + delta) * x0 + (tk - delta - sk ** 2 * delta / (2 * tk)) * x1
        std = sk * math.sqrt(delta)
        m2, s2 = sde_step(x, v, t[k], delta, sigma[k])
        torch.testing.assert_close(m2, mean)
        torch.testing.assert_close(s2, torch.full_like(mean, std))
        want += Normal(mean, std).log_prob(chain[:, k + 1])
        ref = Normal(mean, std).log_prob(chain[:, k + 1])
        torch.testing.assert_close(gaussian_log_prob(chain[:, k + 1], m2, s2), ref)
    torch.testing.assert_close(log_prob, want, atol=1e-4, rtol=1e-5)
    # σ at t=1 is taken at the next grid point; no step has σ = 0 or ∞
    assert sigma[0] == pytest.approx(0.5 * math.sqrt(0.75 / 0.25))
    assert torch.isfinite(sigma).all() and (sigma > 0).all()


def test_sde_preserves_marginals_with_exact_velocity():
    """With the exact velocity of a 1-D Gaussian data law the SDE sampler lands on that law."""
    torch.manual_seed(0)
    m, s, a, k = 0.6, 0.3, 0.7, 50
    head = FlowHead(4, 1, 1, steps=k, noise=a)
    t, delta, sigma = head.grid(a)
    x = torch.randn(40000)
    for i in range(k):
        ti = t[i]
        var = (1 - ti) ** 2 * s ** 2 + ti ** 2
        r = x - (1 - ti) * m
        v = ti / var * r - (m + (1 - ti) * s ** 2 / var * r)  # E[x1 | x_t] − E[x0 | x_t]
        mean, std = sde_step(x, v, ti, delta, sigma[i])
        x = mean + std * torch.randn_like(x)
    assert abs(x.mean().item() - m) < 0.02 and abs(x.std().item() - s) < 0.03


@pytest.mark.parametrize("logp_steps", ["all", "one"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_evaluate_reproduces_sampling_log_prob(logp_steps, deterministic):
    head = _head(logp_steps=logp_steps)
    feats = _feats(7)
    torch.manual_seed(3)
    actions, log_prob, taken = head.sample(feats, deterministic=deterministic)
    assert actions.shape == log_prob.shape == (7, C, A) and actions.abs().max() <= 1
    torch.testing.assert_close(actions, taken["chain"][:, -1].clamp(-1, 1))
    if logp_steps == "one":
        assert taken["step"].shape == (7,) and taken["step"].dtype == torch.long
    lp, ent = head.evaluate(feats, taken)
    torch.testing.assert_close(lp, log_prob, atol=1e-5, rtol=0)  # ratio = 1 under unchanged parameters
    assert ent.shape == (7, C, A) and torch.isfinite(ent).all()
    # a different temperature changes the log-probs; sampled and scored at one temperature they agree
    lp2, _ = head.evaluate(feats, taken, temperature=1.5)
    assert not torch.allclose(lp2, lp)
    torch.manual_seed(4)
    _, log_prob_t, taken_t = head.sample(feats, temperature=1.5)
    lp_t, _ = head.evaluate(feats, taken_t, temperature=1.5)
    torch.testing.assert_close(lp_t, log_prob_t, atol=1e-5, rtol=0)


def test_one_step_mode_uses_ode_elsewhere():
    """π_RL's mixed sampler: only the chosen step is noisy; every other step is the ODE step."""
    head = _head(logp_steps="one")
    feats = _feats(6)
    torch.manual_seed(5)
    _, _, taken = head.sample(feats)
    chain, step = taken["chain"], taken["step"]
    t, delta, _ = head.grid(0.0)
    ctx = head.context(feats)
    for k in range(K):
        v = head.predict_velocity(ctx, chain[:, k], t[k].expand(6))
        ode = chain[:, k] - delta * v
        same = torch.isclose(ode, chain[:, k + 1], atol=1e-5).flatten(1).all(1)
        assert torch.equal(same, step != k)


def test_zero_noise_is_the_euler_ode():
    head = _head(noise=0.0)
    feats = _feats(4)
    ctx = head.context(feats)
    torch.manual_seed(6)
    x1 = torch.randn(4, C, A)
    chain, _ = head.rollout(ctx, x1, 0.0)
    x = x1.clone()
    for k in range(K):
        t = 1 - k / K
        x = x - (1 / K) * head.predict_velocity(ctx, x, torch.full((4,), t))
        torch.testing.assert_close(chain[:, k + 1], x, atol=1e-5, rtol=1e-5)
    # a tiny noise level gives (nearly) the same chain from the same start
    torch.manual_seed(7)
    chain_tiny, _ = head.rollout(ctx, x1, 1e-8)
    torch.testing.assert_close(chain_tiny, chain, atol=1e-5, rtol=1e-5)
    # public API: deterministic = ODE from x1 = 0; at noise 0 sampling has no density (log_prob 0)
    a, lp, taken = head.sample(feats, deterministic=True)
    torch.testing.assert_close(taken["chain"], head.rollout(ctx, torch.zeros(4, C, A), 0.0)[0])
    assert (lp == 0).all()
    with pytest.raises(ValueError, match="noise level 0"):
        head.evaluate(feats, taken)


def test_sft_fits_a_constant_chunk_per_context():
    head = _head(hidden=64)
    feats = _feats(2, seed=8)
    target = torch.tensor([[[0.5, -0.3, 0.8], [0.1, 0.6, -0.7]], [[-0.6, 0.2, 0.0], [0.9, -0.4, 0.3]]])
    feats_b, target_b = feats.repeat(32, 1, 1), target.repeat(32, 1, 1)
    mask = torch.ones(64, C)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    torch.manual_seed(9)
    losses = []
    for _ in range(300):
        loss, metrics = head.sft_loss(feats_b, target_b, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["sft/flow_mse"].item())
    assert sum(losses[-20:]) / 20 < 0.2 * sum(losses[:20]) / 20
    with torch.no_grad():
        a, _, _ = head.sample(feats, deterministic=True)
    assert (a - target).abs().max() < 0.15, (a, target)
    # masked chunk steps do not count
    shifted = target_b + torch.tensor([0.0, 5.0]).view(1, 2, 1)  # only chunk step 1 is off
    loss_m, _ = head.sft_loss(feats_b, shifted, torch.tensor([[1.0, 0.0]]).repeat(64, 1))
    assert loss_m < 1.0


@pytest.mark.parametrize("logp_steps", ["all", "one"])
def test_gradients_flow_and_no_nan(logp_steps):
    head = _head(logp_steps=logp_steps, steps=2)  # the coarsest grid: both endpoints are adjacent steps
    feats = _feats(8)
    with torch.no_grad():
        _, _, taken = head.sample(feats)
    lp, ent = head.evaluate(feats, taken)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    lp.sum().backward()
    grads = [p.grad for p in head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert head.velocity[-1].weight.grad.abs().sum() > 0 and head.pool.queries.grad.abs().sum() > 0
    # the velocity net at the grid endpoints t = 0 and t = 1 is finite
    v = head.predict_velocity(head.context(feats[:2]), torch.zeros(2, C, A), torch.tensor([0.0, 1.0]))
    assert torch.isfinite(v).all()


def test_bad_options_refused():
    with pytest.raises(ValueError, match="steps"):
        FlowHead(D, C, A, steps=1)
    with pytest.raises(ValueError, match="logp_steps"):
        FlowHead(D, C, A, logp_steps="some")


def test_flow_head_in_tiny_vla():
    from vlaforge.envs import make_vec_env
    from vlaforge.policies import build_policy

    v = make_vec_env("pointreach", 2)
    obs = v.reset([0, 1], [0, 0])
    torch.manual_seed(0)
    p = build_policy(head="flow", flow_steps=4)
    out = p.act(obs)
    assert out.actions.shape == (2, p.chunk_size, p.action_dim) and out.log_prob.shape == out.actions.shape
    assert out.taken["chain"].shape == (2, 5, p.chunk_size, p.action_dim)
    lp, ent, val = p.evaluate(obs, out.taken)
    torch.testing.assert_close(lp, out.log_prob, atol=1e-5, rtol=0)
    assert torch.isfinite(ent).all() and val.shape == (2,)
    det = p.act(obs, deterministic=True).actions
    torch.testing.assert_close(det, p.act(obs, deterministic=True).actions)
    loss, metrics = p.sft_loss(obs, out.actions)
    assert torch.isfinite(loss) and "sft/flow_mse" in metrics
    loss.backward()
    assert any(q.grad is not None for q in p.head_parameters())
