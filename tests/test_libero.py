"""LIBERO suite: task resolution, safe init-state loading, and one real task (create, reset to a chosen
initial state, step, render, check_env) on the simulator that ``pip install 'vlaforge[libero]'`` provides."""

import os

import numpy as np
import pytest

pytest.importorskip("libero.libero.benchmark", reason="LIBERO is an optional extra: pip install 'vlaforge[libero]'")
os.environ.setdefault("MUJOCO_GL", "egl")

import vlaforge.envs.libero as lib  # noqa: E402
from vlaforge.envs import EnvError, check_env, make_vec_env  # noqa: E402


def test_resolve_tasks_and_instructions():
    spatial = lib.resolve_tasks("spatial")
    assert [t.name for t in spatial] == [f"spatial-{i}" for i in range(10)]
    assert spatial[0].instruction == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    assert len(lib.resolve_tasks("libero_90")) == 90 and len(lib.resolve_tasks("10")) == 10
    picked = lib.resolve_tasks("object-3, libero_goal-0,object-3")
    assert [t.name for t in picked] == ["object-3", "goal-0"] and all(t.suite == "libero" for t in picked)
    with pytest.raises(EnvError, match="unknown LIBERO suite"):
        lib.resolve_tasks("kitchen")
    with pytest.raises(EnvError, match="tasks 0..9"):
        lib.resolve_tasks("spatial-10")
    with pytest.raises(EnvError, match="camera"):
        lib.LiberoEnv(tasks="spatial-0", cameras="front")


def test_init_states_are_the_suites_fixed_contexts():
    s = lib.load_init_states("spatial", 0)
    assert s.dtype == np.float64 and s.shape[0] == 50 and s.ndim == 2
    assert not np.array_equal(s[0], s[1])


def test_legacy_init_states_read_without_unpickling_objects(tmp_path):
    torch = pytest.importorskip("torch")
    states = np.random.default_rng(0).normal(size=(3, 5))
    path = tmp_path / "task.pruned_init"
    torch.save(states, path)  # the original libero's format: a pickled numpy array
    np.testing.assert_array_equal(lib._read_states_safely(str(path), RuntimeError("x")), states)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    torch.save({"a": Evil()}, tmp_path / "evil")
    with pytest.raises(EnvError, match="without unpickling"):
        lib._read_states_safely(str(tmp_path / "evil"), RuntimeError("x"))
    np.savez(tmp_path / "npz_task.pruned_init.npz", states=states)
    np.testing.assert_array_equal(lib._read_states_safely(str(tmp_path / "npz_task.pruned_init"), RuntimeError("x")),
                                  states)


def test_quat_to_axis_angle():
    np.testing.assert_allclose(lib._quat2axisangle(np.array([0.0, 0.0, 0.0, 1.0])), 0.0)
    half = np.pi / 4  # 90 degrees about z
    np.testing.assert_allclose(lib._quat2axisangle(np.array([0, 0, np.sin(half), np.cos(half)])), [0, 0, np.pi / 2],
                               atol=1e-12)
    np.testing.assert_allclose(lib._quat2axisangle(-np.array([0, 0, np.sin(half), np.cos(half)])), [0, 0, np.pi / 2],
                               atol=1e-12)


@pytest.mark.slow
def test_one_task_create_reset_step_render_check_env():
    """One LIBERO-Object task in 2 envs (two simulators: ~15 s each to build on 2 cores)."""
    venv = make_vec_env("libero", num_envs=2, tasks="object-0", image_size=32, settle_steps=2)
    try:
        spec = venv.spec
        assert spec.image_shape == (2, 32, 32, 3) and spec.state_dim == 8 and spec.action_dim == 7
        assert spec.max_steps == 280 and spec.cameras == ("agentview", "wrist")
        check_env(venv, chunk=2, steps=2)  # grouped resets, determinism, shapes, refused actions
        obs = venv.reset(np.array([0, 0]), np.array([3, 53]))  # seed 53 selects the same fixed state as 3
        assert np.array_equal(obs.images[0], obs.images[1]) and np.array_equal(obs.state[0], obs.state[1])
        assert obs.images[:, 0].std() > 10 and obs.images[:, 1].std() > 10  # both cameras show a scene
        assert not np.array_equal(obs.images[0, 0], obs.images[0, 1])
        env = venv.envs[0]
        # the chosen initial state is loaded (the settle steps then move the sim only a little)
        s0 = lib.load_init_states("object", 0)[3]
        np.testing.assert_allclose(env.mujoco_state()[1:10], s0[1:10], atol=0.02)
        other = venv.reset(np.array([0, 0]), np.array([4, 4]))
        assert not np.array_equal(other.state[0], obs.state[0]) or not np.array_equal(other.images[0], obs.images[0])
        # the scripted expert solves this task (pick the soup, put it in the basket) within the limit
        succ = 0
        for _ in range(spec.max_steps // 4):
            st = venv.step(np.repeat(venv.expert_actions()[:, None], 4, axis=1))
            succ = st.success | succ if np.ndim(succ) else st.success
            if st.done.all():
                break
        assert succ.all(), "scripted pick-and-place failed on object-0 seed 4"
        with pytest.raises(EnvError, match=r"\(C, 7\)"):
            env.step_chunk(np.zeros((2, 6), np.float32))
    finally:
        venv.close()
