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


def test_privileged_teacher_with_no_ppo_is_its_sft_policy(tmp_path):
    """privileged_teacher(iterations=0): the SFT policy on the demos is the teacher (written as ``final``, with its
    state fields; no PPO run, so no metrics); without demos it is refused, before any work."""
    pytest.importorskip("metaworld")
    from vlaforge.errors import UsageError
    from vlaforge.pipeline import privileged_teacher

    final, _ = privileged_teacher("metaworld", "reach-v3", tmp_path / "t", iterations=0, max_steps=20, num_envs=2,
                                  demos=2, sft_steps=5)
    assert final == tmp_path / "t" / "final" and load_policy(final).cfg.state_dim == 13
    assert json.loads((final / "config.json").read_text())["state_fields"][:4] == ["ee_x", "ee_y", "ee_z", "gripper"]
    assert not (tmp_path / "t" / "metrics.jsonl").exists() and not (tmp_path / "t" / "sft").exists()
    with pytest.raises(UsageError, match="needs demos"):
        privileged_teacher("metaworld", "reach-v3", tmp_path / "u", iterations=0, demos=0)
    assert not (tmp_path / "u").exists()


def test_cache_refuses_a_teacher_with_neither_demos_nor_ppo(tmp_path, capsys):
    pytest.importorskip("metaworld")
    from vlaforge.cli import main

    assert main(["train", "--algo", "distill", "--suite", "metaworld", "--tasks", "reach-v3",
                 "--distill.teachers-cache", str(tmp_path / "c"), "--distill.teacher-iterations", "0",
                 "--distill.teacher-demos", "0", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--distill.teacher-demos" in err and not (tmp_path / "r").exists()


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


# ---- multi-task distillation (issue 23 part 4): fields by name, one teacher per task, the teacher cache ----

def test_teacher_state_by_names_groups_and_the_older_indices():
    from vlaforge.algos.distill import state_fields
    from vlaforge.errors import UsageError

    names = ("ee_x", "ee_y", "goal_x", "goal_y", "obj_x")
    groups = {"priv": ("ee_x", "goal_x")}
    assert state_fields("goal_y, ee_x", names) == ("goal_y", "ee_x")  # the teacher's order, not the suite's
    assert state_fields("priv,obj_x", names, groups) == ("ee_x", "goal_x", "obj_x")  # a group expands in place
    assert state_fields("3,0", names) == ("goal_y", "ee_x")  # the index form of older configs and checkpoints
    with pytest.raises(UsageError, match=r"unknown sim_state field 'bogus'; valid: priv \(group\), ee_x, ee_y, "
                                         r"goal_x, goal_y, obj_x$") as e:
        state_fields("ee_x,bogus", names, groups)
    assert "\n" not in str(e.value)
    with pytest.raises(UsageError, match=r"index 7 is outside the suite's 5 sim_state entries"):
        state_fields("0,7", names)
    with pytest.raises(UsageError, match="empty"):
        state_fields(" , ", names)
    with pytest.raises(UsageError, match="no sim_state channel"):
        state_fields("ee_x", ())


def test_metaworld_privileged_group_is_the_old_index_list():
    """``--distill.teacher-state privileged`` reads exactly the sim_state entries the older index form named."""
    pytest.importorskip("metaworld")
    from vlaforge.algos.distill import state_fields
    from vlaforge.envs.metaworld import PRIVILEGED_STATE_NAMES, SIM_STATE_NAMES

    fields = state_fields("privileged", SIM_STATE_NAMES, {"privileged": PRIVILEGED_STATE_NAMES})
    assert [SIM_STATE_NAMES.index(f) for f in fields] == [0, 1, 2, 3, 4, 5, 6, 11, 12, 13, 36, 37, 38]
    assert fields == state_fields("0,1,2,3,4,5,6,11,12,13,36,37,38", SIM_STATE_NAMES)


def test_teacher_paths_one_dir_a_mapping_or_a_folder_of_tasks(tmp_path):
    from vlaforge.algos.distill import ALL_TASKS, teacher_paths
    from vlaforge.errors import UsageError

    p = build_policy(backbone="state", state_dim=2, action_dim=2)
    save_policy(p, tmp_path / "one")
    save_policy(p, tmp_path / "many" / "red-0")
    save_policy(p, tmp_path / "many" / "green-0")
    (tmp_path / "many" / "notes").mkdir()  # not a policy: not a teacher
    assert teacher_paths(str(tmp_path / "one")) == {ALL_TASKS: str(tmp_path / "one")}
    assert teacher_paths(str(tmp_path / "many")) == {"green-0": str(tmp_path / "many" / "green-0"),
                                                     "red-0": str(tmp_path / "many" / "red-0")}
    assert teacher_paths("red-0=a/b, green-0=c") == {"red-0": "a/b", "green-0": "c"}
    assert teacher_paths("") == {}
    for bad, msg in [("red-0=a,red-0=b", "twice"), ("red-0=a,green-0", "TASK=DIR"), ("=a", "TASK=DIR")]:
        with pytest.raises(UsageError, match=msg):
            teacher_paths(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a policy"):
        teacher_paths(str(tmp_path / "empty"))


def _two_teachers(tmp_path):
    """Two state teachers that read different sim_state fields (recorded in their checkpoints) and act differently."""
    out = {}
    for seed, name, fields in [(1, "a", ["ee_x", "ee_y"]), (2, "b", ["goal_x", "goal_y"])]:
        torch.manual_seed(seed)
        save_policy(build_policy(backbone="state", state_dim=2, action_dim=2), tmp_path / name,
                    extra={"state_fields": fields})
        out[name] = load_policy(tmp_path / name).eval()
    return out


def test_each_frame_is_labelled_by_its_own_tasks_teacher(tmp_path, capsys):
    """Task 0's frames get teacher a's chunk on (ee_x, ee_y), task 1's teacher b's on (goal_x, goal_y) — the fields
    each checkpoint records, no --distill.teacher-state; task 2 has no teacher: unlabelled, one logged line."""
    from types import SimpleNamespace

    from vlaforge.algos.distill import DistillConfig, DistillState
    from vlaforge.envs import suite_spec
    from vlaforge.types import Observation

    spec = suite_spec("pointreach")
    teachers = _two_teachers(tmp_path)
    t0, t1, t2 = (spec.tasks[i].name for i in range(3))
    student = build_policy(state_dim=spec.state_dim, action_dim=spec.action_dim)
    cfg = DistillConfig(teacher=f"{t0}={tmp_path / 'a'},{t1}={tmp_path / 'b'}")
    state = DistillState(student, cfg, spec)
    torch.manual_seed(3)
    task_ids = torch.tensor([0, 1, 2, 1, 0, 2])
    sim = torch.randn(6, len(spec.sim_state_names))
    batch = SimpleNamespace(task_ids=task_ids, sim_state=sim, actions=torch.zeros(6, student.chunk_size, 2),
                            instructions=[spec.tasks[int(t)].instruction for t in task_ids])
    labels, labelled = state.label(batch, student.chunk_size)
    state.label(batch, student.chunk_size)  # a second batch logs nothing new

    def act(teacher, rows, cols):
        obs = Observation(torch.zeros(len(rows), 1, 1, 1, 3, dtype=torch.uint8), sim[rows][:, cols],
                          ["x"] * len(rows), task_ids[rows])
        with torch.no_grad():
            return teacher.act(obs, deterministic=True).actions[:, :student.chunk_size]

    a_rows, b_rows = torch.tensor([0, 4]), torch.tensor([1, 3])
    assert labelled.tolist() == [True, True, False, True, True, False]
    torch.testing.assert_close(labels[a_rows], act(teachers["a"], a_rows, [0, 1]))
    torch.testing.assert_close(labels[b_rows], act(teachers["b"], b_rows, [2, 3]))
    assert (labels[b_rows] - act(teachers["a"], b_rows, [0, 1])).abs().max() > 1e-3  # the teachers are told apart
    assert not labels[torch.tensor([2, 5])].any()
    logged = [x for x in capsys.readouterr().out.splitlines() if "has no teacher" in x]
    assert logged == [f"distill: task {t2} has no teacher; its frames are not labelled"]


def test_multitask_distill_trains_only_on_taught_tasks(tmp_path):
    """Three tasks, teachers for two (a folder of per-task teachers), --curriculum need: the student's parameters
    move, the untaught task's frames are counted and never aggregated, per-task rollout success is logged."""
    import shutil

    from vlaforge.envs import suite_spec

    spec = suite_spec("pointreach")
    _two_teachers(tmp_path)
    t0, t1, t2 = (spec.tasks[i].name for i in range(3))
    (tmp_path / "teachers").mkdir()
    shutil.copytree(tmp_path / "a", tmp_path / "teachers" / t0)
    shutil.copytree(tmp_path / "b", tmp_path / "teachers" / t1)
    torch.manual_seed(0)
    student = build_policy(state_dim=spec.state_dim, action_dim=spec.action_dim)
    save_policy(student, tmp_path / "student")
    cfg = TrainConfig(algo="distill", init=str(tmp_path / "student"), out=str(tmp_path / "run"), iterations=2,
                      tasks=f"{t0},{t1},{t2}", groups=6, num_envs=6, max_steps=8, eval_every=0, progress=False,
                      tensorboard=False, threads=1, lr=1e-3, curriculum="need")
    cfg.distill.teacher = str(tmp_path / "teachers")
    cfg.distill.steps, cfg.distill.batch_size = 5, 16
    train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum(x["train/unlabelled_frames"] for x in lines) > 0  # need-weighted sampling rolled task 2 out too
    assert all(x["train/aggregate_frames"] > 0 for x in lines)
    assert any(k.startswith("rollout_task/") for k in lines[-1])
    after = load_policy(tmp_path / "run" / "final")
    moved = [k for k, v in student.state_dict().items() if not torch.equal(v, after.state_dict()[k])]
    assert moved


def test_teacher_cache_builds_once_then_reuses_and_skips_worse_teachers(tmp_path):
    """pipeline.distill_teachers: the first call builds each task's teacher into the cache (keyed by suite, task,
    seed, demos, iterations, episode length), the second builds nothing; a teacher worse than the student on the
    same seeds is skipped with a logged line, and the run's tasks narrow to the kept ones; an interrupted build
    (no teacher.json) is built again from an empty folder."""
    from vlaforge.errors import UsageError
    from vlaforge.pipeline import distill_teachers, teacher_dir

    built: list[str] = []

    def build(suite, task, out, iterations, seed, threads, max_steps, num_envs, workers, demos, sft_steps, env_kwargs):
        built.append(task)
        assert sft_steps == cfg.distill.teacher_sft_steps
        assert not (out / "stale").exists()
        save_policy(build_policy(backbone="state", state_dim=2, action_dim=2), out / "final",
                    extra={"state_fields": ["ee_x", "ee_y"]})
        return out / "final", "0,1"

    rates = {"red-0": 4, "green-0": 1}  # green-0's teacher is worse than the student (2/4)
    success = lambda cfg, task, teacher, episodes, max_steps: {"successes": rates[task], "episodes": episodes}  # noqa: E731
    student = {t: {"successes": 2, "episodes": 4} for t in rates}
    cfg = TrainConfig(algo="distill", suite="pointreach", tasks="red-0,green-0", out=str(tmp_path / "run"),
                      max_steps=12, threads=1)
    cfg.distill.teachers_cache, cfg.distill.teacher_iterations, cfg.distill.teacher_demos = str(tmp_path / "c"), 3, 2
    logs: list[str] = []
    got = distill_teachers(cfg, student, build=build, success=success, log=logs.append)
    red = teacher_dir(tmp_path / "c", "pointreach", "red-0", 0, 2, 3, 12, 4000)
    assert red.name == "seed0_demos2_sft4000_it3_steps12"
    assert built == ["red-0", "green-0"]
    assert got.distill.teacher == f"red-0={red / 'final'}" and got.tasks == "red-0"
    assert json.loads((red / "teacher.json").read_text())["iterations"] == 3
    assert any("green-0: skipped" in x and "fewer than the student" in x for x in logs)
    logs.clear()
    assert distill_teachers(cfg, student, build=build, success=success, log=logs.append) == got
    assert built == ["red-0", "green-0"]  # nothing built the second time
    assert sum("reused" in x for x in logs) == 2
    (red / "teacher.json").unlink()  # as if the build had been interrupted
    (red / "stale").mkdir()
    distill_teachers(cfg, student, build=build, success=success, log=logs.append)
    assert built == ["red-0", "green-0", "red-0"]
    cfg.distill.teacher_iterations = 4  # another key: another teacher
    distill_teachers(cfg, student, build=build, success=success, log=logs.append)
    assert built[3:] == ["red-0", "green-0"]
    cfg.distill.teacher_sft_steps = 500  # so are other SFT steps on the demos
    distill_teachers(cfg, student, build=build, success=success, log=logs.append)
    assert built[5:] == ["red-0", "green-0"]
    assert json.loads((teacher_dir(tmp_path / "c", "pointreach", "red-0", 0, 2, 4, 12, 500)
                       / "teacher.json").read_text())["sft_steps"] == 500
    cfg.env_kwargs = {"radius": 0.1}  # so are other env options (a hash of them in the folder name)
    distill_teachers(cfg, student, build=build, success=success, log=logs.append)
    assert built[7:] == ["red-0", "green-0"]
    kw = teacher_dir(tmp_path / "c", "pointreach", "red-0", 0, 2, 4, 12, 500, {"radius": 0.1})
    assert kw.name.startswith("seed0_demos2_sft500_it4_steps12_kw") and len(kw.name.rpartition("_kw")[2]) == 8
    assert json.loads((kw / "teacher.json").read_text())["env_kwargs"] == {"radius": 0.1}
    assert kw != teacher_dir(tmp_path / "c", "pointreach", "red-0", 0, 2, 4, 12, 500, {"radius": 0.2})
    cfg.num_envs = 3  # batching is not part of the key
    distill_teachers(cfg, student, build=build, success=success, log=logs.append)
    assert len(built) == 9
    rates["red-0"] = 0
    with pytest.raises(UsageError, match="no task has a teacher"):
        distill_teachers(cfg, student, build=build, success=success, log=logs.append)


def test_one_command_builds_the_teachers_then_reuses_them(tmp_path, capsys):
    """``vlaforge train --algo distill --distill.teachers-cache DIR`` end to end on Meta-World, toy sizes: the first
    run builds the task's teacher in the cache (its checkpoint records its sim_state fields) and trains with it; a
    second run into another folder builds nothing and trains the same way."""
    pytest.importorskip("metaworld")
    from vlaforge.cli import main

    torch.manual_seed(0)
    save_policy(build_policy(state_dim=4, action_dim=4, image_size=16), tmp_path / "student")
    argv = ["train", "--algo", "distill", "--suite", "metaworld", "--tasks", "reach-v3", "--init",
            str(tmp_path / "student"), "--distill.teachers-cache", str(tmp_path / "cache"), "--distill.teacher-demos",
            "0", "--distill.teacher-iterations", "1", "--iterations", "1", "--groups", "2", "--num-envs", "2",
            "--max-steps", "8", "--eval-episodes", "1", "--eval-every", "0", "--image-size", "16", "--threads", "1",
            "--distill.steps", "2", "--no-progress", "--no-tensorboard"]
    main([*argv, "--out", str(tmp_path / "r1")])
    first = capsys.readouterr().out
    teacher = tmp_path / "cache" / "metaworld" / "reach-v3" / "seed0_demos0_it1_steps8" / "final"
    assert "reach-v3: building the teacher" in first and (teacher.parent / "teacher.json").is_file()
    assert json.loads((teacher / "config.json").read_text())["state_fields"][:4] == ["ee_x", "ee_y", "ee_z", "gripper"]
    main([*argv, "--out", str(tmp_path / "r2")])
    second = capsys.readouterr().out
    assert "building" not in second and f"reach-v3: teacher reused from {teacher}" in second
    for run in ("r1", "r2"):
        saved = json.loads((tmp_path / run / "checkpoint" / "state.json").read_text())["config"]["distill"]
        assert saved["teacher"] == f"reach-v3={teacher}"
        assert json.loads((tmp_path / run / "metrics.jsonl").read_text().splitlines()[-1])["train/new_frames"] > 0


def _teachers_script():
    from helpers import benchmark_script

    return benchmark_script("teachers")


@pytest.mark.parametrize("args, needle", [
    (["--tasks", "nosuch-v3"], "--tasks"),
    (["--seeds", "0,x"], "--seeds"),
    (["--iterations", "-1"], "--iterations"),
    (["--sft-steps", "0"], "--sft-steps"),
    (["--iterations", "0", "--demos", "0"], "--demos N > 0"),
    (["--tasks", "reach-v3,push-v3", "--from-cache", "CACHE"], "no finished teacher"),
])
def test_teachers_benchmark_refuses_bad_input_before_work(args, needle, tmp_path, capsys):
    """benchmarks/teachers.py: every argument and every --from-cache folder is checked first, in one line; nothing
    is written (a cache holding reach-v3's teacher but not push-v3's is refused before reach-v3 is evaluated)."""
    from vlaforge.pipeline import teacher_dir

    cache = tmp_path / "cache"
    (teacher_dir(cache, "metaworld", "reach-v3", 0, 10, 64, 150, 1000) / "teacher.json").parent.mkdir(parents=True)
    (teacher_dir(cache, "metaworld", "reach-v3", 0, 10, 64, 150, 1000) / "teacher.json").write_text('{"cpu_s": 1}')
    args = [str(cache) if x == "CACHE" else x for x in args]
    with pytest.raises(SystemExit) as e:
        _teachers_script().main([*args, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "t.json")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and needle in err
    assert not (tmp_path / "t.json").exists() and not (tmp_path / "w").exists()
