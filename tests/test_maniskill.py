"""ManiSkill3 suite: env contract (create, seeded grouped resets, step, render), scripted experts,
and the one-line error when the Vulkan driver is missing."""

import numpy as np
import pytest

pytest.importorskip("mani_skill", reason="ManiSkill3 is an optional extra: pip install 'vlaforge[maniskill]'")

import vlaforge.envs.maniskill as ms  # noqa: E402
from vlaforge.envs import EnvError, MissingExtra, check_env, make_vec_env  # noqa: E402


def _vulkan_or_skip():
    try:
        env = ms.ManiSkillEnv(tasks="pick-cube", render=False)
    except MissingExtra as e:
        pytest.skip(f"no Vulkan driver for SAPIEN (run `make sysdeps-maniskill`): {e}")
    return env


@pytest.fixture(scope="module")
def physics_env():
    env = _vulkan_or_skip()
    env.close()
    e = ms.ManiSkillEnv(tasks="pick-cube,stack-cube,place-sphere", render=False)
    yield e
    e.close()


def test_task_names_and_errors():
    specs = ms.resolve_tasks("PickCube-v1, stack_cube,pick-cube")
    assert [s.name for s in specs] == ["pick-cube", "stack-cube"]
    assert specs[1].instruction == "put the red cube on the green cube" and specs[0].suite == "maniskill"
    assert [s.name for s in ms.resolve_tasks(None)] == ["pick-cube", "stack-cube"]
    with pytest.raises(EnvError, match="unknown ManiSkill task"):
        ms.resolve_tasks("open-drawer")
    with pytest.raises(EnvError, match="sim_backend"):
        ms.ManiSkillEnv(sim_backend="tpu")


def test_missing_vulkan_is_one_line_with_the_fix(monkeypatch):
    def fail(*a, **k):
        raise RuntimeError('Failed to find a supported physical device "cpu"')

    monkeypatch.setattr(ms.gym, "make", fail)
    with pytest.raises(MissingExtra) as e:
        ms.ManiSkillEnv(tasks="pick-cube")
    msg = str(e.value)
    assert "\n" not in msg and "make sysdeps-maniskill" in msg and "bookworm-backports" in msg


def test_check_env_render_and_grouped_resets(physics_env):
    venv = make_vec_env("maniskill", num_envs=4, tasks="stack-cube", image_size=32)  # one scene per env
    try:
        check_env(venv)
        spec = venv.spec
        assert spec.image_shape == (1, 32, 32, 3) and spec.state_dim == 16 and spec.action_dim == 7
        assert spec.max_steps == 50 and spec.extra["sim_backend"] in ("cpu", "gpu")
        obs = venv.reset(np.array([0, 0, 0, 0]), np.array([7, 7, 8, 8]))
        assert np.array_equal(obs.images[0], obs.images[1]) and np.array_equal(obs.state[0], obs.state[1])
        assert not np.array_equal(obs.images[1], obs.images[2])  # another seed places the cubes elsewhere
        assert obs.images.std() > 10  # a rendered scene, not a blank frame
        st = venv.step(np.zeros((4, 3, 7), np.float32))
        assert np.all(st.steps == 3) and st.obs.images.shape == (4, 1, 32, 32, 3)
    finally:
        venv.close()


def test_reset_is_a_function_of_task_and_seed(physics_env):
    env = physics_env
    _, a = env.reset(1, 3)
    a = a.copy()
    env.step_chunk(np.random.default_rng(0).uniform(-1, 1, (5, 7)).astype(np.float32))
    env.reset(0, 9)
    _, b = env.reset(1, 3)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("task_id", [0, 1, 2])
def test_scripted_expert_succeeds(physics_env, task_id):
    env = physics_env
    wins = 0
    for seed in range(3):
        env.reset(task_id, 1_000_000 + seed)
        while not env.done:
            res = env.step_chunk(env.expert_action()[None])
        wins += res.success
    assert wins == 3, f"{env.tasks[task_id].name}: expert solved {wins}/3"
