"""Batched simulation on a device (envs/batched.py): one simulator of N scenes behind the VecEnv contract,
observations that stay on its device through ``collect()``, and the same episodes as the per-scene envs.

PointReach's torch simulator (``--env-kwargs sim_backend torch``) is the batched simulator CI can run; the
ManiSkill one (``sim_backend gpu``) needs CUDA for more than one scene, so here it runs its one-scene CPU form
against ManiSkill's real API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from device_audit import FAKE, DeviceAudit, tagged

from vlaforge.envs import EnvError, check_env, make_vec_env
from vlaforge.envs.batched import BatchedVecEnv
from vlaforge.policies import build_policy
from vlaforge.rollout.collect import collect


def _pair(n=6, **kw):
    host = make_vec_env("pointreach", n, image_size=32, max_steps=9, **kw)
    batched = make_vec_env("pointreach", n, image_size=32, max_steps=9, sim_backend="torch", **kw)
    return host, batched


def test_the_torch_pointreach_passes_the_contract_with_tensors_on_its_device():
    venv = make_vec_env("pointreach", 4, image_size=32, sim_backend="torch")
    assert isinstance(venv, BatchedVecEnv) and venv.device == torch.device("cpu")
    check_env(venv)
    obs = venv.reset(np.zeros(4, np.int64), np.arange(4))
    assert isinstance(obs.images, torch.Tensor) and obs.images.dtype == torch.uint8
    assert obs.images.shape == (4, 1, 32, 32, 3) and obs.sim_state.shape == (4, 10)
    assert make_vec_env("pointreach", 2).device is None  # the per-scene vector envs stay numpy


@pytest.mark.parametrize("kw", [{}, {"privileged": True, "shaping": 1.0}])
def test_batched_episodes_equal_the_per_scene_envs(kw):
    """Same (task, seed) pairs, grouped resets included, and the same action chunks: the same frames, states,
    rewards, successes, ends and step counts as the numpy arenas, chunk after chunk (envs that end inside a
    chunk hold still, as an ended numpy arena ignores actions)."""
    host, batched = _pair(**kw)
    tids, seeds = np.array([0, 0, 1, 2, 2, 3]), np.array([5, 5, 6, 7, 7, 8])
    a, b = host.reset(tids, seeds), batched.reset(tids, seeds)
    assert np.array_equal(a.images, b.images.numpy()) and np.allclose(a.state, b.state.numpy())
    assert np.allclose(a.sim_state, b.sim_state.numpy()) and a.instructions == b.instructions
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(6):
        act = rng.uniform(-1.3, 1.3, (6, 3, 2)).astype(np.float32)
        act[:, :, :] += np.where(rng.random((6, 1, 1)) < 0.5, 0.0, 0.6)  # some drift so that episodes succeed
        x, y = host.step(act), batched.step(torch.as_tensor(act))
        assert np.array_equal(x.obs.images, y.obs.images.numpy())
        assert np.allclose(x.obs.state, y.obs.state.numpy(), atol=1e-6)
        for k in ("success", "done", "truncated", "steps"):
            assert np.array_equal(getattr(x, k), getattr(y, k)), k
        assert np.array_equal(x.reward, y.reward)  # summed in float64 and cast once, as SimEnv does
        ended += int(x.done.sum())
    assert ended > 0
    assert np.allclose(host.expert_actions(), batched.expert_actions(), atol=1e-6)


def test_collect_keeps_a_batched_simulators_observations_on_its_device(tmp_path):
    """The stand-in device: the simulator and the policy on FAKE; a rollout's observations never cross to the
    host (they are tagged, no op mixes devices), and its numbers equal the host env's rollout for the same seed."""
    torch.manual_seed(0)
    pol = build_policy("tiny", state_dim=2, action_dim=2, views=1, image_size=32, chunk_size=3)
    host = make_vec_env("pointreach", 4, image_size=32, max_steps=9)
    tids, seeds = np.zeros(4, np.int64), np.array([3, 3, 4, 4])
    torch.manual_seed(1)
    ref, _ = collect(pol, host, tids, seeds)
    pol.to(FAKE)
    with DeviceAudit(pol) as audit:
        venv = make_vec_env("pointreach", 4, image_size=32, max_steps=9, sim_backend="torch", sim_device="cpu:0")
        torch.manual_seed(1)
        r, stats = collect(pol, venv, tids, seeds)
        assert tagged(r.obs_images) and tagged(r.obs_state) and tagged(r.log_prob) and tagged(r.reward)
    assert audit.violations == [], "\n".join(audit.violations)
    for k in ("obs_images", "alive", "success", "executed"):
        assert torch.equal(getattr(ref, k), getattr(r, k).cpu()), k
    for k in ("actions", "log_prob", "reward", "obs_state", "sim_state"):  # float64 vs float32 rounding
        assert torch.allclose(getattr(ref, k), getattr(r, k).cpu(), atol=1e-5), (k, (getattr(ref, k) - getattr(r, k)).abs().max())
    assert stats.env_steps == int(ref.env_steps.sum())


