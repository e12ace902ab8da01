"""Core maths against hand-computed numbers and identities. Every test runs in milliseconds."""

from __future__ import annotations

import math

import pytest
import torch

from vlaforge.core import (
    LOG_PROB_LEVELS,
    broadcast_to_steps,
    clip_higher_bounds,
    entropy_bonus,
    gae,
    group_centered_advantages,
    group_normalized_advantages,
    group_success_rate,
    leave_one_out_advantages,
    loop_bounds,
    masked_mean,
    mse_loss,
    ppo_clip_loss,
    reduce_log_prob,
    symmetric_bounds,
    token_cross_entropy,
    tpo_loss,
    uniform_groups,
    value_loss,
)

B = torch.tensor  # short alias for hand-written tensors


def _episodes(lengths, ends, T):
    """alive/terminated/truncated (T, N) for one episode per column.

    ends[n] in {"term", "trunc", "cut"}: how column n's last alive step ends ("cut" = neither).
    """
    N = len(lengths)
    alive = torch.zeros(T, N, dtype=torch.bool)
    term = torch.zeros(T, N, dtype=torch.bool)
    trunc = torch.zeros(T, N, dtype=torch.bool)
    for n, (length, end) in enumerate(zip(lengths, ends)):
        alive[:length, n] = True
        if end == "term":
            term[length - 1, n] = True
        elif end == "trunc":
            trunc[length - 1, n] = True
    return alive, term, trunc


# ------------------------------------------------------------------------------------------
# Returns and GAE
# ------------------------------------------------------------------------------------------


def discounted_returns(reward, alive, term, trunc, next_value, gamma):
    """Reference for the GAE tests, one column and one step at a time: G_t = r_t + γ·G_{t+1} inside an
    episode; at its last alive step r_t (terminated) or r_t + γ·next_value (truncated or cut); 0 when dead."""
    T, N = reward.shape
    G = torch.zeros(T, N)
    for n in range(N):
        for t in reversed(range(T)):
            if not alive[t, n]:
                continue
            last = bool(term[t, n] or trunc[t, n]) or t == T - 1 or not alive[t + 1, n]
            tail = (0.0 if term[t, n] else float(next_value[n])) if last else float(G[t + 1, n])
            G[t, n] = float(reward[t, n]) + gamma * tail
    return G


def test_gae_lambda_one_equals_returns_minus_values():
    g = torch.Generator().manual_seed(0)
    T = 6
    alive, term, trunc = _episodes([6, 3, 4, 1], ["term", "trunc", "cut", "trunc"], T)
    reward = torch.randn(T, 4, generator=g)
    value = torch.randn(T, 4, generator=g)
    # garbage on dead steps must be ignored
    reward[~alive] = 1e3
    value[~alive] = -1e3
    next_value = torch.randn(4, generator=g)
    gamma = 0.97
    adv, ret = gae(reward, value, alive, term, trunc, next_value, gamma, lam=1.0)
    G = discounted_returns(reward, alive, term, trunc, next_value, gamma)
    expected = torch.where(alive, G - value, torch.zeros_like(G))
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ret, G, rtol=1e-5, atol=1e-5)
    assert (adv[~alive] == 0).all() and (ret[~alive] == 0).all()


