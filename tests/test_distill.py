"""Privileged-teacher distillation (DAgger) through the training loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlaforge.envs import make_vec_env
from vlaforge.policies import build_policy, load_policy, save_policy
from vlaforge.train.loop import TrainConfig, train


def _setup(tmp_path):
    spec = make_vec_env("pointreach", 1).spec
    torch.manual_seed(0)
    # the teacher reads (ee_x, ee_y, goal_x, goal_y) from sim_state; a random state policy is a fine target
    teacher = build_policy(backbone="state", state_dim=4, action_dim=spec.action_dim)
    save_policy(teacher, tmp_path / "teacher")
    save_policy(build_policy(state_dim=spec.state_dim, action_dim=spec.action_dim), tmp_path / "student")
    return teacher


def _cfg(tmp_path, out, iterations):
    cfg = TrainConfig(algo="distill", init=str(tmp_path / "student"), out=str(tmp_path / out), iterations=iterations,
                      groups=4, num_envs=4, max_steps=12, eval_every=0, progress=False, tensorboard=False, threads=1,
                      lr=1e-3)
    cfg.distill.teacher, cfg.distill.teacher_state = str(tmp_path / "teacher"), "0,1,2,3"
    cfg.distill.steps, cfg.distill.batch_size = 25, 32
    return cfg


def _gap(student, teacher) -> float:
    from vlaforge.rollout.collect import collect

    venv = make_vec_env("pointreach", 8)
    r, _ = collect(student, venv, np.arange(8) % len(venv.spec.tasks), np.arange(8) + 123, deterministic=True)
    venv.close()
    obs = [(t, n) for t in range(r.obs_state.shape[0]) for n in range(8) if r.alive[t, n]]
    from vlaforge.types import Observation

    t_idx, n_idx = torch.tensor([o[0] for o in obs]), torch.tensor([o[1] for o in obs])
    o = Observation(r.obs_images[t_idx, n_idx], r.obs_state[t_idx, n_idx], [r.instructions[int(i)] for i in n_idx],
                    r.task_id[n_idx])
    blank = Observation(torch.zeros(len(t_idx), 1, 1, 1, 3, dtype=torch.uint8), r.sim_state[t_idx, n_idx][:, :4],
                        o.instructions, o.task_ids)
    with torch.no_grad():
        return float((student.act(o, deterministic=True).actions - teacher.act(blank, deterministic=True).actions).abs().mean())


def test_dagger_moves_the_pixel_student_towards_the_teacher(tmp_path):
    teacher = _setup(tmp_path)
    before = _gap(load_policy(tmp_path / "student"), teacher)
    train(_cfg(tmp_path, "run", 4))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train/aggregate_frames"] > lines[0]["train/aggregate_frames"] > 0
    after = _gap(load_policy(tmp_path / "run" / "final"), teacher)
    assert after < 0.6 * before, (before, after)


class _Crash(Exception):
    pass


def test_distill_resume_is_exact(tmp_path):
    from vlaforge.hooks import Hooks

    class CrashAtSecond(Hooks):
        def after_iteration(self, it, policy, rollout):
            if it == 1:
                raise _Crash  # the iteration-1 checkpoint (aggregate included) is on disk; iteration 2 is lost
            return {}

    _setup(tmp_path)
    train(_cfg(tmp_path, "straight", 3))
    with pytest.raises(_Crash):
        train(_cfg(tmp_path, "split", 3), CrashAtSecond())
    cfg = _cfg(tmp_path, "split", 3)
    cfg.resume, cfg.init = str(tmp_path / "split" / "checkpoint"), None
    train(cfg)
    a, b = load_policy(tmp_path / "straight" / "final"), load_policy(tmp_path / "split" / "final")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k


def test_distill_refuses_a_teacher_that_does_not_fit(tmp_path):
    _setup(tmp_path)
    cfg = _cfg(tmp_path, "bad", 1)
    cfg.distill.teacher_state = "0,1,2"
    with pytest.raises(ValueError, match="teacher"):
        train(cfg)


def test_a_student_with_a_readout_keeps_fitting_it_on_the_aggregate(tmp_path):
    """A student SFT'd with --aux: DAgger's cloning steps also fit its perception readout to the frames' recorded
    sim_state (a target, never an input), so the readout moves and its loss is logged."""
    _setup(tmp_path)
    spec = make_vec_env("pointreach", 1).spec
    torch.manual_seed(1)
    student = build_policy(state_dim=spec.state_dim, action_dim=spec.action_dim, aux_index=[2, 3],
                           sim_state_dim=len(spec.sim_state_names), aux_weight=1.0)
    save_policy(student, tmp_path / "student")
    before = {k: v.clone() for k, v in student.aux_head.state_dict().items()}
    train(_cfg(tmp_path, "aux", 2))
    lines = [json.loads(x) for x in (tmp_path / "aux" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(x["train/aux/mse"]) for x in lines if "train/loss" in x)
    after = load_policy(tmp_path / "aux" / "final").aux_head.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_privileged_teacher_can_start_from_the_demos(tmp_path):
    """pipeline.privileged_teacher(demos=N): N privileged, camera-less demos with the given seed → state SFT → PPO;
    the teacher reads the 13 privileged dims its returned indices name, and a rerun into the same folder replaces
    (never reuses) the demos."""
    pytest.importorskip("metaworld")
    from vlaforge.pipeline import privileged_teacher

    def episodes():
        meta = tmp_path / "t" / "demos" / "meta"
        return json.loads((meta / "info.json").read_text()), [json.loads(x) for x in
                                                               (meta / "episodes.jsonl").read_text().splitlines() if x]

    kw = dict(iterations=1, seed=3, max_steps=20, num_envs=2, demos=2, sft_steps=5)
    final, index = privileged_teacher("metaworld", "reach-v3", tmp_path / "t", **kw)
    teacher = load_policy(final)
    assert teacher.cfg.state_dim == len(index.split(",")) == 13
    info, eps = episodes()
    assert info["renderer"] == "none" and len(eps) == 2
    assert [e["seed"] for e in eps] == [3 * 100_003 + 1_000_000 + k for k in range(2)]
    privileged_teacher("metaworld", "push-v3", tmp_path / "t", **kw)
    assert {e["task_name"] for e in episodes()[1]} == {"push-v3"}


def test_check_teacher_refuses_a_teacher_worse_than_its_student():
    from vlaforge.algos.distill import check_teacher
    from vlaforge.errors import UsageError

    with pytest.raises(UsageError, match=r"0/50 .* \(8/50 on the same seeds\)") as e:
        check_teacher({"successes": 0, "episodes": 50}, {"successes": 8, "episodes": 50})
    assert "\n" not in str(e.value)
    check_teacher({"successes": 8, "episodes": 50}, {"successes": 8, "episodes": 50})  # as good: distilled
    check_teacher({"successes": 50, "episodes": 50}, {"successes": 8, "episodes": 50})


def test_privileged_teacher_is_refused_when_worse_than_the_student(tmp_path):
    """pipeline.privileged_teacher(student=...) evaluates the teacher on the student's evaluation seeds and refuses
    one that does worse (a 1-iteration teacher from 2 demos and 5 SFT steps against a student at 4/4)."""
    pytest.importorskip("metaworld")
    from vlaforge.errors import UsageError
    from vlaforge.pipeline import privileged_teacher

    kw = dict(iterations=1, seed=3, max_steps=20, num_envs=2, demos=2, sft_steps=5)
    with pytest.raises(UsageError, match="fewer than the student"):
        privileged_teacher("metaworld", "reach-v3", tmp_path / "t", **kw, student={"successes": 4, "episodes": 4})
    privileged_teacher("metaworld", "reach-v3", tmp_path / "t", **kw, student={"successes": 0, "episodes": 4})
