"""Pipelined collection (collect(..., pipeline=True)): the same Rollout as the plain path, episode by
episode, for a deterministic and a seeded stochastic policy; group stepping, worker crashes while
steps are in flight, errors mid-pipeline, whole-batch policies and the thread plan.

Run: OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_pipelined.py
"""

import os
from dataclasses import fields

import numpy as np
import pytest
import torch

from vlaforge.envs import env_factory
from vlaforge.envs.pointreach import PointReachEnv
from vlaforge.envs.vector import SubprocVecEnv, ThreadPlan, thread_plan
from vlaforge.policies import build_policy
from vlaforge.policies.base import Policy
from vlaforge.rewards.expert import ExpertPolicy
from vlaforge.rollout.collect import act_groups, collect

# a large target radius: some episodes end after a few chunks, others run to the time limit,
# so groups drop out of the round-robin at different decisions
ENV = dict(radius=0.3, privileged=1.0, max_steps=16)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The policy shares 2 cores with 2 env workers (conftest's 2 threads would spin against them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def venvs():
    fn = env_factory("pointreach", **ENV)
    made = {k: SubprocVecEnv(fn, 8, workers=2, groups_per_worker=k) for k in (1, 2)}
    yield made
    for v in made.values():
        v.close()


class _Steered(Policy):
    """A tiny VLA whose actions are pushed towards the goal (privileged state: the goal's offset), so that
    episodes end at different decisions; its own sampling (and RNG use) is untouched."""

    def __init__(self, policy):
        self.policy = policy

    def act(self, obs, deterministic=False, temperature=1.0):
        out = self.policy.act(obs, deterministic, temperature)
        push = torch.as_tensor(obs.state[:, None, 2:4]) * 1.0  # (n, 1, 2)
        out.actions = (out.actions + push).clamp(-1, 1)
        return out


def _policy(venv, head: str):
    torch.manual_seed(0)
    return _Steered(build_policy(head=head, backbone="state", state_dim=venv.spec.state_dim,
                                 action_dim=venv.spec.action_dim, chunk_size=2))


def _run(policy, venv, pipeline: bool, deterministic: bool, seed: int = 3):
    torch.manual_seed(seed)
    # 12 episodes: a full batch of 8 (near starts first, far ones second) and a padded batch of 4
    tids, seeds = [1, 1, 2, 2, 2, 3, 2, 3, 0, 1, 2, 3], [2, 2, 3, 3, 1, 1, 1, 1, 4, 4, 5, 5]
    r, stats = collect(policy, venv, tids, seeds, deterministic=deterministic, pipeline=pipeline)
    return r, stats, torch.get_rng_state()


def _assert_same_rollout(a, b):
    assert a.instructions == b.instructions
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "taken":
            assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f.name
        elif isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), f.name
    for e in range(a.num_episodes):  # episode by episode, on the steps that episode took
        live = a.alive[:, e]
        assert torch.equal(live, b.alive[:, e])
        for key in ("actions", "log_prob", "reward", "executed", "value", "obs_state", "obs_images"):
            assert torch.equal(getattr(a, key)[live, e], getattr(b, key)[live, e]), (e, key)


@pytest.mark.parametrize("groups_per_worker", [1, 2])
@pytest.mark.parametrize("deterministic,head", [(True, "gaussian"), (False, "gaussian"), (False, "tokens")])
def test_pipelined_rollout_equals_plain(venvs, groups_per_worker, deterministic, head):
    venv = venvs[groups_per_worker]
    policy = _policy(venv, head)
    plain, s0, rng0 = _run(policy, venv, False, deterministic)
    piped, s1, rng1 = _run(policy, venv, True, deterministic)
    _assert_same_rollout(plain, piped)
    assert torch.equal(rng0, rng1), "the two paths drew a different amount of randomness"
    assert (s0.env_steps, s0.decisions, s0.episodes) == (s1.env_steps, s1.decisions, s1.episodes)
    # the case is not trivial: episodes of different lengths, and some groups ended before others
    lengths = plain.alive.sum(0)
    assert lengths.min() < lengths.max() and plain.success.any() and not plain.success.all()
    group_ends = [int(lengths[g].max()) for g in venv.groups]  # first batch: episodes 0..7
    assert min(group_ends) < max(group_ends), "every group ran to the same decision"
    if not deterministic:  # a different seed gives a different rollout (the seed reaches the policy)
        other, _, _ = _run(policy, venv, True, deterministic, seed=4)
        assert not torch.equal(other.actions, piped.actions)


def test_act_groups_follow_the_workers(venvs):
    policy = _policy(venvs[1], "gaussian")
    assert act_groups(policy, venvs[1]) == [slice(0, 4), slice(4, 8)]
    assert act_groups(policy, venvs[2]) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert act_groups(ExpertPolicy(venvs[1]), venvs[1]) == [slice(0, 8)]


def test_whole_batch_policy_is_not_split(venvs):
    """ExpertPolicy reads venv.expert_actions() for all envs: one call per decision, pipelined or not."""
    venv = venvs[1]
    tids, seeds = np.arange(8) % 4, np.arange(8)
    a, _ = collect(ExpertPolicy(venv, noise=0.3, seed=1), venv, tids, seeds, pipeline=True)
    b, _ = collect(ExpertPolicy(venv, noise=0.3, seed=1), venv, tids, seeds, pipeline=False)
    _assert_same_rollout(a, b)
    assert a.success.float().mean() > 0.5


