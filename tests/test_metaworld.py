"""Meta-World suite: env contract, determinism, scripted experts, upright images, task resolution."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="Meta-World is an optional extra: pip install 'vlaforge[metaworld]'")
os.environ.setdefault("MUJOCO_GL", "egl")

from vlaforge.envs import EnvError, check_env, make_vec_env  # noqa: E402
from vlaforge.envs.metaworld import TASK_INSTRUCTIONS, MetaWorldEnv, resolve_tasks  # noqa: E402

TASKS = "reach-v3,button-press-topdown-v3"


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv(tasks=TASKS, image_size=64)
    yield e
    e.close()


def test_check_env_sync():
    venv = make_vec_env("metaworld", num_envs=4, tasks=TASKS, workers=0)
    try:
        check_env(venv)
        assert venv.spec.state_dim == 4 and venv.spec.action_dim == 4
        assert venv.spec.image_shape == (1, 64, 64, 3) and venv.spec.cameras == ("corner",)
    finally:
        venv.close()


def test_reset_is_a_function_of_task_and_seed(env):
    other = MetaWorldEnv(tasks=TASKS, image_size=64)
    try:
        img_a, st_a = env.reset(0, 11)
        img_a, st_a = img_a.copy(), st_a.copy()
        env.step_chunk(np.random.default_rng(0).uniform(-1, 1, (20, 4)))  # history must not matter
        env.reset(0, 12)
        img_b, st_b = env.reset(0, 11)
        img_c, st_c = other.reset(0, 11)
        for img, st in ((img_b, st_b), (img_c, st_c)):
            assert np.array_equal(img, img_a) and np.array_equal(st, st_a)
        assert img_a.shape == (1, 64, 64, 3) and img_a.dtype == np.uint8
        assert st_a.shape == (4,) and st_a.dtype == np.float32
        # a different seed moves the goal / objects: visible in the image (the hand starts fixed)
        for tid in (0, 1):
            img_0, _ = env.reset(tid, 0)
            img_0 = img_0.copy()
            img_1, _ = env.reset(tid, 1)
            assert not np.array_equal(img_0, img_1)
    finally:
        other.close()


def test_cache_keeps_at_most_k_simulators_and_the_same_episodes(env):
    """``cache=1``: switching tasks closes the other task's simulator and rebuilds it on its next reset; every
    frame and state equals those of the env that keeps both (the initial state depends on (task, seed) only)."""
    small = MetaWorldEnv(tasks=TASKS, image_size=64, cache=1)
    acts = np.random.default_rng(3).uniform(-1, 1, (8, 4)).astype(np.float32)
    try:
        for tid, seed in ((0, 5), (1, 6), (0, 5), (1, 7)):
            for e in (env, small):
                e.reset(tid, seed)
            res = [e.step_chunk(acts) for e in (env, small)]
            assert np.array_equal(res[0].image, res[1].image) and np.array_equal(res[0].state, res[1].state)
            assert list(small._sims) == [small.spec.tasks[tid].name]  # only the task just reset is alive
        assert len(env._sims) == 2
    finally:
        small.close()
    for bad in (-1, 1.5, float("nan"), None, "3", True):
        with pytest.raises(EnvError, match="cache must be a whole number"):
            MetaWorldEnv(tasks=TASKS, cache=bad)
    assert MetaWorldEnv(tasks=TASKS, cache=2).cached_tasks() is None  # as many as tasks: nothing is ever closed
    from vlaforge.envs.options import check_env_kwargs
    from vlaforge.errors import UsageError

    assert check_env_kwargs("metaworld", {"cache": 10.0}) == {"cache": 10}
    with pytest.raises(UsageError, match="cache must be > 0"):
        check_env_kwargs("metaworld", {"cache": 0})


def test_affinity_order_by_hand():
    from vlaforge.envs.vector import affinity_order

    assert affinity_order(["a", "b"], [None, None], [(0, 2)]) == [0, 1]  # no bounded cache: identity
    # env 0 holds b, env 1 holds a: the positions swap; env 2 holds neither and takes the last position
    held = [frozenset({"b"}), frozenset({"a"}), frozenset()]
    assert affinity_order(["a", "b", "c"], held, [(0, 3)]) == [1, 0, 2]
    # two positions of task a: the first gets the env holding it, the second an env left over
    assert affinity_order(["a", "a", "b"], [frozenset({"b"}), frozenset({"a"}), frozenset()], [(0, 3)]) == [1, 2, 0]
    # positions move only inside their bound (a worker's group)
    assert affinity_order(["a", "b", "a", "b"], [frozenset({"b"}), frozenset({"a"})] * 2, [(0, 2), (2, 4)]) == [1, 0, 3, 2]
    assert affinity_order(["a", "b"], [frozenset({"b"}), frozenset({"a"})], [(0, 1), (1, 2)]) == [0, 1]


def test_vec_env_runs_each_episode_on_an_env_holding_its_task():
    """With cache=1 and batches whose tasks swap places, the vector env resets each position on the env that
    holds its task (no simulator built after the first batch) and returns what an uncached vector env returns
    (worker processes: the next test)."""
    kw = dict(tasks=TASKS, max_steps=20)
    cached = make_vec_env("metaworld", 2, workers=0, cache=1, **kw)
    plain = make_vec_env("metaworld", 2, workers=0, **kw)
    acts = np.random.default_rng(1).uniform(-1, 1, (2, 4, 4)).astype(np.float32)
    try:
        for tids, seeds in (([0, 1], [3, 4]), ([1, 0], [5, 6]), ([1, 0], [5, 6]), ([0, 0], [7, 8])):
            obs = [v.reset(np.array(tids), np.array(seeds)) for v in (cached, plain)]
            assert np.array_equal(obs[0].images, obs[1].images) and np.array_equal(obs[0].state, obs[1].state)
            assert np.array_equal(cached.expert_actions(), plain.expert_actions())
            st = [v.step(acts) for v in (cached, plain)]
            for a, b in zip(st[0].obs.images, st[1].obs.images):
                assert np.array_equal(a, b)
            assert np.array_equal(st[0].reward, st[1].reward) and np.array_equal(st[0].done, st[1].done)
            if tids == [1, 0]:  # the envs kept their tasks: env 0 runs position 1
                assert cached.slots.order == [1, 0]
                assert [set(e._sims) for e in cached.envs] == [{"reach-v3"}, {"button-press-topdown-v3"}]
                assert sum(e.sims_built for e in cached.envs) == 2  # nothing built after the first batch
        cached.slots.affinity = False  # the ablation: every env runs its own position
        cached.reset(np.array([1, 0]), np.array([5, 6]))
        assert cached.slots.order == [0, 1]
    finally:
        cached.close()
        plain.close()


@pytest.mark.parametrize("groups_per_worker", [1, 2])
def test_workers_move_positions_only_inside_their_groups(groups_per_worker):
    """4 envs on 2 workers, stepped group by group (the pipelined path): positions move inside a worker's group
    only, and every group's results equal an uncached vector env's."""
    from vlaforge.envs import env_factory
    from vlaforge.envs.vector import SubprocVecEnv

    kw = dict(tasks=TASKS, max_steps=12)
    cached = SubprocVecEnv(env_factory("metaworld", cache=1, **kw), 4, workers=2, groups_per_worker=groups_per_worker)
    plain = make_vec_env("metaworld", 4, workers=0, **kw)
    acts = np.random.default_rng(2).uniform(-1, 1, (4, 4, 4)).astype(np.float32)
    try:
        for tids in ([0, 1, 0, 1], [1, 0, 1, 0]):
            seeds = np.arange(4) + 10 * tids[0]
            obs = [v.reset(np.array(tids), seeds) for v in (cached, plain)]
            assert np.array_equal(obs[0].images, obs[1].images)
            ref = plain.step(acts)
            for g, sl in enumerate(cached.groups):
                cached.step_async(g, acts[sl])
            for g, sl in enumerate(cached.groups):
                st = cached.step_wait(g)
                assert np.array_equal(st.obs.images, ref.obs.images[sl]) and np.array_equal(st.obs.state, ref.obs.state[sl])
                assert np.array_equal(st.reward, ref.reward[sl])
            assert np.array_equal(cached.expert_actions(), plain.expert_actions())
    finally:
        cached.close()
        plain.close()


@pytest.mark.parametrize("task_id", [0, 1])
def test_scripted_expert_succeeds(env, task_id):
    for seed in range(2):
        env.reset(task_id, seed)
        done, total = False, 0.0
        while not done:
            a = env.expert_action()
            assert a.shape == (4,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1.0)
            r = env.step_chunk(a[None])
            done, total = r.done, total + r.reward
        assert r.success and not r.truncated and total == 1.0, f"expert failed {env.tasks[task_id].name} seed {seed}"
        assert env.t < env.max_steps
        # an ended episode stays ended: no steps, no reward
        after = env.step_chunk(np.zeros((3, 4), np.float32))
        assert after.steps == 0 and after.done and after.reward == 0.0
        assert np.array_equal(after.image, r.image)


def test_time_limit_truncates():
    e = MetaWorldEnv(tasks="reach-v3", max_steps=10)
    try:
        e.reset(0, 0)
        r1 = e.step_chunk(np.zeros((4, 4), np.float32))
        assert r1.steps == 4 and not r1.done
        r2 = e.step_chunk(np.zeros((8, 4), np.float32))
        assert r2.steps == 6 and r2.done and r2.truncated and not r2.success and r2.reward == 0.0
    finally:
        e.close()


def test_image_is_upright_and_not_mirrored(env):
    """The red reach goal appears where an upright camera at the 'corner' pose projects it."""
    for seed in range(2):
        img, _ = env.reset(0, seed)
        sim = env._sim
        m, d = sim.env.model, sim.env.data
        sid = m.site("goal").id
        group = m.site_group[sid]
        m.site_group[sid] = 5  # hidden group: render once without the goal
        try:
            without = sim.render("corner")
        finally:
            m.site_group[sid] = group
        rows, cols = np.nonzero(np.abs(img[0].astype(int) - without.astype(int)).sum(-1) > 30)
        assert rows.size > 0, "goal not visible"
        cid = m.camera("corner").id
        fwd = -d.cam_xmat[cid].reshape(3, 3)[:, 2]
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        p = d.site_xpos[sid] - d.cam_xpos[cid]
        H = img.shape[1]
        focal = (H / 2) / np.tan(np.deg2rad(m.cam_fovy[cid]) / 2)
        row = H / 2 - focal * (p @ up) / (p @ fwd)
        col = H / 2 + focal * (p @ right) / (p @ fwd)
        assert abs(rows.mean() + 0.5 - row) < 3 and abs(cols.mean() + 0.5 - col) < 3, \
            f"goal at ({rows.mean():.1f}, {cols.mean():.1f}), expected ({row:.1f}, {col:.1f})"


def test_tasks_benchmarks_and_errors():
    specs, bench = resolve_tasks("MT10")
    assert len(specs) == 10 and bench == "MT10" and all(s.split == "train" for s in specs)
    specs, _ = resolve_tasks("MT50")
    assert len(specs) == 50 and all(s.name in TASK_INSTRUCTIONS for s in specs)
    assert len({s.instruction for s in specs}) == 50
    test_specs, _ = resolve_tasks("ML10-test")
    assert len(test_specs) == 5 and all(s.split == "heldout" for s in test_specs)
    train_specs, _ = resolve_tasks("ML10-train")
    assert len(train_specs) == 10 and not {s.name for s in train_specs} & {s.name for s in test_specs}
    assert [s.name for s in resolve_tasks("MT1:push-v3")[0]] == ["push-v3"]
    assert [s.name for s in resolve_tasks(["reach-v3", " drawer-close-v3"])[0]] == ["reach-v3", "drawer-close-v3"]
    assert [s.name for s in resolve_tasks(None)[0]] == ["reach-v3"]
    e = MetaWorldEnv(tasks="drawer-open-v3", benchmark="ML10")  # no sims built until reset
    assert e.spec.tasks[0].split == "heldout" and e.spec.extra["benchmark"] == "ML10"
    with pytest.raises(EnvError, match="unknown metaworld task 'reach-v9'"):
        MetaWorldEnv(tasks="reach-v3,reach-v9")
    with pytest.raises(EnvError, match="camera"):
        MetaWorldEnv(camera="nope")
    with pytest.raises(EnvError, match="not in benchmark"):
        MetaWorldEnv(tasks="soccer-v3", benchmark="MT10")


def test_eval_tasks_take_a_benchmark_name_among_the_run_tasks():
    from vlaforge.envs import eval_task_names, suite_spec

    mt10 = suite_spec("metaworld", "MT10")  # no simulator is built before a reset
    names = [t.name for t in mt10.tasks]
    assert eval_task_names("metaworld", mt10, "MT10") == names and len(names) == 10
    assert eval_task_names("metaworld", mt10, "reach-v3,push-v3") == ["reach-v3", "push-v3"]
    assert eval_task_names("metaworld", mt10, None) == names
    two = suite_spec("metaworld", "reach-v3,push-v3")
    with pytest.raises(EnvError, match="unknown task 'pick-place-v3'"):  # MT10 holds tasks the run's envs lack
        eval_task_names("metaworld", two, "MT10")
    with pytest.raises(EnvError, match="unknown metaworld task 'MT99'"):
        eval_task_names("metaworld", two, "MT99")


def test_bad_actions_and_task_ids(env):
    env.reset(0, 0)
    with pytest.raises(EnvError, match="shape"):
        env.step_chunk(np.zeros(4, np.float32))
    with pytest.raises(EnvError, match="shape"):
        env.step_chunk(np.zeros((2, 3), np.float32))
    with pytest.raises(EnvError, match="out of range"):
        env.reset(2, 0)


def test_shaping_is_potential_based_on_metaworlds_own_reward():
    w = 3.0
    env = MetaWorldEnv(tasks="reach-v3", image_size=16, max_steps=150, shaping=w)
    try:
        env.reset(0, 5)
        sim = env._sim.env
        phi0 = sim.evaluate_state(env._obs, np.zeros(4, np.float32))[0] / 10.0
        total, done = 0.0, False
        while not done:
            r = env.step_chunk(env.expert_action()[None])
            total, done = total + r.reward, r.done
        phiT = sim.evaluate_state(env._obs, np.zeros(4, np.float32))[0] / 10.0
        assert r.success  # the expert solves reach within 150 steps
        assert total == pytest.approx(w * (phiT - phi0) + 1.0, abs=1e-6)
    finally:
        env.close()
    with pytest.raises(EnvError, match="shaping"):
        MetaWorldEnv(tasks="reach-v3", shaping=float("nan"))


def test_privileged_state_and_no_render():
    plain = MetaWorldEnv(tasks="reach-v3", image_size=16)
    env = MetaWorldEnv(tasks="reach-v3", image_size=16, privileged=True, render=False)
    try:
        assert env.spec.state_dim == 13 and env.spec.renderer == "none" and plain.spec.state_dim == 4
        img, st = env.reset(0, 7)
        _, st_plain = plain.reset(0, 7)
        full = env.sim_state()
        assert st.shape == (13,) and img.shape == (1, 16, 16, 3) and not img.any()
        np.testing.assert_array_equal(st[:4], st_plain)  # proprioception first, as without privileged
        np.testing.assert_allclose(st[4:7], full[4:7])  # object 0 position
        np.testing.assert_allclose(st[10:], full[-3:])  # goal position
        other_img, other_st = env.reset(0, 8)
        assert not np.allclose(other_st[10:], st[10:])  # reach's goal moves with the seed, and the state shows it
        r = env.step_chunk(np.ones((3, 4), np.float32))
        assert r.state.shape == (13,) and not r.image.any()
        venv = make_vec_env("metaworld", num_envs=2, tasks="reach-v3", workers=0, privileged=1.0, render=0.0)
        try:
            check_env(venv)
        finally:
            venv.close()
    finally:
        env.close()
        plain.close()


def test_render_off_refuses_image_policies(tmp_path):
    from vlaforge.algos.sft import SFTConfig
    from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs, run_collect, run_eval, run_sft

    kw = {"privileged": 1.0, "render": 0.0, "max_steps": 150.0}  # the reach expert needs ~50 steps
    demos = tmp_path / "demos"
    run_collect(CollectArgs(suite="metaworld", tasks="reach-v3", episodes=2, out=str(demos), num_envs=2,
                            env_kwargs=kw), quiet=True)
    with pytest.raises(ValueError, match="render 0"):
        run_sft(SFTArgs(demos=str(demos), out=str(tmp_path / "vis"), backbone="vision", sft=SFTConfig(steps=1)),
                quiet=True)
    assert not (tmp_path / "vis").exists()
    policy, _ = run_sft(SFTArgs(demos=str(demos), out=str(tmp_path / "st"), backbone="state",
                                sft=SFTConfig(steps=2, batch_size=4)), quiet=True)
    assert policy.cfg.state_dim == 13
    res, _ = run_eval(EvalArgs(checkpoint=str(tmp_path / "st"), suite="metaworld", tasks="reach-v3", episodes=2,
                               num_envs=2, env_kwargs=kw, out=str(tmp_path / "ev.json")), quiet=True)
    assert res[0].episodes == 2
    with pytest.raises(ValueError, match="state/action dims 13/4"):  # the same policy without privileged state
        run_eval(EvalArgs(checkpoint=str(tmp_path / "st"), suite="metaworld", tasks="reach-v3", episodes=2,
                          num_envs=2, env_kwargs={"max_steps": 20.0}, out=str(tmp_path / "ev2.json")), quiet=True)


def test_goal_marker_pixels_count_only_the_goal_site(tmp_path):
    """benchmarks/goal_pixels.py: reach-v3's goal marker covers a few pixels of the frame and more at a larger size;
    a task without a goal site (button-press-topdown) says so instead of counting."""
    from helpers import benchmark_script

    mod = benchmark_script("goal_pixels")
    data = mod.main(["--tasks", "reach-v3,button-press-topdown-v3", "--sizes", "64,128", "--layouts", "3",
                     "--out", str(tmp_path / "g.json")])
    rows = {(r["task"], r["image_size"]): r for r in data["rows"]}
    small, large = rows[("reach-v3", 64)], rows[("reach-v3", 128)]
    assert 0 < small["mean_px"] and small["max_px"] < 0.01 * small["frame_px"]
    assert large["mean_px"] > small["mean_px"]
    assert rows[("button-press-topdown-v3", 64)]["goal_site"] is False
    assert rows[("button-press-topdown-v3", 64)]["mean_px"] is None
    assert json.loads((tmp_path / "g.json").read_text())["rows"] == data["rows"]
    for bad in (["--sizes", "64,x"], ["--tasks", "nosuch-v3"], ["--layouts", "0"]):
        with pytest.raises(SystemExit) as e:
            mod.main([*bad, "--out", str(tmp_path / "h.json")])
        assert e.value.code == 2 and not (tmp_path / "h.json").exists()


def test_fast_renderer_makes_no_shadow_map_and_draws_the_same_frame():
    """mjrender.fast_render_settings sets shadowsize 0 (the GL context would otherwise allocate a 4096² shadow map per
    renderer, ~60 MB; shadows are off anyway) and an offscreen buffer of the frame's size, and the frame equals one
    drawn with the model's own shadow map and buffer sizes."""
    import mujoco

    from vlaforge.envs import mjrender
    from vlaforge.envs.metaworld import _env_dict

    cls = _env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE["reach-v3-goal-observable"]
    plain, fast = cls(seed=0), cls(seed=0)
    size, off = plain.model.vis.quality.shadowsize, (plain.model.vis.global_.offwidth, plain.model.vis.global_.offheight)
    assert size > 0 and min(off) > 32
    r_fast = mjrender.FastRenderer(fast.model, 32, 32)
    assert fast.model.vis.quality.shadowsize == 0
    assert (fast.model.vis.global_.offwidth, fast.model.vis.global_.offheight) == (32, 32)
    mjrender.fast_render_settings(plain.model, 32, 32)
    plain.model.vis.quality.shadowsize = size  # everything else the same: the model's own shadow map and buffer
    plain.model.vis.global_.offwidth, plain.model.vis.global_.offheight = off
    r_plain = mujoco.Renderer(plain.model, 32, 32)
    for flag in (mujoco.mjtRndFlag.mjRND_REFLECTION, mujoco.mjtRndFlag.mjRND_SHADOW):
        r_plain.scene.flags[flag] = 0
    try:
        plain.reset()
        fast.reset()
        r_plain.update_scene(plain.data, "corner")
        assert np.array_equal(r_fast.render(fast.data, "corner"), r_plain.render())
    finally:
        r_fast.close()
        r_plain.close()
        plain.close()
        fast.close()


