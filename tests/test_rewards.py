"""Reward models: the sim_state channel, GRAPE's staged costs and decomposers, VLA-RL's RPRM."""

import logging
import math

import numpy as np
import pytest
import torch

from vlaforge.envs import make_vec_env
from vlaforge.envs.pointreach import SIM_STATE_NAMES as PR_NAMES
from vlaforge.policies import CheckpointError
from vlaforge.policies.tiny.model import TinyConfig
from vlaforge.rewards import (
    RPRM,
    LMDecomposer,
    ProgressData,
    RPRMShaper,
    RuleDecomposer,
    SimLayout,
    evaluate_rprm,
    find_milestones,
    grape_reward,
    load_rprm,
    parse_stages,
    path_length,
    progress_data_from_demos,
    progress_data_from_rollouts,
    progress_targets,
    rprm_rewards,
    save_rprm,
    self_log_likelihood,
    staged_cost,
    train_rprm,
    with_weights,
)
from vlaforge.rewards.expert import ExpertPolicy
from vlaforge.rewards.grape import GrapeScorer, point_stage
from vlaforge.rewards.rprm import progress_increments, rankdata, roc_auc, spearman
from vlaforge.rewards.simstate import contact_steps
from vlaforge.rollout.collect import collect
from vlaforge.types import Observation, Rollout

# an object-suite layout like Meta-World's, without importing Meta-World
OBJ_NAMES = ("ee_x", "ee_y", "ee_z", "gripper", "obj_x", "obj_y", "obj_z", "goal_x", "goal_y", "goal_z")


def hand_rollout(sim: np.ndarray, success, alive=None, log_prob=None, executed=None) -> Rollout:
    """A Rollout built by hand from sim (T, N, P); everything else is filler of the right shape."""
    sim = torch.as_tensor(sim, dtype=torch.float32)
    T, N, _ = sim.shape
    alive = torch.ones(T, N, dtype=torch.bool) if alive is None else torch.as_tensor(alive)
    lp = torch.zeros(T, N, 1, 2) if log_prob is None else torch.as_tensor(log_prob, dtype=torch.float32)
    C = lp.shape[2]
    z = torch.zeros(T, N)
    return Rollout(
        obs_images=torch.zeros(T, N, 1, 8, 8, 3, dtype=torch.uint8), obs_state=torch.zeros(T, N, 2),
        instructions=["x"] * N, taken={}, actions=torch.zeros(T, N, C, 2),
        executed=torch.full((T, N), C) if executed is None else torch.as_tensor(executed),
        log_prob=lp, value=z, next_value=torch.zeros(N), reward=z.clone(), alive=alive,
        terminated=torch.zeros(T, N, dtype=torch.bool), truncated=torch.zeros(T, N, dtype=torch.bool),
        success=torch.as_tensor(success, dtype=torch.bool), valid=torch.ones(N, dtype=torch.bool),
        task_id=torch.zeros(N, dtype=torch.long), seed=torch.zeros(N, dtype=torch.long),
        group_id=torch.zeros(N, dtype=torch.long), env_steps=alive.sum(0), sim_state=sim)


def pr_state(agent, goal=(0.5, 0.5), others=((-0.5, 0.0), (0.0, -0.5))):
    """One PointReach sim_state row: agent, goal, then the three targets (goal first)."""
    return [*agent, *goal, *goal, *others[0], *others[1]]


# -- sim_state channel ---------------------------------------------------------------------------
def test_pointreach_sim_state_through_vec_env_and_collect():
    venv = make_vec_env("pointreach", 4)
    obs = venv.reset([0, 0, 1, 1], [3, 3, 4, 4])
    assert venv.spec.sim_state_names == PR_NAMES and obs.sim_state.shape == (4, len(PR_NAMES))
    np.testing.assert_allclose(obs.sim_state[:, :2], obs.state)  # agent position = proprio
    t = obs.to_torch()
    assert t.sim_state.dtype == torch.float32 and t.index([1, 2]).sim_state.shape == (2, len(PR_NAMES))
    r, _ = collect(ExpertPolicy(venv, noise=0.0), venv, [0, 1, 2], [5, 6, 7])
    assert r.sim_state.shape == (r.num_steps, 3, len(PR_NAMES)) and bool(r.success.all())
    torch.testing.assert_close(r.sim_state[..., :2], r.obs_state)
    both = Rollout.cat([r, r.select(torch.tensor([2]))])
    assert both.sim_state.shape[1] == 4 and torch.equal(both.sim_state[:, 3], both.sim_state[:, 2])
    # the goal columns are the goal target's position: the expert ends next to it
    last = r.alive.sum(0) - 1
    end = r.sim_state[last, torch.arange(3)]
    assert float((end[:, :2] - end[:, 2:4]).norm(dim=-1).max()) < 0.12 + 0.1 * math.sqrt(2) + 1e-5  # one expert step (L-inf capped) away
    venv.close()


