"""Training-time privileged state: the asymmetric critic, the perception readout, demos with sim_state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlaforge.envs import make_vec_env
from vlaforge.policies import build_policy, load_policy, save_policy
from vlaforge.policies.privileged import aux_regression_loss, perception_targets
from vlaforge.types import Observation


def _obs(n=3, p=10, seed=0, s=2):
    g = torch.Generator().manual_seed(seed)
    return Observation(torch.randint(0, 255, (n, 1, 64, 64, 3), dtype=torch.uint8, generator=g),
                       torch.randn(n, s, generator=g), ["reach the red target"] * n, torch.zeros(n, dtype=torch.long),
                       torch.randn(n, p, generator=g))


def test_perception_targets_pick_object_and_goal_positions():
    from vlaforge.envs.pointreach import SIM_STATE_NAMES as PR

    mw = ("ee_x", "ee_y", "ee_z", "gripper", "obj_x", "obj_y", "obj_z", "obj_qw", "obj1_x", "obj1_y", "obj1_z",
          "prev_obj_x", "prev_ee_x", "goal_x", "goal_y", "goal_z")
    assert [mw[i] for i in perception_targets(mw)] == ["obj_x", "obj_y", "obj_z", "obj1_x", "obj1_y", "obj1_z",
                                                       "goal_x", "goal_y", "goal_z"]
    picked = [PR[i] for i in perception_targets(PR)]
    assert picked[:2] == ["goal_x", "goal_y"] and all(n.startswith(("goal", "target")) for n in picked)
    assert "ee_x" not in picked


def test_aux_regression_loss_hand_values():
    mu, sd = torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.5])
    target = torch.tensor([[3.0, 0.5]])  # standardised: [1, 1]
    loss, m = aux_regression_loss(torch.tensor([[0.0, 1.0]]), target, mu, sd)
    assert float(loss) == pytest.approx(0.5)  # ((0-1)^2 + 0) / 2
    assert float(m["aux/abs_err"]) == pytest.approx(1.0)  # |1-3| and |0.5-0.5| -> mean 1


def test_privileged_critic_reads_sim_state_and_the_actor_never_does():
    torch.manual_seed(0)
    pol = build_policy(critic="privileged", sim_state_dim=10)
    a, b = _obs(seed=1), _obs(seed=1)
    b.sim_state = b.sim_state + 5.0  # only the privileged channel differs
    oa, ob = pol.act(a, deterministic=True), pol.act(b, deterministic=True)
    assert torch.equal(oa.actions, ob.actions) and torch.equal(oa.log_prob, ob.log_prob)
    assert not torch.allclose(oa.value, ob.value)
    lpa, _, va = pol.evaluate(a, oa.taken)
    lpb, _, vb = pol.evaluate(b, oa.taken)
    assert torch.equal(lpa, lpb) and not torch.allclose(va, vb)
    assert torch.allclose(va, oa.value) and torch.allclose(pol.value(a), oa.value)
    # the value gradient reaches no actor parameter: the critic is a separate network on sim_state + proprio
    pol.value(a).sum().backward()
    touched = {n for n, p in pol.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched and all(n.startswith("value_net.") for n in touched)
    with pytest.raises(ValueError, match="sim_state"):
        pol.act(Observation(a.images, a.state, a.instructions, a.task_ids, None))


def test_use_privileged_critic_on_a_loaded_policy_round_trips(tmp_path):
    torch.manual_seed(0)
    pol = build_policy()
    actions = pol.act(_obs(), deterministic=True).actions
    pol.use_privileged_critic(10)
    assert pol.cfg.critic == "privileged" and pol.cfg.sim_state_dim == 10
    assert torch.equal(pol.act(_obs(), deterministic=True).actions, actions)  # the actor is untouched
    save_policy(pol, tmp_path / "p")
    back = load_policy(tmp_path / "p")
    assert torch.allclose(back.value(_obs()), pol.value(_obs()))


def test_readout_loss_trains_the_encoder_and_sft_lowers_it(tmp_path):
    from vlaforge.algos.sft import SFTConfig, train_sft
    from vlaforge.data.demos import collect_demos, load_demos

    venv = make_vec_env("pointreach", 8)
    collect_demos(venv, tmp_path / "d", [venv.spec.tasks[0].name], 8)
    venv.close()
    demos = load_demos(tmp_path / "d")
    assert demos.sim_state is not None and demos.sim_state.shape == (len(demos), len(venv.spec.sim_state_names))
    assert demos.sim_state_names == list(venv.spec.sim_state_names)
    idx = perception_targets(demos.sim_state_names)
    torch.manual_seed(0)
    pol = build_policy(state_dim=demos.state.shape[1], action_dim=demos.actions.shape[1], aux_index=idx,
                       sim_state_dim=demos.sim_state.shape[1], aux_weight=1.0)
    task_index = {t.name: i for i, t in enumerate(venv.spec.tasks)}
    train_sft(pol, demos, SFTConfig(steps=1, batch_size=8), task_index)  # sets the readout's standardisation
    assert torch.allclose(pol.aux_mu, torch.from_numpy(demos.sim_state[:, idx].mean(0)))
    assert torch.allclose(pol.aux_sd, torch.from_numpy(demos.sim_state[:, idx].std(0)))
    # the readout's loss alone moves the CNN (it shapes the encoder, not just a probe), and fits a fixed batch
    from vlaforge.algos.sft import DemoSampler

    obs, _, _ = DemoSampler(demos, pol.chunk_size, task_index).batch(8)
    opt = torch.optim.Adam(pol.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = pol._aux_loss(pol.features(obs), obs)[0]
        loss.backward()
        assert pol.conv1.weight.grad is not None and pol.conv1.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.4 * losses[0]


def test_readout_needs_sim_state_in_demos(tmp_path):
    from vlaforge.algos.sft import SFTConfig, train_sft
    from vlaforge.data.demos import collect_demos, load_demos

    venv = make_vec_env("pointreach", 4)
    collect_demos(venv, tmp_path / "d", [venv.spec.tasks[0].name], 4)
    venv.close()
    demos = load_demos(tmp_path / "d")
    demos.sim_state = None  # as recorded by an older version
    pol = build_policy(aux_index=[2, 3], sim_state_dim=10)
    with pytest.raises(ValueError, match="recorded no sim_state"):
        train_sft(pol, demos, SFTConfig(steps=1), {t.name: i for i, t in enumerate(venv.spec.tasks)})


def test_metaworld_wrist_camera_adds_a_view():
    pytest.importorskip("metaworld")
    from vlaforge.envs.base import check_env

    venv = make_vec_env("metaworld", 2, tasks="reach-v3", wrist=1, max_steps=8)
    try:
        assert venv.spec.image_shape[0] == 2 and venv.spec.cameras == ("corner", "gripperPOV")
        check_env(venv)
        obs = venv.reset(np.zeros(2, np.int64), np.array([1, 2]))
        assert obs.images.shape == (2, 2, 64, 64, 3)
        assert not np.array_equal(obs.images[:, 0], obs.images[:, 1])  # two different cameras
    finally:
        venv.close()


def test_ppo_with_privileged_critic_and_readout_through_train(tmp_path):
    from vlaforge.policies.privileged import PrivilegedCritic
    from vlaforge.train.loop import TrainConfig, train

    spec = make_vec_env("pointreach", 1).spec
    idx = perception_targets(spec.sim_state_names)
    torch.manual_seed(0)
    init = build_policy(state_dim=spec.state_dim, action_dim=spec.action_dim, aux_index=idx,
                        sim_state_dim=len(spec.sim_state_names))
    save_policy(init, tmp_path / "init")
    cfg = TrainConfig(algo="ppo", init=str(tmp_path / "init"), out=str(tmp_path / "run"), iterations=2, groups=4,
                      num_envs=4, critic="privileged", eval_every=0, progress=False, tensorboard=False, threads=1,
                      max_steps=12)
    cfg.ppo.critic_warmup, cfg.ppo.readout_coef, cfg.ppo.minibatch_size = 1, 1.0, 32
    train(cfg)
    lines = [__import__("json").loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("rollout/value_explained_variance" in m for m in lines)
    assert "train/aux/mse" in lines[-1] and "train/aux/mse" not in lines[0]  # the readout trains after the warm-up
    final = load_policy(tmp_path / "run" / "final")
    assert final.cfg.critic == "privileged" and isinstance(final.value_net, PrivilegedCritic)
    assert not torch.equal(final.conv1.weight, init.conv1.weight)


def test_readout_coef_needs_a_readout(tmp_path):
    from vlaforge.train.loop import TrainConfig, train
    from vlaforge.validate import UsageError

    cfg = TrainConfig(algo="ppo", out=str(tmp_path / "run"), iterations=1, groups=2, num_envs=2, eval_every=0,
                      progress=False, tensorboard=False, threads=1)
    cfg.ppo.readout_coef = 1.0
    with pytest.raises(UsageError, match="readout"):
        train(cfg)
