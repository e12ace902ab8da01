"""benchmarks/goal_follow.py: the slope of the final end effector on the goal, by hand; a PointReach run writes its
layout; bad input exits 2 before any file."""

import json

import numpy as np
import pytest
from helpers import benchmark_script

from vlaforge.envs import make_vec_env
from vlaforge.policies import build_policy, save_policy


def test_follow_stats_by_hand():
    g = benchmark_script("goal_follow")
    goal = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    ee = np.stack([2 * goal[:, 0] + 5, [4.0, 4.0, 4.0, 4.0]], 1)  # x follows the goal at slope 2; y's goal is fixed
    s = g.follow_stats(ee, goal, np.array([True, False, False, True]))
    assert s["slope"] == [2.0, 0.0] and s["successes"] == 2
    # distances: |(5,3)|, |(6,3)|, |(7,3)|, |(8,3)|
    d = np.hypot([5.0, 6.0, 7.0, 8.0], 3.0)
    assert s["final_dist_mean"] == pytest.approx(d.mean(), abs=1e-5)
    assert s["final_dist_failures_mean"] == pytest.approx(d[1:3].mean(), abs=1e-5)
    assert s["goal_std"] == [pytest.approx(np.std([0, 1, 2, 3]), abs=1e-5), 0.0]
    # a hand that ignores the goal: slope 0; every episode a success: no failure distance
    s = g.follow_stats(np.full((4, 2), 0.5), goal, np.ones(4, bool))
    assert s["slope"] == [0.0, 0.0] and s["final_dist_failures_mean"] is None and s["final_ee_std"] == [0.0, 0.0]


def test_goal_axes_pair_ee_with_goal_only():
    g = benchmark_script("goal_follow")
    names = ("ee_x", "ee_y", "ee_z", "gripper", "prev_ee_x", "goal_x", "goal_y", "goal_z")
    assert g.goal_axes(names) == [("x", 0, 5), ("y", 1, 6), ("z", 2, 7)]
    assert g.goal_axes(("ee_x", "obj_x")) == []


def test_pointreach_run_writes_the_layout(tmp_path):
    g = benchmark_script("goal_follow")
    venv = make_vec_env("pointreach", 1)
    spec = venv.spec
    venv.close()
    save_policy(build_policy(state_dim=spec.state_dim, action_dim=spec.action_dim, image_size=32), tmp_path / "p")
    out = tmp_path / "o.json"
    g.main(["--suite", "pointreach", "--task", "red-0", "--episodes", "6", "--max-steps", "12", "--num-envs", "2",
            "--policy", f"a={tmp_path / 'p'}", "--out", str(out)])
    d = json.loads(out.read_text())
    (row,) = d["rows"]
    assert set(row) == {"policy", "path", "task", "episodes", "successes", "axes", "slope", "goal_std",
                        "final_ee_std", "final_dist_mean", "final_dist_failures_mean"}
    assert row["axes"] == ["x", "y"] and row["episodes"] == 6 and len(row["slope"]) == 2
    assert all(s > 0 for s in row["goal_std"])  # the evaluation seeds move the goal
    assert d["meta"]["command"].startswith("python benchmarks/goal_follow.py --suite pointreach")


@pytest.mark.parametrize("args, needle", [
    ([], "--policy"),
    (["--policy", "nothing"], "NAME=DIR"),
    (["--policy", "a=NOPE"], "no config.json"),
    (["--policy", "a=P", "--policy", "a=P"], "differ"),
    (["--policy", "a=P", "--episodes", "0"], "--episodes"),
    (["--policy", "a=P", "--suite", "pointreach", "--task", "nosuch"], "nosuch"),
    (["--policy", "a=P", "--suite", "nosuite"], "nosuite"),
])
def test_bad_input_one_line_no_file(args, needle, tmp_path, capsys):
    g = benchmark_script("goal_follow")
    save_policy(build_policy(state_dim=2, action_dim=2, image_size=32), tmp_path / "p")
    out = tmp_path / "o.json"
    args = [a.replace("NOPE", str(tmp_path / "nope")).replace("=P", f"={tmp_path / 'p'}") for a in args]
    with pytest.raises(SystemExit) as e:
        g.main([*args, "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not out.exists()