def test_sim_state_optional_in_hand_made_rollouts():
    r = hand_rollout(np.zeros((3, 2, 10)), [True, False])
    r.sim_state = None
    assert r.select(torch.tensor([1])).sim_state is None
    assert Rollout.cat([r, r]).sim_state is None
    o = Observation(np.zeros((2, 1, 8, 8, 3), np.uint8), np.zeros((2, 2), np.float32), ["a", "b"], np.zeros(2, np.int64))
    assert o.to_torch().sim_state is None and o.index([0]).sim_state is None


def test_subproc_vec_env_carries_sim_state():
    venv = make_vec_env("pointreach", 2, workers=1)
    try:
        obs = venv.reset([0, 1], [0, 0])
        st = venv.step(np.zeros((2, 2, 2), np.float32))
        assert obs.sim_state.shape == st.obs.sim_state.shape == (2, len(PR_NAMES))
    finally:
        venv.close()


# -- GRAPE ---------------------------------------------------------------------------------------
def test_layout_points_and_path_length():
    lay = SimLayout(PR_NAMES)
    assert lay.points == ["ee", "goal", "target0", "target1", "target2"]
    sim = torch.tensor([[pr_state((0, 0))], [pr_state((0.3, 0.4))], [pr_state((0.3, 0.0))]])  # (3, 1, 10)
    alive = torch.tensor([[True], [True], [False]])
    assert torch.allclose(path_length(sim, alive, PR_NAMES), torch.tensor([0.5]))  # dead step not counted


def test_staged_cost_progress_through_two_stages():
    stage_names = OBJ_NAMES
    lay = SimLayout(stage_names)
    stages = [point_stage("reach", lay, "ee", "obj", 0.05), point_stage("push", lay, "obj", "goal", 0.05)]

    def row(ee, obj, goal=(1.0, 0.0, 0.0)):
        return [*ee, 1.0, *obj, *goal]
    # episode 0: reaches the object at t=1, pushes it to 0.3 from the goal (closest), then back to 0.5
    # episode 1: never reaches the object (closest 0.2 away, ends 0.4 away)
    e0 = [row((0, 0, 0), (0.2, 0, 0)), row((0.2, 0, 0), (0.2, 0, 0)), row((0.7, 0, 0), (0.7, 0, 0)),
          row((0.5, 0, 0), (0.5, 0, 0))]
    e1 = [row((0, 0, 0), (0.4, 0, 0)), row((0.2, 0, 0), (0.4, 0, 0)), row((0.1, 0, 0), (0.4, 0, 0)),
          row((0.0, 0, 0), (0.4, 0, 0))]
    r = hand_rollout(np.stack([e0, e1], 1), [False, False])
    cost, done = staged_cost(r, stages)
    assert done.tolist() == [1, 0]
    # ep 0: stage 2 current from t=2 on, least cost 0.3 -> 10*(0.3-0.05); ep 1: stage 1 least 0.2 -> 10*0.15,
    # stage 2 never reached: its cost at the last state (0.6) -> 10*0.55
    assert cost.tolist() == pytest.approx([2.5, 1.5 + 5.5], abs=1e-5)
    r.success[:] = True  # success completes every stage
    assert staged_cost(r, stages)[0].tolist() == pytest.approx([0.0, 0.0])


