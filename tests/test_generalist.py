"""benchmarks/generalist.py (issue 23 part 1) at toy scale on PointReach: one seed gives one checkpoint, the JSON
has a row per (config, task), bad input is refused in one line before any work; and `vlaforge collect` /
`vlaforge eval` take a benchmark name (MT10) as the task selection."""

import json
from pathlib import Path

import pytest
from helpers import benchmark_script
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def _script():
    return benchmark_script("generalist")


TOY = ["base", "--suite", "pointreach", "--tasks", "train", "--configs", "3:15", "--eval-episodes", "2",
       "--num-envs", "4", "--max-steps", "30"]


@pytest.mark.slow
def test_same_seed_same_checkpoint_and_rows(tmp_path):
    g = _script()
    runs = []
    for k in range(2):  # two independent builds from scratch (demos collected again each time)
        out = tmp_path / f"base{k}.json"
        data = g.main(TOY + ["--seed", "3", "--work", str(tmp_path / f"w{k}"), "--out", str(out)])
        runs.append(data)
        assert json.loads(out.read_text())["rows"] == data["rows"]
    a, b = (load_file(Path(r["configs"][0]["policy_dir"]) / "model.safetensors") for r in runs)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert runs[0]["configs"][0]["policy_sha"] == runs[1]["configs"][0]["policy_sha"]
    rows = runs[0]["rows"]
    assert len(rows) == len({r["task"] for r in rows}) > 1  # one row per (config, task)
    for r in rows:
        assert {"config", "suite", "task", "demos_per_task", "image_size", "dim", "sft_steps", "seed", "successes",
                "episodes", "ci95", "collect_cpu_s", "sft_cpu_s", "eval_cpu_s"} <= set(r)
        assert r["episodes"] == 2 and r["demos_per_task"] == 3 and r["sft_steps"] == 15
    # a config already in the JSON is skipped; a new one is appended
    again = g.main(TOY + ["--seed", "3", "--work", str(tmp_path / "w0"), "--out", str(tmp_path / "base0.json")])
    assert again["rows"] == rows
    # stage methods: rows in issue 23 part 2's layout; "none" is the base itself (before == after, no budget)
    m_out = tmp_path / "generalist.json"
    got = g.main(["methods", "--out", str(tmp_path / "base0.json"), "--base-config", "N3_S15", "--methods", "none",
                  "--methods-out", str(m_out), "--work", str(tmp_path / "w0")])
    assert json.loads(m_out.read_text()) == got
    assert [(r["task"], r["method"], r["seed"]) for r in got["rows"]] == [(r["task"], "none", 3) for r in rows]
    for m, r in zip(got["rows"], rows):
        assert set(m) == {"suite", "task", "method", "seed", "before", "after", "env_steps", "cpu_s"}
        assert m["before"] == m["after"] == {"successes": r["successes"], "episodes": r["episodes"]}
        assert m["env_steps"] == 0 and m["suite"] == "pointreach"
    # a direct method: one multi-task run per training seed, every task's row from its one evaluation
    got = g.main(["methods", "--out", str(tmp_path / "base0.json"), "--base-config", "N3_S15", "--methods",
                  "ppo+priv", "--seeds", "5", "--iterations", "1", "--groups", "2", "--num-envs", "4", "--max-steps",
                  "30", "--eval-episodes", "2", "--methods-out", str(m_out), "--work", str(tmp_path / "w0")])
    ppo = [r for r in got["rows"] if r["method"] == "ppo+priv"]
    assert [(r["task"], r["seed"]) for r in ppo] == [(r["task"], 5) for r in rows]
    assert all(r["env_steps"] == ppo[0]["env_steps"] > 0 and r["after"]["episodes"] == 2 for r in ppo)
    assert [r["before"] for r in ppo] == [{"successes": r["successes"], "episodes": r["episodes"]} for r in rows]
    # the ire-vla recipe: RL stages + SL stages on the base's demos ∪ successes, env steps of both RL stages
    got = g.main(["methods", "--out", str(tmp_path / "base0.json"), "--base-config", "N3_S15", "--methods", "ire-vla",
                  "--seeds", "5", "--iterations", "1", "--groups", "2", "--num-envs", "4", "--max-steps", "30",
                  "--ire-rounds", "2", "--ire-sl-steps", "3", "--ire-sl-lr", "2e-4", "--ire-stage-eval-episodes", "1",
                  "--eval-episodes", "2",
                  "--methods-out", str(m_out), "--work", str(tmp_path / "w0")])
    ire = [r for r in got["rows"] if r["method"] == "ire-vla"]
    assert [(r["task"], r["seed"]) for r in ire] == [(r["task"], 5) for r in rows]
    run = tmp_path / "w0" / "N3_S15" / "ire-vla_seed5"
    stage_steps = [json.loads((run / f"round{k}" / "rl" / "metrics.jsonl").read_text().splitlines()[-1])
                   ["rollout/env_steps"] for k in range(2)]
    assert all(r["env_steps"] == sum(stage_steps) > 0 and r["after"]["episodes"] == 2 for r in ire)
    assert json.loads((run / "round0" / "rl" / "train_config.json").read_text())["ire_vla"]["sl_lr"] == 2e-4
    assert [s["stage"] for s in json.loads((run / "ire_vla.json").read_text())["stages"]] == [
        "sft", "round0/rl", "round0/sl", "round1/rl", "round1/sl"]
    # its control: further SFT of the base on its own demos, no rollouts; the weights moved
    got = g.main(["methods", "--out", str(tmp_path / "base0.json"), "--base-config", "N3_S15", "--methods", "sft-more",
                  "--seeds", "5", "--sft-more-steps", "3", "--num-envs", "4", "--max-steps", "30", "--eval-episodes",
                  "2", "--methods-out", str(m_out), "--work", str(tmp_path / "w0")])
    more = [r for r in got["rows"] if r["method"] == "sft-more"]
    assert len(more) == len(rows) and all(r["env_steps"] == 0 and r["after"]["episodes"] == 2 for r in more)
    a, b = (load_file(Path(p) / "model.safetensors") for p in (runs[0]["configs"][0]["policy_dir"],
                                                               tmp_path / "w0" / "N3_S15" / "sft-more_seed5" / "sft"))
    assert any(not (a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_other_seed_other_checkpoint(tmp_path):
    g = _script()
    shas = [g.main(TOY + ["--seed", str(s), "--work", str(tmp_path / f"w{s}"), "--out", str(tmp_path / f"{s}.json")]
                   )["configs"][0]["policy_sha"] for s in (0, 1)]
    assert shas[0] != shas[1]
    # the same seed with a cosine SFT schedule: its own config name (and so its own folder), other weights
    cos = g.main(TOY + ["--seed", "0", "--sft-schedule", "cosine", "--sft-min-lr", "1e-4", "--work",
                        str(tmp_path / "w0"), "--out", str(tmp_path / "0.json")])["configs"]
    assert [c["config"] for c in cos] == ["N3_S15", "N3_S15_cos"]
    assert (cos[1]["sft_schedule"], cos[1]["sft_min_lr"], cos[1]["sft_lr"]) == ("cosine", 1e-4, 1e-3)
    # the command as typed, from the repo root, whoever called the script
    assert cos[1]["command"].startswith("python benchmarks/generalist.py base --suite pointreach ")
    assert cos[1]["command"].endswith("--sft-min-lr 1e-4 --work " + str(tmp_path / "w0") + " --out " + str(tmp_path / "0.json"))
    assert cos[1]["policy_sha"] != shas[0] and cos[0]["sft_schedule"] == "constant"


@pytest.mark.parametrize("args, needle", [
    (["--configs", "10"], "N:STEPS"),
    (["--configs", "10:0"], "positive"),
    (["--configs", "10:20,10:20"], "twice"),
    (["--eval-episodes", "0"], "--eval-episodes"),
    (["--suite", "nosuch"], "unknown suite"),
    (["--tasks", "nosuch"], "--tasks"),
    (["--noise", "2"], "--noise"),
    (["--sft-schedule", "cosine", "--sft-min-lr", "0.1"], "--sft-min-lr"),
    (["--sft-lr", "-1"], "--sft-lr"),
])
def test_bad_input_one_line(args, needle, tmp_path, capsys):
    g = _script()
    with pytest.raises(SystemExit) as e:
        g.main(["base", "--suite", "pointreach", "--tasks", "train", "--work", str(tmp_path / "w"),
                "--out", str(tmp_path / "o.json"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err and "Traceback" not in err
    assert not (tmp_path / "w").exists() and not (tmp_path / "o.json").exists()  # nothing was done


def test_out_not_a_generalist_json(tmp_path, capsys):
    g = _script()
    bad = tmp_path / "o.json"
    bad.write_text("[1, 2]")
    with pytest.raises(SystemExit):
        g.main(["base", "--suite", "pointreach", "--tasks", "train", "--out", str(bad)])
    assert "not a generalist JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_collect_and_eval_take_a_benchmark_name(tmp_path):
    pytest.importorskip("metaworld")
    from vlaforge.envs import make_vec_env
    from vlaforge.pipeline import selected_tasks

    venv = make_vec_env("metaworld", 1, tasks="MT10")
    try:
        names = selected_tasks(venv.spec, "metaworld", "MT10")
    finally:
        venv.close()
    assert len(names) == 10 and "reach-v3" in names and "peg-insert-side-v3" in names


@pytest.mark.parametrize("args, needle", [
    (["--methods", "nosuch"], "--methods"),
    (["--methods", "grpo", "--seeds", "0,x"], "--seeds"),
    (["--methods", "grpo", "--iterations", "0"], "--iterations"),
    (["--methods", "grpo", "--groups", "0"], "--groups"),
    (["--methods", "grpo", "--lr", "nan"], "--lr"),
    (["--base-config", "N9_S9"], "--base-config"),
    (["--methods", "mtdistill", "--teacher-iterations", "-1"], "--teacher-iterations"),
    (["--methods", "mtdistill", "--teacher-iterations", "0", "--teacher-demos", "0"], "--teacher-demos"),
    (["--methods", "mtdistill", "--teacher-sft-steps", "0"], "--teacher-sft-steps"),
    (["--methods", "none,mtdistill", "--distill-groups", "0"], "--distill-groups"),
    (["--methods", "mtdistill", "--distill-capacity", "0"], "--distill-capacity"),
    (["--methods", "mtdistill", "--suite", "pointreach"], "metaworld"),
    (["--methods", "grpo", "--label", "a/b"], "--label"),
    (["--methods", "ire-vla", "--ire-rounds", "0"], "--ire-rounds"),
    (["--methods", "ire-vla", "--ire-sl-steps", "-1"], "--ire-sl-steps"),
    (["--methods", "ire-vla", "--ire-sl-lr", "0"], "--ire-sl-lr"),
    (["--methods", "ire-vla", "--ire-sl-lr", "nan"], "--ire-sl-lr"),
    (["--methods", "ire-vla", "--ire-stage-eval-episodes", "0"], "--ire-stage-eval-episodes"),
    (["--methods", "ire-vla", "--ire-demo-fraction", "1.5"], "--ire-demo-fraction"),
    (["--methods", "sft-more", "--sft-more-steps", "0"], "--sft-more-steps"),
])
def test_methods_bad_input_one_line(args, needle, tmp_path, capsys):
    g = _script()
    base = tmp_path / "b.json"
    base.write_text(json.dumps({"configs": [{"config": "N3_S15"}], "rows": [], "meta": {"metric": "m"}}))
    with pytest.raises(SystemExit) as e:
        g.main(["methods", "--out", str(base), "--methods-out", str(tmp_path / "m.json"), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err and not (tmp_path / "m.json").exists()


def test_methods_needs_a_base(tmp_path, capsys):
    g = _script()
    with pytest.raises(SystemExit):
        g.main(["methods", "--out", str(tmp_path / "none.json"), "--methods-out", str(tmp_path / "m.json")])
    assert "build the base first" in capsys.readouterr().err


def test_chart_pools_each_method_over_its_seeds(tmp_path):
    g = _script()
    rows = [{"suite": "metaworld", "task": t, "method": m, "seed": s, "before": {"successes": b, "episodes": 50},
             "after": {"successes": a, "episodes": 50}, "env_steps": 1, "cpu_s": 1.0}
            for t, b in (("reach-v3", 10), ("push-v3", 0)) for m, s, a in (("grpo", 0, 12), ("grpo", 1, 20), ("mtd", 0, 40))]
    src = tmp_path / "m.json"
    src.write_text(json.dumps({"rows": rows}))
    table = g.main(["chart", "--methods-out", str(src), "--chart", str(tmp_path / "c.png")])
    assert table["base"] == {"reach-v3": (10, 50), "push-v3": (0, 50), "mean of 2 tasks": (10, 100)}  # once, not per seed
    assert table["grpo"]["reach-v3"] == (32, 100) and table["grpo"]["mean of 2 tasks"] == (64, 200)
    assert table["mtd"]["push-v3"] == (40, 50)
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG" and not list(tmp_path.glob("*.tmp.png"))
    rows[0]["before"] = {"successes": 11, "episodes": 50}  # a row from another base
    src.write_text(json.dumps({"rows": rows}))
    with pytest.raises(SystemExit) as e:
        g.main(["chart", "--methods-out", str(src), "--chart", str(tmp_path / "d.png")])
    assert e.value.code == 2 and not (tmp_path / "d.png").exists()


def test_chart_needs_rows(tmp_path, capsys):
    g = _script()
    with pytest.raises(SystemExit) as e:
        g.main(["chart", "--methods-out", str(tmp_path / "none.json"), "--chart", str(tmp_path / "c.png")])
    assert e.value.code == 2 and "run stage methods first" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("where, needle", [("folder", "is a folder"), ("nodir/c.png", "does not exist")])
def test_chart_refuses_a_bad_target_in_one_line(where, needle, tmp_path, capsys):
    g = _script()
    src = tmp_path / "m.json"
    src.write_text(json.dumps({"rows": [{"suite": "metaworld", "task": "reach-v3", "method": "grpo", "seed": 0,
                                         "before": {"successes": 1, "episodes": 2},
                                         "after": {"successes": 2, "episodes": 2}, "env_steps": 1, "cpu_s": 1.0}]}))
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit) as e:
        g.main(["chart", "--methods-out", str(src), "--chart", str(tmp_path / where)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and needle in err and "--chart" in err
    assert list((tmp_path / "folder").iterdir()) == []