def test_peer_sb3_scores_an_sb3_model_through_evaluate_policy():
    """benchmarks/peer_sb3.py wraps an SB3 model (anything with ``predict``) in vlaforge's Policy contract: the
    evaluation runs on the 50 held-out seeds with deterministic actions, one 4-D action per decision."""
    from helpers import benchmark_script

    mod = benchmark_script("peer_sb3")

    class Still:  # SB3's predict(obs, deterministic) -> (actions (N, 4), states); never moves the arm
        calls: list = []

        def predict(self, obs, deterministic=False):
            self.calls.append((obs.shape, deterministic))
            return np.zeros((len(obs), 4), np.float32), None

    model = Still()
    mod.EVAL_EPISODES, mod.MAX_STEPS = 10, 20  # the benchmark's 50 episodes of 150 steps, shortened
    successes = mod.evaluate(mod.sb3_policy(model), "reach-v3", 1.0)
    assert successes == 0  # reach-v3 never starts solved
    assert model.calls and all(shape == (10, 13) and det for shape, det in model.calls)
    assert len(model.calls) == 20  # 10 episodes on 10 envs, 20 decisions of one step each


def test_env_cache_benchmark_writes_its_rows(tmp_path):
    from helpers import benchmark_script

    mod = benchmark_script("env_cache")
    out = tmp_path / "c.json"
    data = mod.main(["--tasks", "reach-v3,push-v3,door-open-v3", "--num-envs", "2", "--cache", "1", "--no-affinity",
                     "--batches", "3", "--warmup", "1", "--max-steps", "8", "--out", str(out)])
    rows = {(r["cache"], r["affinity"]): r for r in data["rows"]}
    assert set(rows) == {(1, True), (1, False)}
    assert all((r["episodes"], r["env_steps"]) == (6, 48) for r in rows.values())  # the same random episodes
    assert rows[(1, False)]["sims_built"] >= 1 and all(r["rss_mb"] > 0 for r in rows.values())
    assert json.loads(out.read_text())["rows"] == data["rows"]
    for bad in (["--num-envs", "0"], ["--tasks", "reach-v9"]):
        with pytest.raises(SystemExit) as e:
            mod.main(bad + ["--out", str(tmp_path / "x.json")])
        assert e.value.code == 2 and not (tmp_path / "x.json").exists()


def test_benchmark_scripts_refuse_bad_input_in_one_line(tmp_path):
    """env_memory.py --cache, peer_sb3.py --ppo-chunk / --ppo-log-std, goal_pixels.py --tasks: exit 2, no file."""
    from helpers import benchmark_script

    out = tmp_path / "x.json"
    for name, argv in (("env_memory", ["--cache", "-1"]), ("peer_sb3", ["--ppo-chunk", "0"]),
                       ("peer_sb3", ["--ppo-log-std", "2"]), ("goal_pixels", ["--tasks", "reach-v9"]),
                       ("goal_pixels", ["--sizes", "64,x"])):
        with pytest.raises(SystemExit) as e:
            benchmark_script(name).main(argv + ["--out", str(out)])
        assert e.value.code == 2 and not out.exists(), (name, argv)
