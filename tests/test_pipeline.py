"""Demos on disk, SFT, evaluation, the CLI and its errors (PointReach: seconds)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from vlaforge.algos.sft import SFTConfig
from vlaforge.data.demos import collect_demos, load_demos
from vlaforge.envs import make_vec_env
from vlaforge.pipeline import EvalArgs, SFTArgs, run_eval, run_sft
from vlaforge.rollout.evaluate import wilson


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    d = tmp_path_factory.mktemp("demos") / "pr"
    venv = make_vec_env("pointreach", 8)
    info = collect_demos(venv, d, ["red-0", "green-0"], 6, seed=0, noise=0.1)
    assert info.episodes == 12 and info.successes == 12
    return d


def test_demo_layout_opens_with_standard_tools(demos):
    info = json.loads((demos / "meta" / "info.json").read_text())
    df = pd.read_parquet(demos / "data" / "chunk-000" / "episode_000000.parquet")
    assert {"observation.state", "action", "episode_index", "frame_index", "task_index", "index",
            "observation.images.top"} <= set(df.columns)
    assert len(np.asarray(df["action"].iloc[0])) == info["features"]["action"]["shape"][0] == 2
    png = df["observation.images.top"].iloc[0]["bytes"]
    assert png[:4] == b"\x89PNG"
    eps = [json.loads(x) for x in (demos / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert sum(e["length"] for e in eps) == info["total_frames"]


def test_load_demos_and_chunk_targets(demos):
    d = load_demos(demos)
    assert d.images.dtype == np.uint8 and d.images.shape[1:] == (1, 64, 64, 3)
    last = d.episode_end[0] - 1
    acts, mask = d.chunk_targets(np.array([last]), 3)
    assert mask.tolist() == [[1, 0, 0]]
    np.testing.assert_array_equal(acts[0, 1], d.actions[last])  # padded with the last action, masked out


def test_sft_then_eval_writes_manifest(demos, tmp_path):
    policy, metrics = run_sft(SFTArgs(demos=str(demos), out=str(tmp_path / "sft"), sft=SFTConfig(steps=30, batch_size=16)),
                              quiet=True)
    before = [p.detach().clone() for p in policy.parameters()]
    assert np.isfinite(metrics["sft/loss"])
    res, data = run_eval(EvalArgs(checkpoint=str(tmp_path / "sft"), suite="pointreach", tasks="red-0,blue-1",
                                  episodes=3, num_envs=3), quiet=True)
    assert [r.episodes for r in res] == [3, 3] and res[1].split == "heldout"
    m = json.loads((tmp_path / "sft" / "eval_pointreach.json").read_text())
    for key in ("suite", "tasks", "seeds", "episodes_per_task", "renderer", "camera", "image_size", "versions",
                "checkpoint_sha256_16"):
        assert key in m
    assert m["seeds"]["base"] >= 10_000_000
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))  # eval does not train


def test_sft_reduces_loss(demos):
    from vlaforge.algos.sft import train_sft
    from vlaforge.policies import build_policy

    torch.manual_seed(0)
    d = load_demos(demos)
    p = build_policy(head="tokens")
    first = train_sft(p, d, SFTConfig(steps=1, batch_size=32), {"red-0": 0, "green-0": 1})["sft/loss"]
    last = train_sft(p, d, SFTConfig(steps=40, batch_size=32), {"red-0": 0, "green-0": 1}, set_stats=False)["sft/loss"]
    assert last < first


def test_sft_cosine_schedule_hand_values_and_constant_default():
    from vlaforge.algos.sft import sft_lr

    cos = SFTConfig(steps=5, lr=1e-3, min_lr=1e-4, schedule="cosine")
    # min + (lr - min) (1 + cos(pi k / 4)) / 2 at k = 0..4: 1e-3, 1e-4 + 9e-4 * 0.853553, 5.5e-4, 1e-4 + 9e-4 * 0.146447, 1e-4
    want = [1e-3, 8.6820e-4, 5.5e-4, 2.3180e-4, 1e-4]
    assert [round(sft_lr(k, cos), 8) for k in range(5)] == pytest.approx(want, abs=1e-8)
    assert sft_lr(0, SFTConfig(steps=1, lr=2e-3, min_lr=0.0, schedule="cosine")) == 2e-3  # one step: the peak
    assert {sft_lr(k, SFTConfig(steps=5, lr=3e-4)) for k in range(5)} == {3e-4}  # the default is constant


def test_sft_cosine_schedule_reaches_the_optimizer(demos):
    from vlaforge.algos.sft import train_sft
    from vlaforge.policies import build_policy

    class Log:
        rows: list = []

        def log(self, step, m):
            self.rows.append((step, m["sft/lr"]))

    d, tasks = load_demos(demos), {"red-0": 0, "green-0": 1}
    log = Log()
    torch.manual_seed(0)
    p = build_policy()
    train_sft(p, d, SFTConfig(steps=3, batch_size=8, lr=1e-3, min_lr=2e-4, schedule="cosine"), tasks, log)
    assert log.rows == [(0, 1e-3), (2, pytest.approx(2e-4))]  # logged at the first and the last step
    # the schedule changes the weights; the constant default trains as before (same seed, same weights twice)
    w = []
    for cfg in (SFTConfig(steps=3, batch_size=8), SFTConfig(steps=3, batch_size=8),
                SFTConfig(steps=3, batch_size=8, min_lr=2e-4, schedule="cosine")):
        torch.manual_seed(0)
        q = build_policy()
        train_sft(q, d, cfg, tasks)
        w.append(torch.cat([x.detach().flatten() for x in q.parameters()]))
    assert torch.equal(w[0], w[1]) and not torch.equal(w[0], w[2])


def test_wilson_hand_values():
    lo, hi = wilson(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vlaforge.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["collect", "--suite", "nosuch", "--out", "OUT"], "unknown suite"),
    (["collect", "--suite", "pointreach", "--tasks", "magenta-7", "--out", "OUT"], "unknown task"),
    (["eval", "--checkpoint", "NOPE"], "no checkpoint"),
    (["frobnicate"], "unknown command"),
])
def test_cli_bad_input_one_line_error(args, needle, tmp_path):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_cli_help_lists_fields():
    r = _cli("train", "--help")
    assert r.returncode == 0
    for field in ("--algo", "--ppo.clip", "--rloo.group-size", "--resume", "--dynamic-rejection"):
        assert field in r.stdout


def test_eval_videos_written(demos, tmp_path):
    from vlaforge.policies import build_policy, save_policy

    save_policy(build_policy(), tmp_path / "p")
    run_eval(EvalArgs(checkpoint=str(tmp_path / "p"), suite="pointreach", tasks="red-0", episodes=2, num_envs=2,
                      videos=1, out=str(tmp_path / "ev" / "m.json")), quiet=True)
    vids = sorted((tmp_path / "ev" / "m").glob("*.mp4"))
    assert vids and vids[0].stat().st_size > 1000
    import imageio.v3 as iio

    frames = iio.imread(vids[0])
    assert frames.shape[1:] == (256, 256, 3)


def test_demo_runs_end_to_end_and_writes_its_table(tmp_path):
    """`vlaforge demo` at toy scale (PointReach, RLOO): demos → SFT → eval → RL → eval, results written."""
    import json

    from vlaforge.demo import DemoArgs, run_demo

    a = DemoArgs(suite="pointreach", tasks="red-0", algo="rloo", out=str(tmp_path / "d"), demo_episodes=2,
                 sft_steps=5, rl_iterations=1, groups=1, group_size=2, eval_episodes=2, max_steps=10, workers=0,
                 num_envs=2)
    summary = run_demo(a)
    res = json.loads((tmp_path / "d" / "demo_results.json").read_text())
    assert set(summary) == {"sft_overall", "rl_overall"}
    assert res["rows"][0]["task"] == "red-0" and res["rows"][0]["sft"]["episodes"] == 2 == res["rows"][0]["rl"]["episodes"]
    assert (tmp_path / "d" / "rl" / "final" / "model.safetensors").exists()
    assert set(res["stages_s"]) == {"collect", "sft", "eval_sft", "rl", "eval_after"}
    import imageio.v3 as iio

    video = iio.imread(tmp_path / "d" / "before_after.mp4")  # SFT | after, each panel 4x the 64 px frame + a title bar
    assert video.shape[1:] == (256 + 24, 2 * 256, 3) and video.shape[0] >= 2
    png = (tmp_path / "d" / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and res["media"]["video"].endswith("before_after.mp4")
    assert not list((tmp_path / "d").glob("*.tmp.*"))