class _WrongRows(Policy):
    """Acts for 8 envs whatever it is shown (a whole-batch policy that forgot to say so)."""

    def act(self, obs, deterministic=False, temperature=1.0):
        from vlaforge.types import ActionOutput

        a = torch.zeros(8, 2, 2)
        return ActionOutput(a, torch.zeros_like(a), None, {})


def test_policy_with_wrong_row_count_is_refused(venvs):
    with pytest.raises(ValueError, match="whole_batch"):
        collect(_WrongRows(), venvs[1], np.zeros(8, np.int64), np.arange(8))


class _FailsAt(Policy):
    """Raises on its n-th act call (an internal error mid-pipeline)."""

    def __init__(self, policy, n: int):
        self.policy, self.n, self.calls = policy, n, 0

    def act(self, obs, deterministic=False, temperature=1.0):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("policy failed")
        return self.policy.act(obs, deterministic, temperature)


def test_error_mid_pipeline_leaves_the_env_usable(venvs):
    venv = venvs[2]
    policy = _policy(venv, "gaussian")
    with pytest.raises(RuntimeError, match="policy failed"):
        collect(_FailsAt(policy, 6), venv, np.zeros(8, np.int64), np.arange(8), pipeline=True)
    assert not venv.in_flight
    venv.expert_actions()  # the workers answer plain commands again
    r, _ = collect(policy, venv, np.zeros(8, np.int64), np.arange(8), pipeline=True)
    assert r.valid.all()


def test_group_steps_and_a_worker_dying_with_steps_in_flight():
    venv = SubprocVecEnv(env_factory("pointreach", **ENV), 4, workers=2)
    try:
        obs0 = venv.reset([0, 1, 2, 3], [1, 2, 3, 4])
        a = np.zeros((2, 2, 2), np.float32)
        with pytest.raises(RuntimeError, match="without a step_async"):
            venv.step_wait(1)
        venv.step_async(1, a)
        with pytest.raises(RuntimeError, match="in flight"):
            venv.step_async(1, a)
        with pytest.raises(RuntimeError, match="in flight"):
            venv.expert_actions()
        st1 = venv.step_wait(1)
        assert st1.obs.images.shape[0] == 2 and (st1.steps == 2).all() and st1.valid.all()
        venv.kill_worker(0)
        venv.step_async(0, a)
        venv.step_async(1, a)
        st0, st1 = venv.step_wait(0), venv.step_wait(1)
        assert venv.restarts == 1
        assert st0.done.all() and (st0.steps == 0).all() and not st0.valid.any()
        assert st1.valid.all() and (st1.steps == 2).all()
        venv.step_async(0, a)  # the restarted envs are not the episode's: they stay ended until reset
        st0 = venv.step_wait(0)
        assert st0.done.all() and (st0.steps == 0).all() and not st0.valid.any()
        obs = venv.reset([0, 1, 2, 3], [1, 2, 3, 4])
        assert np.array_equal(obs.images, obs0.images)
        venv.step_async(0, a)
        assert venv.step_wait(0).valid.all()
    finally:
        venv.close()


def test_crash_during_pipelined_collect_invalidates_that_workers_episodes():
    venv = SubprocVecEnv(env_factory("pointreach", radius=0.05, max_steps=16), 4, workers=2)
    try:
        policy = _policy(venv, "gaussian")

        class KillAt(_FailsAt):
            def act(self, obs, deterministic=False, temperature=1.0):
                self.calls += 1
                if self.calls == self.n:
                    venv.kill_worker(0)
                return self.policy.act(obs, deterministic, temperature)

        r, stats = collect(KillAt(policy.policy, 4), venv, np.zeros(4, np.int64), np.arange(4), pipeline=True)
        assert r.valid.tolist() == [False, False, True, True] and venv.restarts == 1
        assert stats.invalid == 2
        r, _ = collect(policy.policy, venv, np.zeros(4, np.int64), np.arange(4), pipeline=True)
        assert r.valid.all()
    finally:
        venv.close()


class _ThreadProbe(PointReachEnv):
    """Reports the worker's torch threads and LP_NUM_THREADS as its 'expert action'."""

    def expert_action(self):
        return np.array([torch.get_num_threads(), float(os.environ["LP_NUM_THREADS"])], np.float32)


def test_thread_plan_and_workers_apply_it():
    assert thread_plan(2, cores=2) == ThreadPlan(cores=2, workers=2, driver=1, worker=1,
                                                 render=int(os.environ.get("LP_NUM_THREADS", "1")))
    assert thread_plan(0, cores=2).driver == 2 and thread_plan(4, cores=16).driver == 12
    assert thread_plan(3, cores=2).driver == 1
    plan = ThreadPlan(cores=2, workers=2, driver=1, worker=1, render=0)
    assert "driver 1 torch threads" in plan.describe()
    venv = SubprocVecEnv(_ThreadProbe, 2, workers=2, threads=plan)
    try:
        assert venv.expert_actions().tolist() == [[1.0, 0.0], [1.0, 0.0]]
    finally:
        venv.close()