def test_cost_weights_change_the_preferred_trajectory():
    """Straight through a distractor disc (short, one contact) vs a detour around it (long, none)."""
    straight = [pr_state((x, 0.0), goal=(0.5, 0.0), others=((0.0, 0.0), (0.0, -0.8))) for x in (-0.5, -0.25, 0.0, 0.25, 0.5)]
    detour = [pr_state(p, goal=(0.5, 0.0), others=((0.0, 0.0), (0.0, -0.8)))
              for p in ((-0.5, 0.0), (-0.3, 0.4), (0.0, 0.5), (0.3, 0.4), (0.5, 0.0))]
    r = hand_rollout(np.stack([straight, detour], 1), [True, True])
    assert contact_steps(r.sim_state, r.alive, PR_NAMES).sum(0).tolist() == [1, 0]
    base = RuleDecomposer(PR_NAMES).decompose("red-0", "reach the red target")
    safe = with_weights(base, {"collision": 1.0, "path": 0.0})
    short = with_weights(base, {"collision": 0.0, "path": 1.0})
    c_safe, _ = staged_cost(r, safe)
    c_short, _ = staged_cost(r, short)
    assert c_safe[1] < c_safe[0]  # the safe weighting prefers the detour
    assert c_short[0] < c_short[1]  # the efficient weighting prefers the straight path
    ones = torch.ones(2)
    pref_safe = grape_reward(torch.zeros(2), torch.exp(-c_safe), ones.bool()).argmax()
    pref_short = grape_reward(torch.zeros(2), torch.exp(-c_short), ones.bool()).argmax()
    assert (int(pref_safe), int(pref_short)) == (1, 0)


def test_self_log_likelihood_floor_and_chunk_mask():
    # T=2, N=1, C=2, A=1: step 0 executes both entries (log-probs -0.1, -0.2), step 1 only the first
    lp = torch.tensor([[[[-0.1], [-0.2]]], [[[-5.0], [-7.0]]]])
    r = hand_rollout(np.zeros((2, 1, 10)), [False], log_prob=lp, executed=torch.tensor([[2], [1]]))
    got = self_log_likelihood(r, floor=0.05)
    assert got.item() == pytest.approx(-0.3 + math.log(0.05))  # -5 floored at log 0.05; -7 not executed
    assert self_log_likelihood(r, floor=1e-9).item() == pytest.approx(-5.3)


def test_grape_reward_formula():
    out = grape_reward(torch.tensor([-10.0, -2.0]), torch.tensor([0.5, 1.0]), torch.tensor([True, False]), (0.01, 1.0, 5.0))
    assert out.tolist() == pytest.approx([-0.1 + 0.5 + 5.0, -0.02 + 1.0])


def test_grape_scorer_ranks_success_above_failure_within_group():
    good = [pr_state((x, 0.0), goal=(0.5, 0.0)) for x in (-0.5, 0.0, 0.45)]
    bad = [pr_state((x, 0.0), goal=(0.5, 0.0)) for x in (-0.5, -0.6, -0.7)]
    r = hand_rollout(np.stack([good, bad, good], 1), [True, False, False])
    scorer = GrapeScorer(RuleDecomposer(PR_NAMES), ["red-0"], ["reach the red target"], PR_NAMES)
    s = scorer.score(r)
    assert s[0] > s[2] > s[1]  # success first; among failures, the one that got closer
    m = scorer.metrics(r)
    assert set(m) >= {"grape/r_self", "grape/r_ext", "grape/path_length", "grape/contacts"}


def test_rule_decomposer_coverage():
    mw = RuleDecomposer(OBJ_NAMES)
    for t, k in [("reach-v3", 1), ("push-v3", 2), ("pick-place-v3", 3), ("drawer-open-v3", 2), ("drawer-close-v3", 2),
                 ("button-press-v3", 2), ("button-press-topdown-v3", 2), ("button-press-topdown-wall-v3", 2),
                 ("button-press-wall-v3", 2), ("push-wall-v3", 2), ("pick-place-wall-v3", 3)]:
        assert mw.covers(t) and len(mw.decompose(t, "")) == k, t
    assert not mw.covers("door-open-v3")
    with pytest.raises(ValueError, match="LMDecomposer"):
        mw.decompose("door-open-v3", "open the door")
    assert len(RuleDecomposer(PR_NAMES).decompose("blue-1", "")) == 1


