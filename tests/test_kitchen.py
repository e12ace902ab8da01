"""Franka Kitchen suite: env contract, determinism, chunk semantics, scripted experts, dataset import."""

import os

import numpy as np
import pytest

pytest.importorskip("gymnasium_robotics", reason="Franka Kitchen is an optional extra: pip install 'vlaforge[kitchen]'")
os.environ.setdefault("MUJOCO_GL", "egl")

import vlaforge.envs.kitchen as kitchen  # noqa: E402
from vlaforge.envs import EnvError, check_env, make_vec_env  # noqa: E402
from vlaforge.envs.kitchen import EXPERT_TASKS, TASK_INSTRUCTIONS, TASKS, KitchenEnv, load_kitchen_dataset  # noqa: E402


@pytest.fixture(scope="module")
def physics_env():
    """All sub-tasks, no rendering: for the experts (a frame costs ~30 ms, a physics step ~2.5 ms)."""
    e = KitchenEnv(render=False)
    yield e
    e.close()


def test_check_env_and_spec():
    venv = make_vec_env("kitchen", num_envs=4, tasks="microwave,kettle")  # envs 0,1 and 2,3 share (task, seed)
    try:
        check_env(venv)
        spec = venv.spec
        assert spec.state_dim == 18 and spec.action_dim == 9 and spec.max_steps == 280
        assert spec.image_shape == (1, 64, 64, 3) and spec.cameras == ("overview",) and spec.renderer
        assert [t.instruction for t in spec.tasks] == ["open the microwave door", "move the kettle to the top left burner"]
        obs = venv.reset(np.array([0, 0, 1, 1]), np.array([5, 5, 5, 6]))
        assert np.array_equal(obs.images[0], obs.images[1]) and np.array_equal(obs.state[0], obs.state[1])
        assert not np.array_equal(obs.state[2], obs.state[3])  # the seed moves the arm's start
        assert obs.images[0].std() > 10  # a real picture, not a blank frame
    finally:
        venv.close()


def test_reset_is_a_function_of_task_and_seed(physics_env):
    env = physics_env
    _, a = env.reset(0, 3)
    a = a.copy()
    env.step_chunk(np.random.default_rng(0).uniform(-1, 1, (15, 9)).astype(np.float32))  # history must not matter
    env.reset(2, 4)
    _, b = env.reset(0, 3)
    assert np.array_equal(a, b)
    _, c = env.reset(0, 4)
    assert not np.array_equal(a, c)
    assert np.abs(c[:7] - a[:7]).max() < 2 * 0.03 + 0.01  # small seeded noise on the arm's joints


def test_task_names_and_errors():
    assert len(TASKS) == 7 and set(TASK_INSTRUCTIONS) == set(TASKS)
    specs = kitchen.resolve_tasks("light switch, Slide_Cabinet,light-switch")
    assert [s.name for s in specs] == ["light-switch", "slide-cabinet"]
    assert specs[0].instruction == "turn on the light switch"
    with pytest.raises(EnvError, match="unknown kitchen task"):
        KitchenEnv(tasks="dishwasher")
    with pytest.raises(EnvError, match="camera"):
        KitchenEnv(camera="nope")


def test_chunk_stops_on_success_and_renders_once():
    """Replay an expert trajectory as one long chunk: it stops on the success step with reward 1."""
    task, seed = "light-switch", 2
    phys = KitchenEnv(tasks=task, render=False)
    phys.reset(0, seed)
    actions = []
    while not phys.done:
        a = phys.expert_action()
        actions.append(a)
        res = phys.step_chunk(a[None])
    phys.close()
    assert res.success and res.reward == 1.0
    T = len(actions)
    env = KitchenEnv(tasks=task, image_size=32)
    try:
        img0, _ = env.reset(0, seed)
        img0 = img0.copy()
        chunk = np.concatenate([np.stack(actions), np.zeros((10, 9), np.float32)])
        res = env.step_chunk(chunk)
        assert res.success and res.done and not res.truncated and res.steps == T and res.reward == 1.0
        assert res.image.shape == (1, 32, 32, 3) and res.image.dtype == np.uint8
        assert not np.array_equal(res.image, img0)
        again = env.step_chunk(np.zeros((4, 9), np.float32))  # an ended episode executes nothing
        assert again.steps == 0 and again.done and again.reward == 0.0
        with pytest.raises(EnvError):
            env.step_chunk(np.zeros((2, 8), np.float32))
    finally:
        env.close()