def test_a_training_run_on_the_batched_simulator(tmp_path):
    from vlaforge.train.loop import TrainConfig, train

    cfg = TrainConfig(algo="grpo", suite="pointreach", tasks="train", iterations=2, groups=2, num_envs=4,
                      max_steps=8, image_size=32, env_kwargs={"sim_backend": "torch"}, eval_every=0, progress=False,
                      tensorboard=False, out=str(tmp_path / "run"), threads=1)
    cfg.grpo.group_size = 2
    train(cfg)
    assert (tmp_path / "run" / "final").exists()


def test_bad_batched_options_are_one_line_errors():
    with pytest.raises(EnvError, match="sim_backend must be numpy"):
        make_vec_env("pointreach", 2, sim_backend="jax")
    with pytest.raises(EnvError, match="drop --workers"):
        make_vec_env("pointreach", 2, workers=2, sim_backend="torch")
    with pytest.raises(EnvError, match="sim_device 'tpu'"):
        make_vec_env("pointreach", 2, sim_backend="torch", sim_device="tpu")
    venv = make_vec_env("pointreach", 2, sim_backend="torch")
    venv.reset([0, 0], [1, 1])
    with pytest.raises(EnvError, match="shape"):
        venv.step(np.zeros((2, 2), np.float32))
    with pytest.raises(EnvError, match="NaN"):
        venv.step(np.full((2, 1, 2), np.nan, np.float32))


def test_maniskill_batch_on_manikills_api_one_scene():
    """ManiSkill's batched env on its CPU backend (one scene: the CPU backend allows no more): partial reset by
    env_idx, state copy, step and observation, and the same start as the per-scene env of that seed."""
    ms = pytest.importorskip("vlaforge.envs.maniskill", reason="ManiSkill3 is an optional extra")
    try:
        sim = ms.ManiSkillBatch(1, "pick-cube", image_size=32, sim_backend="cpu", render=False)
    except ms.MissingExtra as e:
        pytest.skip(f"no Vulkan driver for SAPIEN: {e}")
    one = ms.ManiSkillEnv("pick-cube", image_size=32, sim_backend="cpu", render=False)
    try:
        venv = BatchedVecEnv(sim)
        obs = venv.reset([0], [11])
        _, state = one.reset(0, 11)
        assert obs.state.shape == (1, 16) and np.allclose(obs.state.numpy()[0], state, atol=1e-5)
        sim.copy_state(torch.tensor([0]), torch.tensor([0]))
        assert np.allclose(sim.observe()[1].numpy()[0], state, atol=1e-5)
        ex = venv.expert_actions()
        assert ex.shape == (1, 7) and np.allclose(ex[0], one.expert_action())
        st = venv.step(torch.as_tensor(np.repeat(ex[:, None], 2, 1)))
        ref = one.step_chunk(np.repeat(ex, 2, 0))
        assert st.steps.tolist() == [2] and np.allclose(st.obs.state.numpy()[0], ref.state, atol=1e-4)
        with pytest.raises(EnvError, match="one task per run"):
            ms.ManiSkillBatch(4, "pick-cube,stack-cube", sim_backend="gpu")
    finally:
        venv.close()
        one.close()


@pytest.mark.parametrize("args,words", [
    (["--env-kwargs", "sim_backend", "torch", "--workers", "2"], ["drop --workers"]),
    (["--env-kwargs", "sim_backend", "jax"], ["sim_backend must be numpy"]),
    (["--env-kwargs", "radius", "big"], ["radius must be a number"]),
    (["--env-kwargs", "sim_backend", "1"], ["sim_backend is a text option"]),
])
def test_the_cli_refuses_bad_batched_options_before_work(tmp_path, capsys, args, words):
    from vlaforge.cli import main

    out = tmp_path / "run"
    code = main(["train", "--suite", "pointreach", "--iterations", "1", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not out.exists()


def test_a_cli_resume_may_name_where_it_runs(tmp_path, capsys):
    """--device, --deterministic and --log are the resuming command line's (docs/gpu.md), not refused as changes."""
    from vlaforge.cli import main

    out = tmp_path / "run"
    base = ["--suite", "pointreach", "--iterations", "1", "--groups", "2", "--num-envs", "2", "--max-steps", "6",
            "--image-size", "32", "--eval-every", "0", "--no-progress", "--no-tensorboard", "--threads", "1"]
    assert main(["train", *base, "--out", str(out)]) == 0
    assert main(["train", "--resume", str(out / "checkpoint"), "--device", "cpu", "--deterministic",
                 "--log", "none"]) == 0, capsys.readouterr().err