def test_gae_hand_example_terminated_and_truncated():
    # One 3-step episode, r = [1, 0, 2], V = [0.5, 1.0, 1.5], γ = 0.9, λ = 0.8 (γλ = 0.72).
    # Column 0 terminates at t=2, column 1 is truncated at t=2 with next_value = 2.0.
    # δ0 = 1 + 0.9·1.0 − 0.5 = 1.4 ; δ1 = 0 + 0.9·1.5 − 1.0 = 0.35
    # terminated: δ2 = 2 − 1.5 = 0.5
    #   A2 = 0.5 ; A1 = 0.35 + 0.72·0.5 = 0.71 ; A0 = 1.4 + 0.72·0.71 = 1.9112
    # truncated:  δ2 = 2 + 0.9·2.0 − 1.5 = 2.3
    #   A2 = 2.3 ; A1 = 0.35 + 0.72·2.3 = 2.006 ; A0 = 1.4 + 0.72·2.006 = 2.84432
    reward = B([[1.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    value = B([[0.5, 0.5], [1.0, 1.0], [1.5, 1.5]])
    alive, term, trunc = _episodes([3, 3], ["term", "trunc"], 3)
    adv, ret = gae(reward, value, alive, term, trunc, B([2.0, 2.0]), gamma=0.9, lam=0.8)
    torch.testing.assert_close(adv, B([[1.9112, 2.84432], [0.71, 2.006], [0.5, 2.3]]))
    torch.testing.assert_close(ret, adv + value)


def test_termination_does_not_bootstrap_truncation_does():
    # single-step episodes: r = 1, next_value = 10, γ = 0.9, V = 0
    alive, term, trunc = _episodes([1, 1], ["term", "trunc"], 1)
    reward = B([[1.0, 1.0]])
    nv = B([10.0, 10.0])
    G = discounted_returns(reward, alive, term, trunc, nv, gamma=0.9)
    torch.testing.assert_close(G, B([[1.0, 10.0]]))  # 1 ; 1 + 0.9·10
    adv, _ = gae(reward, torch.zeros(1, 2), alive, term, trunc, nv, gamma=0.9, lam=0.95)
    torch.testing.assert_close(adv, B([[1.0, 10.0]]))
    # changing next_value moves only the truncated column
    adv2, _ = gae(reward, torch.zeros(1, 2), alive, term, trunc, B([-5.0, -5.0]), 0.9, 0.95)
    assert adv2[0, 0] == adv[0, 0] and adv2[0, 1] != adv[0, 1]


def test_dead_steps_are_zero_and_inside_steps_bootstrap_from_next_value_of_step():
    # 2-step truncated episode in a T=4 batch: A1 uses next_value, A0 uses value[1].
    alive, term, trunc = _episodes([2], ["trunc"], 4)
    reward = B([[0.0], [1.0], [7.0], [7.0]])
    value = B([[0.0], [0.0], [9.0], [9.0]])
    adv, ret = gae(reward, value, alive, term, trunc, B([1.0]), gamma=0.5, lam=1.0)
    # A1 = 1 + 0.5·1 − 0 = 1.5 ; A0 = 0 + 0.5·0 − 0 + 0.5·1.5 = 0.75
    torch.testing.assert_close(adv, B([[0.75], [1.5], [0.0], [0.0]]))
    G = discounted_returns(reward, alive, term, trunc, B([1.0]), gamma=0.5)
    torch.testing.assert_close(G, B([[0.75], [1.5], [0.0], [0.0]]))


def test_alive_after_episode_end_is_rejected():
    alive = torch.ones(2, 1, dtype=torch.bool)
    term = B([[True], [False]])
    with pytest.raises(ValueError):
        gae(
            torch.zeros(2, 1),
            torch.zeros(2, 1),
            alive,
            term,
            torch.zeros_like(term),
            torch.zeros(1),
            0.9,
            0.9,
        )


def test_gae_rank_assert():
    with pytest.raises(AssertionError):
        gae(
            torch.zeros(3),
            torch.zeros(3),
            torch.ones(3, dtype=torch.bool),
            torch.zeros(3, dtype=torch.bool),
            torch.zeros(3, dtype=torch.bool),
            torch.zeros(1),
            0.9,
            0.9,
        )


# ------------------------------------------------------------------------------------------
# Group-relative advantages
# ------------------------------------------------------------------------------------------


def test_leave_one_out_equals_scaled_centred_reward():
    g = torch.Generator().manual_seed(1)
    group_id = B([5, 2, 5, 2, 5, 2, 5])  # K=4 for id 5, K=3 for id 2, interleaved
    r = torch.randn(7, generator=g)
    adv = leave_one_out_advantages(r, group_id)
    for gid in (5, 2):
        sel = group_id == gid
        K = int(sel.sum())
        expected = K / (K - 1) * (r[sel] - r[sel].mean())
        torch.testing.assert_close(adv[sel], expected)
        # and the definition: R_k − mean of the others
        for k in torch.nonzero(sel).flatten():
            others = r[sel & (torch.arange(7) != k)]
            torch.testing.assert_close(adv[k], r[k] - others.mean())


def test_group_centered_is_scaled_leave_one_out_and_keeps_reward_scale():
    r = B([1.0, 0.0, 0.0, 1.0, 0.30, 0.31, 0.29, 0.30, 5.0])
    gid = B([0, 0, 0, 0, 1, 1, 1, 1, 2])
    adv = group_centered_advantages(r, gid)
    torch.testing.assert_close(adv[:4], B([0.5, -0.5, -0.5, 0.5]))
    torch.testing.assert_close(adv[:8], 3 / 4 * leave_one_out_advantages(r, gid)[:8])
    assert adv[8] == 0  # group of one
    # nearly equal returns: centred advantages stay ~0.01, std-normalised ones are blown up to ~1
    assert adv[4:8].abs().max() < 0.011 and group_normalized_advantages(r, gid)[4:8].abs().max() > 1.0


def test_group_normalized_hand_example():
    # group 0: [1, 0, 0, 1]  mean 0.5, population std 0.5  -> ±0.5/(0.5 + 1e-6)
    # group 1: [1, 0, 0, 0]  mean 0.25, std sqrt(0.1875) = 0.4330127
    #          -> 0.75/0.4330127 = 1.7320508 ; −0.25/0.4330127 = −0.5773503
    r = B([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    gid = B([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_normalized_advantages(r, gid)
    one = 0.5 / (0.5 + 1e-6)
    torch.testing.assert_close(
        adv, B([one, -one, -one, one, 1.7320508, -0.5773503, -0.5773503, -0.5773503]), rtol=1e-5, atol=1e-5
    )


def test_size_one_and_uniform_groups():
    r = B([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    gid = B([0, 0, 1, 1, 2, 2, 3])
    assert uniform_groups(r, gid).tolist() == [True, True, False, False, True, True, True]
    assert leave_one_out_advantages(B([3.0]), B([0])).tolist() == [0.0]
    assert group_normalized_advantages(B([3.0]), B([0])).tolist() == [0.0]
    assert leave_one_out_advantages(r, gid)[6] == 0 and group_normalized_advantages(r, gid)[6] == 0
    # uniform groups carry no signal
    assert (group_normalized_advantages(r, gid)[:2] == 0).all()
    torch.testing.assert_close(group_success_rate(r.bool(), gid), B([1.0, 1.0, 0.5, 0.5, 0.0, 0.0, 1.0]))


def test_broadcast_to_steps():
    alive, _, _ = _episodes([2, 1], ["term", "term"], 3)
    out = broadcast_to_steps(B([2.0, -1.0]), alive)
    torch.testing.assert_close(out, B([[2.0, -1.0], [2.0, 0.0], [0.0, 0.0]]))


# ------------------------------------------------------------------------------------------
# Log-prob levels
# ------------------------------------------------------------------------------------------


def test_reduce_log_prob_levels():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, 5, generator=g)  # (T, N, C, A)
    torch.testing.assert_close(reduce_log_prob(x, "token"), x)
    torch.testing.assert_close(reduce_log_prob(x, "action"), x.sum(-1))
    torch.testing.assert_close(reduce_log_prob(x, "chunk"), x.sum((-2, -1)))
    ones = torch.ones(3, 4, 5)  # (N, C, A)
    assert reduce_log_prob(ones, "action").shape == (3, 4) and (reduce_log_prob(ones, "action") == 5).all()
    assert reduce_log_prob(ones, "chunk").shape == (3,) and (reduce_log_prob(ones, "chunk") == 20).all()
    assert set(LOG_PROB_LEVELS) == {"token", "action", "chunk"}
    with pytest.raises(ValueError):
        reduce_log_prob(x, "sequence")
    with pytest.raises(AssertionError):
        reduce_log_prob(torch.zeros(2, 3), "chunk")


# ------------------------------------------------------------------------------------------
# PPO surrogate
# ------------------------------------------------------------------------------------------


def test_ppo_ratio_one_gives_minus_mean_advantage():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(4, 3, 2, generator=g)  # action level (T, N, C)
    adv = torch.randn(4, 3, generator=g)
    mask = torch.ones(4, 3, dtype=torch.bool)
    loss, m = ppo_clip_loss(logp, logp.clone(), adv, mask, *symmetric_bounds(0.2))
    torch.testing.assert_close(loss, -adv.mean())
    assert m["clip_frac"] == 0 and abs(float(m["approx_kl"])) < 1e-7
    assert float(m["ratio_mean"]) == pytest.approx(1.0) and float(m["ratio_max"]) == pytest.approx(1.0)


def test_ppo_clipping_hand_example():
    # chunk level (T=1, N=4), ε = 0.2; ratios [1.5, 0.5, 0.5, 1.5], A = [+1, −1, +1, −1]
    #   ρ=1.5, A=+1: min(1.5, 1.2)   = 1.2   clipped (no gradient)
    #   ρ=0.5, A=−1: min(−0.5, −0.8) = −0.8  clipped (no gradient)
    #   ρ=0.5, A=+1: min(0.5, 0.8)   = 0.5   unclipped, d/dlogp = ρA = 0.5
    #   ρ=1.5, A=−1: min(−1.5, −1.2) = −1.5  unclipped, d/dlogp = ρA = −1.5
    # loss = −(1.2 − 0.8 + 0.5 − 1.5)/4 = 0.15 ; clip_frac = 0.5
    # grad of loss = −ρA/4 on unclipped: [0, 0, −0.125, 0.375]
    # k3 = mean((ρ−1) − log ρ): 1.5 -> 0.0945349, 0.5 -> 0.1931472; mean = 0.1438410
    ratio = B([[1.5, 0.5, 0.5, 1.5]])
    logp_old = torch.zeros(1, 4)
    logp_new = ratio.log().clone().requires_grad_(True)
    adv = B([[1.0, -1.0, 1.0, -1.0]])
    loss, m = ppo_clip_loss(logp_new, logp_old, adv, torch.ones(1, 4, dtype=torch.bool), 0.2, 0.2)
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert float(m["clip_frac"]) == pytest.approx(0.5)
    assert float(m["approx_kl"]) == pytest.approx(0.1438410, abs=1e-6)
    assert float(m["ratio_max"]) == pytest.approx(1.5) and float(m["ratio_mean"]) == pytest.approx(1.0)
    loss.backward()
    torch.testing.assert_close(logp_new.grad, B([[0.0, 0.0, -0.125, 0.375]]))


def test_clip_bounds():
    low, high = loop_bounds(0.1)
    assert 1 - low == pytest.approx(1 / 1.1) and 1 + high == pytest.approx(1.1)
    assert symmetric_bounds(0.2) == (0.2, 0.2) and clip_higher_bounds(0.2, 0.28) == (0.2, 0.28)
    # LOOP: ρ=0.5 with A=−1 is clipped to 1/1.1 -> loss = 1/1.1 ; ρ=1.5, A=+1 -> 1.1
    loss, _ = ppo_clip_loss(B([[math.log(0.5)]]), B([[0.0]]), B([[-1.0]]), B([[True]]), low, high)
    assert float(loss) == pytest.approx(1 / 1.1)
    loss, _ = ppo_clip_loss(B([[math.log(1.5)]]), B([[0.0]]), B([[1.0]]), B([[True]]), low, high)
    assert float(loss) == pytest.approx(-1.1)
    # clip-higher lets ρ=1.25 through with A>0, symmetric 0.2 does not
    lp = B([[math.log(1.25)]])
    loss_hi, _ = ppo_clip_loss(lp, B([[0.0]]), B([[1.0]]), B([[True]]), *clip_higher_bounds(0.2, 0.28))
    loss_sym, _ = ppo_clip_loss(lp, B([[0.0]]), B([[1.0]]), B([[True]]), *symmetric_bounds(0.2))
    assert float(loss_hi) == pytest.approx(-1.25) and float(loss_sym) == pytest.approx(-1.2)


def test_ppo_masked_elements_do_not_change_loss():
    g = torch.Generator().manual_seed(4)
    T, N, C, A = 3, 2, 2, 3  # token level
    new = torch.randn(T, N, C, A, generator=g) * 0.1
    old = torch.randn(T, N, C, A, generator=g) * 0.1
    adv = torch.randn(T, N, generator=g)
    mask = torch.ones(T, N, dtype=torch.bool)
    base, base_m = ppo_clip_loss(new, old, adv, mask, 0.2, 0.2)
    # append a padded step full of garbage (ratio would overflow) and mask it out
    new_p = torch.cat([new, torch.full((1, N, C, A), 1e4)])
    old_p = torch.cat([old, torch.full((1, N, C, A), -1e4)])
    adv_p = torch.cat([adv, torch.full((1, N), 1e6)])
    mask_p = torch.cat([mask, torch.zeros(1, N, dtype=torch.bool)])
    padded, padded_m = ppo_clip_loss(new_p, old_p, adv_p, mask_p, 0.2, 0.2)
    torch.testing.assert_close(padded, base)
    for k in base_m:
        torch.testing.assert_close(padded_m[k], base_m[k])
    assert all(v.ndim == 0 and not v.requires_grad for v in padded_m.values())


def test_masked_mean_broadcasts_over_trailing_dims():
    x = B([[[1.0, 3.0], [5.0, 7.0]]])  # (1, 2, 2)
    mask = B([[True, False]])  # (1, 2)
    assert float(masked_mean(x, mask)) == 2.0
    assert float(masked_mean(x, torch.zeros(1, 2, dtype=torch.bool))) == 0.0
    assert float(masked_mean(x)) == 4.0


# ------------------------------------------------------------------------------------------
# Value loss, entropy, KL
# ------------------------------------------------------------------------------------------


def test_value_loss_clipped_and_unclipped_hand_example():
    # v_old = [1, 1], v_new = [1.5, 0.9], R = [2, 0], ε = 0.2; third element masked garbage
    #   elem0: (1.5−2)² = 0.25 ; clipped V = 1 + 0.2 = 1.2 -> (1.2−2)² = 0.64 ; max 0.64
    #   elem1: (0.9−0)² = 0.81 ; clipped V = 1 − 0.1 = 0.9 -> 0.81           ; max 0.81
    # clipped loss = 0.5·(0.64 + 0.81)/2 = 0.3625 ; unclipped = 0.5·(0.25 + 0.81)/2 = 0.265
    v_new = B([[1.5, 0.9, 1e3]])
    v_old = B([[1.0, 1.0, -1e3]])
    ret = B([[2.0, 0.0, 5.0]])
    mask = B([[True, True, False]])
    loss, m = value_loss(v_new, v_old, ret, mask, clip_eps=0.2)
    assert float(loss) == pytest.approx(0.3625)
    assert float(m["value_clip_frac"]) == pytest.approx(0.5)
    loss_u, _ = value_loss(v_new, v_old, ret, mask, clip_eps=None)
    assert float(loss_u) == pytest.approx(0.265)


def test_entropy_bonus_masked_mean():
    bonus, m = entropy_bonus(B([[1.0, 2.0], [3.0, 100.0]]), B([[True, True], [True, False]]))
    assert float(bonus) == pytest.approx(2.0) and float(m["entropy"]) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------
# TPO
# ------------------------------------------------------------------------------------------


def test_tpo_equals_log2_when_policy_is_reference():
    g = torch.Generator().manual_seed(6)
    lw, ll = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    loss, m = tpo_loss(
        lw,
        lw.clone(),
        torch.ones(4, 3, dtype=torch.bool),
        ll,
        ll.clone(),
        torch.ones(5, 3, dtype=torch.bool),
        beta=0.1,
    )
    assert float(loss) == pytest.approx(math.log(2.0))
    assert float(m["reward_margin"]) == 0.0 and float(m["accuracy"]) == 0.0


def test_tpo_hand_example_and_gradient_direction():
    # winner: Σ(π − ref) = 2, loser: Σ = −1 -> margin 3, β = 0.1
    # loss = −log σ(0.3) = log(1 + e^−0.3) = 0.5543552
    lw = B([[1.0], [1.0]]).requires_grad_(True)
    ll = B([[-1.0]]).requires_grad_(True)
    loss, m = tpo_loss(
        lw,
        torch.zeros(2, 1),
        torch.ones(2, 1, dtype=torch.bool),
        ll,
        torch.zeros(1, 1),
        torch.ones(1, 1, dtype=torch.bool),
        beta=0.1,
    )
    assert loss.item() == pytest.approx(0.5543552, abs=1e-6)
    assert float(m["accuracy"]) == 1.0 and float(m["reward_margin"]) == pytest.approx(0.3)
    loss.backward()
    assert (lw.grad < 0).all() and (ll.grad > 0).all()  # descent raises winner, lowers loser


def test_tpo_masked_padding_ignored():
    g = torch.Generator().manual_seed(7)
    lw, rw = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    ll, rl = torch.randn(2, 2, generator=g), torch.randn(2, 2, generator=g)
    base, _ = tpo_loss(
        lw, rw, torch.ones(3, 2, dtype=torch.bool), ll, rl, torch.ones(2, 2, dtype=torch.bool), 0.1
    )
    # pad the loser to length 4 with garbage steps that the mask hides
    ll_p = torch.cat([ll, torch.full((2, 2), 1e4)]).requires_grad_(True)
    rl_p = torch.cat([rl, torch.full((2, 2), -1e4)])
    ml_p = torch.cat([torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 2, dtype=torch.bool)])
    padded, _ = tpo_loss(lw, rw, torch.ones(3, 2, dtype=torch.bool), ll_p, rl_p, ml_p, 0.1)
    torch.testing.assert_close(padded, base)
    padded.backward()
    assert (ll_p.grad[2:] == 0).all()


# ------------------------------------------------------------------------------------------
# SFT losses
# ------------------------------------------------------------------------------------------


def test_sft_losses_hand_values():
    pred = B([[1.0, 2.0], [3.0, 4.0]])
    loss, _ = mse_loss(pred, torch.zeros(2, 2), mask=B([True, False]))
    assert float(loss) == pytest.approx(2.5)  # (1 + 4)/2
    logits = torch.zeros(2, 3, 8)  # uniform over 8 bins
    ids = B([[1, 2, -100], [0, 7, -100]])
    ce, m = token_cross_entropy(logits, ids, mask=ids >= 0)
    assert float(ce) == pytest.approx(math.log(8))