def test_time_limit_truncates():
    env = KitchenEnv(tasks="microwave", render=False, max_steps=5)
    try:
        env.reset(0, 0)
        res = env.step_chunk(np.zeros((8, 9), np.float32))
        assert res.steps == 5 and res.done and res.truncated and not res.success and res.reward == 0.0
    finally:
        env.close()


@pytest.mark.parametrize("task", EXPERT_TASKS)
def test_expert_succeeds(physics_env, task):
    env = physics_env
    tid = env.spec.task_index(task)
    for seed in (0, 1):
        env.reset(tid, seed)
        while not env.done:
            a = env.expert_action()
            assert a.shape == (9,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
            res = env.step_chunk(a[None])
        assert res.success, f"{task} expert failed on seed {seed} (task joints {env.task_joints()})"


def test_expert_missing_is_an_error(physics_env, monkeypatch):
    monkeypatch.setattr(kitchen, "EXPERT_TASKS", ("microwave",))
    physics_env.reset(physics_env.spec.task_index("kettle"), 0)
    with pytest.raises(EnvError, match="tasks with one: microwave"):
        physics_env.expert_action()


def _synthetic(width: int, lengths=(4, 3)):
    rng = np.random.default_rng(0)
    M = sum(lengths)
    obs = rng.normal(0, 0.01, (M, width))
    qpos_obj = 18 if width == 59 else 9  # where the kitchen's 21 joint positions start
    obs[4:, qpos_obj + 22 - 9] = -0.75  # microwave open from step 4 (the second episode)
    terminals = np.zeros(M, bool)
    terminals[lengths[0] - 1] = True
    return obs, rng.uniform(-1.5, 1.5, (M, 9)), terminals


@pytest.mark.parametrize("width", [59, 60])
def test_dataset_import_npz(tmp_path, width):
    obs, act, term = _synthetic(width)
    path = tmp_path / "kitchen.npz"
    np.savez(path, observations=obs, actions=act, terminals=term, timeouts=np.zeros(len(obs), bool))
    ds = load_kitchen_dataset(path)
    assert len(ds) == 7 and ds.num_episodes == 2
    assert ds.state.shape == (7, 18) and ds.state.dtype == np.float32
    assert ds.actions.shape == (7, 9) and np.abs(ds.actions).max() <= 1.0
    assert ds.episode.tolist() == [0, 0, 0, 0, 1, 1, 1] and ds.frame.tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert ds.episode_end.tolist() == [4] * 4 + [7] * 3
    np.testing.assert_allclose(ds.state[:, :9], obs[:, :9].astype(np.float32))
    if width == 59:
        assert ds.source_layout == "minari-59"
        np.testing.assert_allclose(ds.state[:, 9:], obs[:, 9:18].astype(np.float32))
    else:
        assert ds.source_layout == "d4rl-60"
        assert np.all(ds.state[[0, 4], 9:] == 0)  # velocities restart at each episode
        np.testing.assert_allclose(ds.state[1, 9:], (obs[1, :9] - obs[0, :9]) / 0.08, rtol=1e-5)
    assert ds.episode_tasks(0) == [] and ds.episode_tasks(1) == ["microwave"]


def test_dataset_import_errors(tmp_path):
    with pytest.raises(EnvError, match="no kitchen dataset"):
        load_kitchen_dataset(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, observations=np.zeros((3, 30)), actions=np.zeros((3, 9)), terminals=np.zeros(3, bool))
    with pytest.raises(EnvError, match="59"):
        load_kitchen_dataset(bad)
    try:
        import h5py  # noqa: F401
    except ImportError:
        h5 = tmp_path / "k.hdf5"
        h5.write_bytes(b"")
        with pytest.raises(EnvError, match="h5py"):
            load_kitchen_dataset(h5)