# -- LM decomposer -------------------------------------------------------------------------------
def test_parse_stages_defensive():
    pts = ["ee", "obj", "goal"]
    ok = 'Sure! [{"name": "reach", "move": "ee", "to": "obj", "threshold": 0.04}, {"move": "obj", "to": "goal"}] done'
    items, why = parse_stages(ok, pts)
    assert why is None and [(i["move"], i["to"], i["threshold"]) for i in items] == [("ee", "obj", 0.04), ("obj", "goal", 0.05)]
    py = "[{'name': 'a', 'move': 'ee', 'to': 'goal', 'threshold': '0.1'}]"  # python literal, string number
    assert parse_stages(py, pts)[0][0]["threshold"] == 0.1
    mixed = '[{"move": "ee", "to": "door"}, {"move": "ee", "to": "goal", "threshold": -1}, {"move": "ee", "to": "goal"}]'
    assert [(i["move"], i["to"]) for i in parse_stages(mixed, pts)[0]] == [("ee", "goal")]
    for bad in ["", "no list here", "[1, 2]", "[{\"move\": \"ee\", \"to\": \"ee\"}]", "[{" * 50, None,
                '[{"move": "ee", "to": "goal", "threshold": "nan"}]']:
        items, why = parse_stages(bad, pts)
        assert items == [] and why


def _tiny_lm():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    words = "[ ] { } , : \" stage move to ee obj goal threshold 0.05 reach push the puck robot task".split()
    vocab = {w: i for i, w in enumerate(["[UNK]", "[EOS]"] + words)}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", eos_token="[EOS]")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=16, n_layer=1, n_head=2,
                                  eos_token_id=1, bos_token_id=1)
    return transformers.GPT2LMHeadModel(cfg).eval(), tok


def test_lm_decomposer_random_model_falls_back(caplog, tmp_path):
    model, tok = _tiny_lm()
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    dec = LMDecomposer(str(tmp_path / "lm"), names=OBJ_NAMES, max_new_tokens=12)  # loaded from a local path
    with pytest.raises(ValueError, match="cannot load"):
        LMDecomposer(str(tmp_path / "missing"), names=OBJ_NAMES)
    with caplog.at_level(logging.WARNING):
        stages = dec.decompose("push-v3", "push the puck to the goal")
    assert [s.name for s in stages] == [s.name for s in RuleDecomposer(OBJ_NAMES).decompose("push-v3")]
    assert "RuleDecomposer" in dec.last_reason and "LMDecomposer" in caplog.text
    stages = dec.decompose("door-open-v3", "open the door")  # not covered by the rules: one reach-goal stage
    assert len(stages) == 1 and "reach the goal" in dec.last_reason


def test_lm_decomposer_uses_valid_answers_and_survives_errors():
    answer = '[{"name": "to the puck", "move": "ee", "to": "obj", "threshold": 0.03}, ' \
             '{"name": "puck to goal", "move": "obj", "to": "goal", "threshold": 0.06}]'
    prompts = []
    dec = LMDecomposer(names=OBJ_NAMES, generate_fn=lambda p: prompts.append(p) or answer)
    stages = dec.decompose("door-open-v3", "push the puck to the goal")
    assert [(s.name, s.threshold) for s in stages] == [("to the puck", 0.03), ("puck to goal", 0.06)]
    assert dec.last_reason is None and '"obj"' in prompts[0] and "push the puck" in prompts[0]

    def boom(p):
        raise RuntimeError("out of memory")
    dec = LMDecomposer(names=OBJ_NAMES, generate_fn=boom)
    assert len(dec.decompose("reach-v3", "reach")) == 1 and "generation failed" in dec.last_reason
    with pytest.raises(ValueError, match="model_path"):
        LMDecomposer(names=OBJ_NAMES)


# -- RPRM ----------------------------------------------------------------------------------------
def test_find_milestones_on_hand_made_trajectory():
    # move 0..3 (x += 0.1), pause t=4..6, close the gripper at t=7, move t=7..10, pause t=11..13
    x = [0.0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8]
    ee = np.stack([x, np.zeros(15), np.zeros(15)], 1)
    g = np.array([1.0] * 7 + [0.2] * 8)
    assert find_milestones(ee, g, speed_eps=0.01, min_pause=2, min_gap=2) == [4, 7, 11]
    assert find_milestones(ee, None, speed_eps=0.01, min_pause=2, min_gap=2) == [4, 11]
    assert find_milestones(ee, g, min_gap=4) == [4, 11]  # 7 merged into 4
    assert find_milestones(np.zeros((6, 3)), None) == []  # never moved: no pause milestones
    # a one-step blip of the gripper is not a change (must persist min_pause decisions)
    assert find_milestones(np.zeros((6, 3)), np.array([1, 1, 0, 1, 1, 1.0]), min_pause=2) == []


