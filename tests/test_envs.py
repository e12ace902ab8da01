"""Env contract, grouped resets and worker-crash recovery on the built-in suite."""

import numpy as np
import pytest

from vlaforge.envs import EnvError, check_env, make_vec_env
from vlaforge.envs.base import EnvSpec, SimEnv, TaskSpec
from vlaforge.envs.pointreach import PointReachEnv, resolve_tasks


def test_pointreach_check_env_sync():
    venv = make_vec_env("pointreach", num_envs=4, tasks="train")
    check_env(venv)


def test_pointreach_check_env_subproc():
    venv = make_vec_env("pointreach", num_envs=4, tasks="train", workers=2)
    try:
        check_env(venv)
    finally:
        venv.close()


def test_grouped_reset_identical_within_group_distinct_across():
    venv = make_vec_env("pointreach", num_envs=6, tasks="train")
    obs = venv.reset([2, 2, 2, 2, 2, 2], [5, 5, 5, 9, 9, 9])
    assert np.array_equal(obs.images[0], obs.images[2]) and np.array_equal(obs.state[1], obs.state[2])
    assert not np.array_equal(obs.images[0], obs.images[3])


def test_killed_worker_is_restarted_and_episode_marked_invalid():
    venv = make_vec_env("pointreach", num_envs=4, tasks="train", workers=2)
    try:
        obs0 = venv.reset([0, 1, 2, 3], [1, 2, 3, 4])
        venv.kill_worker(0)
        st = venv.step(np.zeros((4, 2, 2), np.float32))
        assert venv.restarts == 1
        assert st.valid.tolist() == [False, False, True, True]
        assert st.done[:2].all() and (st.steps[:2] == 0).all() and (st.steps[2:] == 2).all()
        # the restarted worker serves the next episode normally
        obs = venv.reset([0, 1, 2, 3], [1, 2, 3, 4])
        assert np.array_equal(obs.images, obs0.images)
        st = venv.step(np.zeros((4, 2, 2), np.float32))
        assert st.valid.all()
    finally:
        venv.close()


def test_bad_input_errors():
    with pytest.raises(EnvError, match="unknown suite"):
        make_vec_env("nosuchsuite", num_envs=1)
    with pytest.raises(EnvError, match="unknown pointreach task"):
        PointReachEnv(tasks="magenta-9")
    venv = make_vec_env("pointreach", num_envs=2)
    venv.reset([0, 0], [0, 0])
    with pytest.raises(EnvError, match="shape"):
        venv.step(np.zeros((2, 3), np.float32))
    with pytest.raises(EnvError, match="task ids"):
        venv.reset([0, 99], [0, 0])


def test_heldout_split_is_disjoint_and_nonempty():
    train, held = resolve_tasks("train"), resolve_tasks("heldout")
    assert held and train and not {t.name for t in train} & {t.name for t in held}
    # every colour and every template is seen in training; only the combinations are new
    for t in held:
        colour, tmpl = t.name.split("-")
        assert any(x.name.startswith(colour + "-") for x in train)
        assert any(x.name.endswith("-" + tmpl) for x in train)


def test_pointreach_expert_succeeds():
    env = PointReachEnv()
    wins = 0
    for seed in range(20):
        env.reset(seed % len(env.tasks), seed)
        done = False
        while not done:
            r = env.step_chunk(env.expert_action()[None])
            done = r.done
        wins += r.success
    assert wins == 20


def test_pointreach_shaping_telescopes_and_leaves_success_alone():
    w = 2.0
    plain, shaped = PointReachEnv(), PointReachEnv(shaping=w)
    rng = np.random.default_rng(3)
    for seed in range(6):
        plain.reset(seed % 12, seed)
        shaped.reset(seed % 12, seed)
        d0 = np.linalg.norm(shaped.pos - shaped.targets[shaped.goal])
        total, done = 0.0, False
        while not done:
            a = (shaped.expert_action()[None] if seed % 2 else rng.uniform(-1, 1, (3, 2))).astype(np.float32)
            r0, r = plain.step_chunk(a), shaped.step_chunk(a)
            assert r.success == r0.success and r.done == r0.done and r.steps == r0.steps
            total, done = total + r.reward, r.done
        dT = np.linalg.norm(shaped.pos - shaped.targets[shaped.goal])
        assert total == pytest.approx(w * (d0 - dT) + float(r.success), abs=1e-9)
    with pytest.raises(EnvError, match="shaping"):
        PointReachEnv(shaping=-1.0)


class _CountingEnv(SimEnv):
    """A one-dim SimEnv whose simulator records the actions and is solved on the `solve_at`-th step."""

    suite = "counting"

    def __init__(self, solve_at: int | None, max_steps: int = 10):
        super().__init__([TaskSpec("t", "do it", "counting")], 16, max_steps)
        self.spec = EnvSpec("counting", tuple(self.tasks), (1, 16, 16, 3), 1, 1, max_steps)
        self.solve_at, self.seen = solve_at, []

    def _reset(self, task, seed):
        self.seen = []

    def _step(self, a_t):
        self.seen.append(float(a_t[0]))
        return len(self.seen) == self.solve_at, 0.25 if self.solve_at else 0.0

    def _observe(self):
        return np.zeros((1, 16, 16, 3), np.uint8), np.zeros(1, np.float32)


def test_run_chunk_stops_at_success_or_limit_and_sums_dense_rewards():
    env = _CountingEnv(solve_at=3)
    env.reset(0, 0)
    chunk = np.array([[0.1], [2.0], [-3.0], [0.4]], np.float32)
    r = env.step_chunk(chunk)
    reward, success, n = r.reward, r.success, r.steps
    assert (reward, success, n, env.t, env.done) == (0.25 * 3 + 1.0, True, 3, 3, True)
    assert env.seen == pytest.approx([0.1, 1.0, -1.0])  # actions clipped to [-1, 1]; the 4th never executed
    assert chunk[1, 0] == 2.0  # the caller's array is left as it was
    env = _CountingEnv(solve_at=None)
    env.reset(0, 0)
    env.step_chunk(np.zeros((8, 1), np.float32))
    r = env.step_chunk(np.zeros((4, 1), np.float32))
    reward, success, n = r.reward, r.success, r.steps
    assert (reward, success, n, env.t, env.done) == (0.0, False, 2, 10, True)
    assert env.step_chunk(np.zeros((4, 1), np.float32)).steps == 0  # an ended episode executes nothing
    with pytest.raises(EnvError, match="out of range"):
        env.reset(1, 0)
