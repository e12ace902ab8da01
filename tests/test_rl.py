"""RL: algorithm smoke runs, distinctive logic, a learning test, full-state resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from vlaforge.algos import ALGOS, get_algo
from vlaforge.algos.tpo import make_pairs
from vlaforge.envs import make_vec_env
from vlaforge.policies import CheckpointError, build_policy
from vlaforge.rollout.collect import collect
from vlaforge.rollout.sampling import TaskSampler, hard_first_weights, near50_weights, need_weights
from vlaforge.train.checkpoint import load_checkpoint
from vlaforge.train.loop import TrainConfig, train

PRIV = {"radius": 0.2, "privileged": 1.0}


def _rollout(policy, K=4, groups=3, seed=0):
    torch.manual_seed(seed)
    venv = make_vec_env("pointreach", 12, radius=0.3)
    tids = np.repeat(np.arange(groups), K)
    seeds = np.repeat(np.arange(groups) + 100, K)
    r, stats = collect(policy, venv, tids, seeds)
    return r, stats


def test_collect_rollout_shapes_and_groups():
    p = build_policy(head="gaussian", chunk_size=4)
    r, stats = _rollout(p)
    T, N = r.reward.shape
    assert N == 12 and r.obs_images.shape[:2] == (T, N) and r.log_prob.shape == (T, N, 4, 2)
    assert r.group_id.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # grouped rollouts start from the identical observation
    assert torch.equal(r.obs_images[0, 0], r.obs_images[0, 3]) and not torch.equal(r.obs_images[0, 0], r.obs_images[0, 4])
    # alive is a prefix; rewards only on alive steps; env steps add up
    assert ((r.alive[1:].int() - r.alive[:-1].int()) <= 0).all()
    assert (r.reward[~r.alive] == 0).all()
    assert int(r.executed.sum()) == int(r.env_steps.sum()) == stats.env_steps


@pytest.mark.parametrize("algo", sorted(a for a in ALGOS if ALGOS[a].init_state is None))  # off-policy: test_offpolicy
@pytest.mark.parametrize("head", ["gaussian", "tokens"])
def test_algorithm_update_moves_parameters(algo, head):
    torch.manual_seed(0)
    p = build_policy(head=head)
    r, _ = _rollout(p, K=4, groups=3)
    r.success[:] = torch.tensor([True, False] * 6)  # make every group mixed so every method has signal
    r.reward[:] = 0
    last = r.alive.sum(0) - 1
    r.reward[last, torch.arange(12)] = r.success.float()
    a = get_algo(algo)
    cfg = a.config()
    if hasattr(cfg, "critic_warmup"):
        cfg.critic_warmup = 0
    before = [x.detach().clone() for x in p.parameters()]
    batch, _ = a.prepare(r, cfg)
    opt = torch.optim.AdamW(p.parameters(), lr=1e-3)
    m = a.update(p, opt, batch, cfg, iteration=0, gen=torch.Generator().manual_seed(0))
    assert m["train/optimizer_steps"] > 0
    assert all(np.isfinite(v) for v in m.values())
    moved = sum(not torch.equal(b, x) for b, x in zip(before, p.parameters()))
    assert moved > 0


def test_nonfinite_loss_skips_optimizer_step():
    torch.manual_seed(0)
    p = build_policy()
    r, _ = _rollout(p)
    a = get_algo("ppo")
    cfg = a.config(critic_warmup=0)
    batch, _ = a.prepare(r, cfg)
    batch.adv[:] = float("nan")
    before = [x.detach().clone() for x in p.parameters()]
    opt = torch.optim.AdamW(p.parameters(), lr=1e-3)
    m = a.update(p, opt, batch, cfg, 0)
    assert m["train/optimizer_steps"] == 0 and m["train/skipped_nonfinite"] > 0
    assert all(torch.equal(b, x) for b, x in zip(before, p.parameters()))
    assert not opt.state  # AdamW never stepped (no moment estimates created)


def test_kl_guard_stops_update():
    """A guard no step can satisfy: the first step is shrunk, then undone (parameters and AdamW's state), and the
    update ends there."""
    torch.manual_seed(0)
    p = build_policy()
    r, _ = _rollout(p)
    a = get_algo("ppo")
    cfg = a.config(critic_warmup=0, kl_guard=1e-9, epochs=3, minibatch_size=8)
    batch, _ = a.prepare(r, cfg)
    before = [x.detach().clone() for x in p.parameters()]
    opt = torch.optim.AdamW(p.parameters(), lr=1e-2)
    m = a.update(p, opt, batch, cfg, 0)
    assert m["train/skipped_kl_guard"] == 1 and m["train/optimizer_steps"] == 0
    assert m["train/kl_backtracks"] == cfg.kl_backtracks
    assert all(torch.equal(b, x) for b, x in zip(before, p.parameters()))
    assert not opt.state


class _Quadratic(torch.nn.Module):
    """One parameter θ (starts at 0); the loss's gradient is −1 whatever θ, and its ``approx_kl`` metric is θ²: the
    KL after a step is known in advance."""

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(()))

    def loss(self, part):
        return -self.theta * 1.0, {"approx_kl": self.theta.detach() ** 2}


class _Items:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def index(self, idx):
        return _Items(len(idx))


def _guarded_step(kl_guard, backtracks, opt_cls=torch.optim.SGD, warm=False):
    from vlaforge.algos.common import StepSettings, optimize

    q = _Quadratic()
    opt = opt_cls(q.parameters(), lr=1.0)
    if warm:  # an optimizer that has stepped before: its state must survive an undone step unchanged
        q.theta.grad = torch.tensor(0.5)
        opt.step()
        with torch.no_grad():
            q.theta.zero_()
    state = {k: v.clone() for k, v in opt.state[q.theta].items()} if warm else None
    s = StepSettings(epochs=1, minibatch_size=4, grad_clip=10.0, kl_guard=kl_guard, kl_backtracks=backtracks)
    m = optimize(q, opt, _Items(4), q.loss, s)
    return q, opt, m, state


def test_kl_guard_undoes_a_step_that_would_exceed_it():
    """The guard is checked before a step is kept: SGD at lr 1 would move θ from 0 to 1 (KL 1 > 0.1). With no
    backtracking the step is undone (θ stays 0) and the update ends; the pre-step KL (0) never saw it coming, so
    checking only the next minibatch's KL would have kept the step."""
    q, opt, m, _ = _guarded_step(0.1, 0)
    assert float(q.theta) == 0.0
    assert m["train/optimizer_steps"] == 0 and m["train/skipped_kl_guard"] == 1
    q, _, m, _ = _guarded_step(None, 0)  # no guard: the step is kept
    assert float(q.theta) == 1.0 and m["train/optimizer_steps"] == 1


def test_kl_guard_undoes_the_optimizer_state_too():
    q, opt, m, state = _guarded_step(0.1, 0, torch.optim.Adam, warm=True)
    assert float(q.theta) == 0.0 and m["train/skipped_kl_guard"] == 1
    assert set(opt.state[q.theta]) == set(state)
    assert all(torch.equal(opt.state[q.theta][k], v) for k, v in state.items())
    q, opt, m, _ = _guarded_step(0.1, 0, torch.optim.Adam)  # a first step undone leaves no state behind
    assert float(q.theta) == 0.0 and not opt.state


def test_kl_guard_shrinks_a_step_to_fit():
    """With backtracking the step is halved until its KL fits: θ = 0.25 (KL 0.0625 ≤ 0.1; 0.5 gives 0.25 > 0.1)."""
    q, _, m, _ = _guarded_step(0.1, 4)
    assert float(q.theta) == 0.25
    assert m["train/optimizer_steps"] == 1 and m["train/kl_backtracks"] == 2 and m["train/skipped_kl_guard"] == 0
    assert m["train/step_scale"] == 0.25 and m["train/kl_after_step"] == 0.0625


@pytest.mark.parametrize("vf_coef", [0.5, 0.0])
def test_critic_warmup_steps_value_head_only(vf_coef):
    """The warm-up trains the critic alone, also when the PPO loss gives the value term no weight."""
    torch.manual_seed(0)
    p = build_policy(backbone="state")
    r, _ = _rollout(p)
    a = get_algo("ppo")
    cfg = a.config(critic_warmup=5, vf_coef=vf_coef)
    batch, _ = a.prepare(r, cfg)
    before = {n: x.detach().clone() for n, x in p.named_parameters()}
    a.update(p, torch.optim.AdamW(p.parameters(), lr=1e-3, weight_decay=0.0), batch, cfg, iteration=0)
    for n, x in p.named_parameters():
        assert torch.equal(before[n], x) != n.startswith("value_net."), n


def test_tpo_pairs_are_success_vs_failure_within_a_group():
    success = torch.tensor([True, False, False, True, True, True, False, False, True, False])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    score = torch.tensor([5.0, 1.0, -3.0, 2.0, 1, 1, 0, 0, 9, 4])
    w, l = make_pairs(success, group, score, m=2)
    assert success[w].all() and not success[l].any()
    assert torch.equal(group[w], group[l])
    assert set(zip(w.tolist(), l.tolist())) == {(0, 2), (3, 1), (8, 9)}  # top-m wins vs bottom-m losses


def test_rejected_groups_never_reach_the_loss():
    """Dynamic rejection: uniform-reward groups are dropped before prepare()."""
    from vlaforge.rollout.collect import CollectStats
    from vlaforge.train.loop import collect_groups

    torch.manual_seed(0)
    p = build_policy(backbone="state", state_dim=4)
    venv = make_vec_env("pointreach", 16, **PRIV)
    cfg = TrainConfig(groups=4, dynamic_rejection=True, fill_fraction=1.0, max_collect_rounds=3)
    sampler = TaskSampler(list(range(12)), seed=0)
    r, info = collect_groups(p, venv, sampler, cfg, K=4, stats=CollectStats())
    assert info["rollout/rejected_group_share"] > 0  # a random policy mostly fails: some groups are uniform
    if r is not None:
        for g in torch.unique(r.group_id):
            s = r.success[r.group_id == g]
            assert s.any() and not s.all()


def test_curriculum_weights_hand_values():
    rates = np.array([0.0, 0.5, 1.0, 0.25])
    w = near50_weights(rates, tau=0.5)
    e = np.exp(np.array([0.0, 0.5, 0.0, 0.25]) / 0.5)
    np.testing.assert_allclose(w, e / e.sum())
    h = hard_first_weights(np.array([0.0, 0.5, 0.75]), tau=1.0)
    np.testing.assert_allclose(h, np.array([1.0, 0.5, 0.25]) / 1.75)
    s = TaskSampler([3, 7], curriculum="near50", tau=0.1, seed=0)
    s.update([3] * 10 + [7] * 10, [0] * 10 + [0, 1] * 5)
    assert s.weights()[1] > 0.99  # the task at 50% dominates


def test_need_curriculum_is_one_minus_success_with_a_floor():
    """``--curriculum need``: P(i) = max(1 - s_i, floor) / sum; an untried task counts as s = 0 (full need)."""
    w = need_weights(np.array([0.0, 0.5, 1.0, 0.95]), floor=0.1)
    np.testing.assert_allclose(w, np.array([1.0, 0.5, 0.1, 0.1]) / 1.7)
    s = TaskSampler([3, 7, 9], curriculum="need", seed=0, floor=0.2)
    s.update([3] * 4 + [7] * 4, [1, 1, 1, 1, 1, 0, 1, 0])  # task 3 solved, task 7 at 1/2, task 9 untried
    np.testing.assert_allclose(s.weights(), np.array([0.2, 0.5, 1.0]) / 1.7)
    ids, _ = s.sample(3000)
    np.testing.assert_allclose([np.mean(ids == t) for t in (3, 7, 9)], np.array([0.2, 0.5, 1.0]) / 1.7, atol=0.03)


def _small_cfg(out, **kw):
    base = dict(algo="ppo", suite="pointreach", tasks="train", backbone="state", env_kwargs=PRIV, groups=32, num_envs=16,
                eval_every=0, progress=False, tensorboard=False, out=str(out), lr=1e-3)
    base.update(kw)
    cfg = TrainConfig(**base)
    cfg.ppo.minibatch_size = 64
    cfg.ppo.critic_warmup = 1
    return cfg


@pytest.mark.slow
def test_ppo_learning_raises_success(tmp_path):
    """A state-only policy on PointReach with the goal offset in its state (vision excluded). 20 iterations: at lr 1e-3
    the KL guard (checked before a step is kept) shrinks or ends early updates, so 12 no longer clear the margin
    (success 0.04 -> 0.10 at 12; 0.04 -> 0.29 at 20; the old guard passed 12 by 0.015)."""
    cfg = _small_cfg(tmp_path / "run", iterations=20)
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    succ = [r["rollout/success"] for r in rows if "rollout/success" in r]
    assert np.mean(succ[-3:]) > np.mean(succ[:3]) + 0.1, succ


def _final_row(path):
    rows = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
    return {k: v for k, v in rows[-1].items() if not k.startswith("time/")}


def _cli_train(out, *extra):
    return [sys.executable, "-m", "vlaforge.cli", "train", "--algo", "rloo", "--suite", "pointreach", "--backbone",
            "state", "--env-kwargs", "radius", "0.2", "privileged", "1.0", "--groups", "4", "--num-envs", "16",
            "--eval-every", "0", "--no-progress", "--no-tensorboard", "--iterations", "8", "--lr-warmup", "6",
            "--out", str(out), *extra]  # a resume at iteration 3..7 lands inside or at the end of the lr ramp


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cli_train(tmp_path / "ref", "--threads", "1"), capture_output=True, text=True, env=env,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_cli_train(tmp_path / "run", "--threads", "1"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    state = tmp_path / "run" / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists() and json.loads(state.read_text())["iteration"] >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["iteration"]
    assert 3 <= killed_at < 8
    res = subprocess.run([sys.executable, "-m", "vlaforge.cli", "train", "--resume", str(tmp_path / "run" / "checkpoint"),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _final_row(tmp_path / "run") == _final_row(tmp_path / "ref")
    from vlaforge.policies import load_policy

    a, b = load_policy(tmp_path / "ref" / "final"), load_policy(tmp_path / "run" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_lr_warmup_ramps_the_policy_group_only(tmp_path):
    from vlaforge.train.loop import make_optimizer, policy_lr, set_policy_lr

    cfg = TrainConfig(lr=1e-4, value_lr=1e-3, lr_warmup=4, out=str(tmp_path))
    assert [policy_lr(cfg, i) for i in range(6)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])
    assert policy_lr(TrainConfig(lr=1e-4), 0) == 1e-4  # off by default
    policy = build_policy(backbone="state", state_dim=4, action_dim=2)
    opt = make_optimizer(policy, cfg)
    set_policy_lr(opt, cfg, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5) and opt.param_groups[1]["lr"] == 1e-3
    with pytest.raises(ValueError, match="lr-warmup"):
        make_optimizer(policy, TrainConfig(lr_warmup=-1))


def test_corrupt_training_checkpoint_refused(tmp_path):
    cfg = _small_cfg(tmp_path / "run", iterations=1, groups=2)
    train(cfg)
    ck = tmp_path / "run" / "checkpoint"
    state, rng = load_checkpoint(ck)[2:]
    assert state["iteration"] == 1 and "torch_cpu" in rng
    (ck / "optimizer.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ck)
    (ck / "state.json").unlink()
    with pytest.raises(CheckpointError, match="partial"):
        load_checkpoint(ck)


def test_pipeline_flag_gives_the_same_run_and_threads_resolve_once(tmp_path):
    """``--pipeline`` changes only when the policy acts (rollout/collect.py), so a fixed seed gives the same
    run; the default ``threads`` resolves to the thread plan's driver count and is saved in the checkpoint."""
    from vlaforge.envs.vector import thread_plan

    def run(name, pipeline):
        cfg = _small_cfg(tmp_path / name, algo="rloo", iterations=2, groups=2, num_envs=4, workers=2,
                         pipeline=pipeline)
        cfg.rloo.group_size = 4
        train(cfg)
        return _final_row(tmp_path / name)

    n = torch.get_num_threads()
    try:
        assert run("plain", False) == run("pipelined", True)
    finally:
        torch.set_num_threads(n)
    saved = load_checkpoint(tmp_path / "pipelined" / "checkpoint")[2]["config_obj"]
    assert saved.pipeline and saved.threads == thread_plan(2).driver


def test_resume_iterations_extends_a_finished_run_exactly(tmp_path, capsys):
    """`train --resume CK --resume-iterations N` extends a finished run to N iterations, equal to a run of N from the
    start; fewer than the checkpoint has done is a one-line error before any work."""
    from vlaforge.cli import main
    from vlaforge.policies import load_policy

    args = ["train", "--algo", "rloo", "--suite", "pointreach", "--backbone", "state", "--env-kwargs", "radius", "0.2",
            "privileged", "1.0", "--groups", "4", "--num-envs", "8", "--eval-every", "0", "--no-progress",
            "--no-tensorboard", "--threads", "1", "--lr-warmup", "3"]
    assert main([*args, "--iterations", "4", "--out", str(tmp_path / "ref")]) == 0
    assert main([*args, "--iterations", "2", "--out", str(tmp_path / "run")]) == 0
    ck = tmp_path / "run" / "checkpoint"
    before = (ck / "state.json").read_text()
    assert main(["train", "--resume", str(ck), "--resume-iterations", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "below the 2 iterations" in err and (ck / "state.json").read_text() == before
    assert main(["train", "--resume", str(ck), "--iterations", "4"]) == 2
    assert "--resume-iterations 4" in capsys.readouterr().err  # the refusal says how to extend
    assert main(["train", "--resume", str(ck), "--resume-iterations", "4", "--no-progress"]) == 0
    assert json.loads((ck / "state.json").read_text())["iteration"] == 4
    assert _final_row(tmp_path / "run") == _final_row(tmp_path / "ref")
    a, b = load_policy(tmp_path / "ref" / "final"), load_policy(tmp_path / "run" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert main(["train", "--resume", str(ck), "--no-progress"]) == 0  # its own --iterations is 4 now: nothing to do
    assert json.loads((ck / "state.json").read_text())["iteration"] == 4