def test_progress_targets_rules():
    s = progress_targets(9, [2, 6], True)
    assert s[[0, 2, 6, 8]].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1]) and np.all(np.diff(s) > 0)
    f = progress_targets(9, [2, 6], False, expected=4)
    assert f[[0, 2, 6, 8]].tolist() == pytest.approx([0, 0.25, 0.5, 0.5])  # flat after the last milestone
    f2 = progress_targets(9, [1, 3, 5, 7], False, expected=3)
    assert f2.max() == pytest.approx(2 / 3)  # a failure never reaches 1
    assert progress_targets(5, [], False).tolist() == [0] * 5
    assert progress_targets(5, [4], True).tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])


def test_rank_maths_on_hand_values():
    assert rankdata([3, 1, 2, 2]).tolist() == [4, 1, 2.5, 2.5]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.5, 0.3, 0.5, 0.1], [1, 1, 0, 0]) == pytest.approx(0.625)  # pairs: tie 1/2, 1, 0, 1
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_progress_data_from_demos():
    from vlaforge.data.demos import DemoData

    # two PointReach demo episodes (proprio = agent xy): one moves then pauses, one keeps moving
    xs = [np.array([[0, 0], [0.1, 0], [0.2, 0], [0.2, 0], [0.2, 0], [0.2, 0], [0.3, 0]]), np.cumsum(np.full((4, 2), 0.1), 0)]
    state = np.concatenate(xs).astype(np.float32)
    M = len(state)
    ep = np.repeat([0, 1], [7, 4])
    demos = DemoData(np.zeros((M, 1, 8, 8, 3), np.uint8), state, np.zeros((M, 2), np.float32), ["t"] * M, ["go"] * M,
                     ep, np.concatenate([np.arange(7), np.arange(4)]), np.repeat([7, 11], [7, 4]), {"suite": "pointreach"})
    data = progress_data_from_demos(demos, speed_eps=0.01, min_pause=2)
    assert data.target[:7].tolist() == pytest.approx([0, 0.25, 0.5, 0.625, 0.75, 0.875, 1.0])  # milestone at 2
    assert data.target[7:].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])
    demos.info["suite"] = "kitchen"
    with pytest.raises(ValueError, match="progress_data_from_rollouts"):
        progress_data_from_demos(demos)


def test_progress_increments():
    phi = torch.tensor([[0.1, 0.0], [0.4, 0.2], [0.5, 0.9]])
    alive = torch.tensor([[True, True], [True, True], [True, False]])
    r = progress_increments(phi, alive)
    torch.testing.assert_close(r, torch.tensor([[0.3, 0.2], [0.1, 0.0], [0.0, 0.0]]))


def _tiny_rprm():
    torch.manual_seed(0)
    cfg = TinyConfig(state_dim=2, action_dim=1, chunk_size=1, image_size=16, dim=16, layers=1, heads=2,
                     head_hidden=8, value_head=False)
    return RPRM(cfg, hidden=16)


def test_rprm_training_loss_falls_and_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    M = 64
    target = rng.uniform(0, 1, M).astype(np.float32)
    images = np.zeros((M, 1, 16, 16, 3), np.uint8)
    for i, p in enumerate(target):  # a bar whose length is the progress
        images[i, 0, 6:10, : max(1, int(p * 16))] = 255
    data = ProgressData(images, np.zeros((M, 2), np.float32), ["lift it"] * M, target, np.arange(M), np.ones(M, bool))
    model = _tiny_rprm()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 50k-parameter model: one thread is faster than two on a busy machine
    try:
        out = train_rprm(model, data, steps=30, batch=16, lr=3e-3)
    finally:
        torch.set_num_threads(threads)
    assert out["loss_last"] < out["loss_first"] - 0.02
    pred = model.predict(images, data.state, data.instructions)
    assert spearman(pred.numpy(), target) > 0.5
    save_rprm(model, tmp_path / "rprm")
    again = load_rprm(tmp_path / "rprm")
    torch.testing.assert_close(again.predict(images[:8], data.state[:8], data.instructions[:8]), pred[:8])
    (tmp_path / "rprm" / "model.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_rprm(tmp_path / "rprm")
    with pytest.raises(CheckpointError, match="no RPRM"):
        load_rprm(tmp_path / "nothing")


def test_rprm_on_collected_pointreach_rollouts():
    venv = make_vec_env("pointreach", 6, image_size=16)
    # noise-free expert succeeds; a very noisy one mostly fails
    r_ok, _ = collect(ExpertPolicy(venv, 0.0), venv, [0] * 3 + [1] * 3, list(range(6)))
    r_bad, _ = collect(ExpertPolicy(venv, 3.0, seed=1), venv, [0] * 3 + [1] * 3, list(range(6)))
    venv.close()
    data = progress_data_from_rollouts([r_ok, r_bad], PR_NAMES, speed_eps=0.02)
    assert len(data) == int(r_ok.alive.sum() + r_bad.alive.sum()) and data.target.max() == pytest.approx(1.0)
    assert data.target[~data.success].max() < 1.0
    model = _tiny_rprm()
    dense = rprm_rewards(model, r_ok)
    assert dense.shape == r_ok.reward.shape and bool((dense[~r_ok.alive] == 0).all())
    before = r_ok.reward.clone()
    info = RPRMShaper(model, weight=0.5).shape_rewards(r_ok)
    torch.testing.assert_close(r_ok.reward, before + 0.5 * dense)
    assert info["rprm/dense_return"] == pytest.approx(float(dense.sum(0).mean()), abs=1e-6)
    m = evaluate_rprm(model, [r_ok, r_bad])
    assert m["episodes"] == 12 and m["successes"] == int(r_ok.success.sum() + r_bad.success.sum())
    assert set(m) >= {"spearman", "auc", "auc_max"}


def test_rule_stages_on_metaworld_and_kitchen_layouts():
    """The rules resolve against the suites' real sim_state names (Meta-World 39-D, Kitchen 35-D)."""
    pytest.importorskip("metaworld")
    from vlaforge.envs.metaworld import SIM_STATE_NAMES as MW

    dec = RuleDecomposer(MW)
    lay = SimLayout(MW)
    assert len(MW) == 39 and lay.point("ee") == (0, 1, 2) and lay.point("obj") == (4, 5, 6)
    assert lay.point("goal") == (36, 37, 38) and lay.point("prev_ee") == (18, 19, 20)
    # a pick-place episode: hand to the puck, lift it 5 cm, carry it to the goal
    sim = np.zeros((4, 1, 39), np.float32)
    sim[:, 0, 36:39] = (0.1, 0.8, 0.2)
    sim[:, 0, 4:7] = [(0.0, 0.6, 0.02), (0.0, 0.6, 0.02), (0.0, 0.6, 0.07), (0.1, 0.79, 0.2)]
    sim[:, 0, 0:3] = [(0.0, 0.4, 0.2), (0.0, 0.6, 0.05), (0.0, 0.6, 0.1), (0.1, 0.79, 0.23)]
    sim[1:, 0, 18:21] = sim[:-1, 0, 0:3]  # previous hand position
    sim[1:, 0, 22:25] = sim[:-1, 0, 4:7]
    cost, done = staged_cost(hand_rollout(sim, [False]), dec.decompose("pick-place-v3", ""))
    # all three stages done; one contact flagged (the hand arrives at the puck 15 cm in one step) x beta 0.5
    assert done.tolist() == [3] and cost.item() == pytest.approx(0.5)
    pytest.importorskip("gymnasium_robotics")
    from vlaforge.envs.kitchen import SIM_STATE_NAMES as KN

    (stage,) = RuleDecomposer(KN).decompose("microwave", "open the microwave door")
    ks = np.zeros((2, 1, len(KN)), np.float32)
    ks[:, 0, KN.index("task_err")] = (0.8, 0.2)
    assert staged_cost(hand_rollout(ks, [False]), [stage])[1].tolist() == [1]
