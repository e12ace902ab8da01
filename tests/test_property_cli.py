"""Property test of the bad-input contract (issue 25 part 5): random values in a demo folder's meta/info.json, in a
policy checkpoint's config.json and in CLI flags, run through ``vlaforge.cli.main`` in-process. Every run either
exits 0 with a valid result (a loadable policy, a manifest or metrics without NaN), or exits 2 with one line on
stderr and the file tree unchanged (a diverged run: exit 1, one line, nothing written); an exception escaping
``main`` (a traceback) fails the test. Bounded: 25 examples per test (5 tests, 125 in all), about 20-25 s on one core.

The values are chosen so that every *valid* run is cheap (no flag value that is both accepted and expensive):
the point is what the checks refuse and how, not long runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from vlaforge.cli import main  # noqa: E402

EXAMPLES = int(os.environ.get("VLAFORGE_PROPERTY_EXAMPLES", "25"))
"""examples per test (5 tests); raise it for a deeper search: VLAFORGE_PROPERTY_EXAMPLES=200 pytest ..."""
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small vlaforge demo folder and a state-backbone policy checkpoint for pointreach."""
    from vlaforge.data.demos import collect_demos
    from vlaforge.envs import make_vec_env
    from vlaforge.policies import build_policy, save_policy

    root = tmp_path_factory.mktemp("prop")
    collect_demos(make_vec_env("pointreach", 2), root / "demos", ["red-0"], 2, seed=0)
    save_policy(build_policy(backbone="state", state_dim=2, action_dim=2), root / "policy")
    assert main([*TRAIN, "--iterations", "2", "--checkpoint-every", "1", "--out", str(root / "run")]) == 0
    state = json.loads((root / "run" / "checkpoint" / "state.json").read_text())
    state.update(iteration=1)  # as if killed after the first of its two iterations: a resume has work left
    (root / "run" / "checkpoint" / "state.json").write_text(json.dumps(state))
    return root


# -- hostile values ---------------------------------------------------------------------------------

JSON_VALUES = st.one_of(
    st.integers(-3, 300),
    st.sampled_from([0, -1, 1, 2, 8, 63, 64, 1023, 1025, 2 ** 20, 2 ** 31, 2 ** 40, 2 ** 63, 10 ** 30, 10 ** 400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-3, 70), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-2, 2), max_size=2),
)


def _leaves(obj, path=()):
    """Every (path, value) of a JSON document's leaves and containers (a container may be replaced whole)."""
    out = [path] if path else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += _leaves(v, (*path, i))
    return out


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


# -- the contract -----------------------------------------------------------------------------------

def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for p in root.rglob("*")}


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)  # an exception escaping here is the failure this test looks for
    return rc, out.getvalue(), err.getvalue()


def _finite_json(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite_json(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite_json(v) for v in x)
    return True


def _check_contract(argv: list[str], root: Path, ok) -> None:
    before = _tree(root)
    rc, _, err = _run(argv)
    hypothesis.event(f"{argv[0]} exit {rc}")  # --hypothesis-show-statistics: how many runs passed, were refused
    lines = [x for x in err.splitlines() if x.strip()]
    if rc == 0:
        ok()
    elif rc in (1, 2):  # 2: bad input; 1: a run that diverged (NonFiniteError names the last good checkpoint)
        assert len(lines) == 1 and "Traceback" not in err, (argv, err[-2000:])
        assert lines[0].startswith(f"vlaforge {argv[0]}: error: "), lines[0]
        if rc == 2:
            assert _tree(root) == before, (argv, lines[0], "a refused command changed the file tree")
    else:
        raise AssertionError((argv, rc, err[-2000:]))


# -- mutated demo metadata -> sft -------------------------------------------------------------------

@settings(max_examples=EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_sft_on_mutated_demo_info(inputs, data):
    info = json.loads((inputs / "demos" / "meta" / "info.json").read_text())
    paths = _leaves(info)
    edits = data.draw(st.lists(st.tuples(st.sampled_from(paths), JSON_VALUES), min_size=1, max_size=2), label="edits")
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        shutil.copytree(inputs / "demos", root / "demos")
        for path, value in edits:
            with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier edit replaced the container
                _set(info, path, value)
        (root / "demos" / "meta" / "info.json").write_text(json.dumps(info))
        out = root / "s"

        def ok():
            from vlaforge.policies import load_policy

            load_policy(out)

        _check_contract(["sft", "--demos", str(root / "demos"), "--out", str(out), "--backbone", "state",
                         "--sft.steps", "2", "--sft.batch-size", "4", "--threads", "1"], root, ok)


# -- mutated policy config -> eval ------------------------------------------------------------------

@settings(max_examples=EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_eval_on_mutated_policy_config(inputs, data):
    meta = json.loads((inputs / "policy" / "config.json").read_text())
    paths = _leaves(meta)
    edits = data.draw(st.lists(st.tuples(st.sampled_from(paths), JSON_VALUES), min_size=1, max_size=2), label="edits")
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        shutil.copytree(inputs / "policy", root / "policy")
        cfg = json.loads((root / "policy" / "config.json").read_text())
        for path, value in edits:
            with contextlib.suppress(KeyError, IndexError, TypeError):
                _set(cfg, path, value)
        (root / "policy" / "config.json").write_text(json.dumps(cfg))
        manifest = root / "m.json"

        def ok():
            m = json.loads(manifest.read_text())
            assert _finite_json(m) and m["results"], m

        _check_contract(["eval", "--checkpoint", str(root / "policy"), "--episodes", "1", "--num-envs", "1",
                         "--tasks", "red-0", "--threads", "1", "--out", str(manifest)], root, ok)


# -- mutated flags -> train -------------------------------------------------------------------------

FLAG_VALUES = {
    "--iterations": ["-1", "0", "1", "2", "1.5", "nan", "abc", ""],
    "--groups": ["-1", "0", "1", "2", "1.5", "x"],
    "--num-envs": ["-1", "0", "1", "2", "5000", "2.0"],
    "--lr": ["-1", "0", "nan", "inf", "1e-3", "1e20", "10", "abc"],
    "--value-lr": ["-1", "nan", "1e-3", "1e40"],
    "--seed": ["-1", "0", "7", "1e20", "4294967295", "4294967296", str(2 ** 63), "1.5"],
    "--image-size": ["0", "7", "8", "33", "64", "1025", "100000", "nan"],
    "--chunk-size": ["-1", "0", "1", "4", "1.5"],
    "--checkpoint-every": ["-1", "0", "1", "x"],
    "--rloo.group-size": ["-1", "0", "1", "2", "3"],
    "--rloo.temperature": ["0", "-1", "nan", "1", "inf"],
    "--rloo.clip": ["0", "-0.1", "nan", "0.2"],
    "--max-steps": ["-1", "0", "1", "8", "nan"],
    "--weight-decay": ["-1", "nan", "0", "0.1", "1e308"],
    "--fill-fraction": ["0", "0.5", "1", "1.5", "nan"],
    "--max-collect-rounds": ["0", "1", "-1"],
    "--curriculum-tau": ["0", "-1", "nan", "0.2"],
    "--eval-episodes": ["0", "1", "-2"],
    "--lr-warmup": ["-1", "0", "3", "nan"],
    "--env-kwargs": [["radius", "-1"], ["radius", "nan"], ["speed", "1e308"], ["bogus", "1"], ["radius", "0.2"],
                     ["radius"]],
}

TRAIN = ["train", "--backbone", "state", "--iterations", "1", "--groups", "1", "--num-envs", "2", "--rloo.group-size",
         "2", "--eval-every", "0", "--max-steps", "8", "--no-progress", "--no-tensorboard", "--threads", "1"]


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(flags=st.lists(st.sampled_from(sorted(FLAG_VALUES)), min_size=1, max_size=2, unique=True).flatmap(
    lambda fs: st.tuples(*[st.sampled_from(FLAG_VALUES[f]).map(lambda v, f=f: (f, v)) for f in fs])))
def test_train_with_mutated_flags(flags):
    argv = list(TRAIN)
    for f, v in flags:
        argv += [f, *(v if isinstance(v, list) else [v])]
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        out = root / "r"

        def ok():
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            assert rows and all(_finite_json(r) for r in rows), (argv, [r for r in rows if not _finite_json(r)][:1])
            assert (out / "final" / "model.safetensors").is_file()

        _check_contract([*argv, "--out", str(out)], root, ok)


# -- mutated flags -> collect / sft / eval ------------------------------------------------------------

SEEDS = ["-1", "0", "3", "1e20", "4294967295", "4294967296", "1.5"]
COMMAND_FLAGS = {
    "collect": {
        "--episodes": ["-1", "0", "1", "2", "x", "1.5"],
        "--noise": ["-0.1", "nan", "0", "0.5", "inf"],
        "--seed": SEEDS,
        "--image-size": ["0", "7", "8", "33", "1025", "nan"],
        "--num-envs": ["0", "1", "5000"],
        "--workers": ["-1", "0"],
        "--tasks": ["red-0", "red-0,red-0", "nosuch", ",", "red-0,"],
        "--env-kwargs": [["radius", "-1"], ["speed", "nan"], ["bogus", "1"], ["radius", "0.2"], ["privileged", "2"]],
    },
    "sft": {
        "--sft.steps": ["-1", "0", "1", "2", "1e3"],
        "--sft.lr": ["-1", "0", "nan", "1e-3", "1e20", "10"],
        "--sft.batch-size": ["0", "1", "4", "-4"],
        "--sft.seed": SEEDS,
        "--chunk-size": ["0", "1", "4", "1.5"],
        "--head": ["gaussian", "tokens", "flow", "mlp"],
        "--sft.augment-shift": ["-1", "0", "2"],
        "--sft.grad-clip": ["0", "-1", "nan", "1"],
        "--sft.weight-decay": ["-1", "nan", "0", "0.1"],
    },
    "eval": {
        "--episodes": ["-1", "0", "1", "2", "x"],
        "--seed-base": SEEDS,
        "--tasks": ["red-0", "red-0,red-0", "nosuch", ","],
        "--num-envs": ["0", "1", "5000"],
        "--env-kwargs": [["radius", "-1"], ["speed", "inf"], ["bogus", "1"], ["radius", "0.2"]],
        "--threads": ["0", "1", "-1"],
    },
}


def _base(command: str, inputs: Path, root: Path) -> tuple[list[str], callable]:
    if command == "collect":
        out = root / "d"
        return (["collect", "--episodes", "1", "--num-envs", "1", "--tasks", "red-0", "--out", str(out)],
                lambda: json.loads((out / "meta" / "info.json").read_text()))
    if command == "sft":
        out = root / "s"

        def ok():
            from vlaforge.policies import load_policy

            load_policy(out)

        return (["sft", "--demos", str(inputs / "demos"), "--backbone", "state", "--sft.steps", "2",
                 "--sft.batch-size", "4", "--threads", "1", "--out", str(out)], ok)
    out = root / "m.json"

    def ok():
        m = json.loads(out.read_text())
        assert _finite_json(m) and m["results"], m

    return (["eval", "--checkpoint", str(inputs / "policy"), "--episodes", "1", "--num-envs", "1", "--tasks", "red-0",
             "--threads", "1", "--out", str(out)], ok)


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_commands_with_mutated_flags(inputs, data):
    command = data.draw(st.sampled_from(sorted(COMMAND_FLAGS)), label="command")
    pool = COMMAND_FLAGS[command]
    flags = data.draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=2, unique=True), label="flags")
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        argv, ok = _base(command, inputs, root)
        for f in flags:
            v = data.draw(st.sampled_from(pool[f]), label=f)
            argv += [f, *(v if isinstance(v, list) else [v])]
        _check_contract(argv, root, ok)


# -- mutated checkpoint state -> train --resume ---------------------------------------------------------

SMALL_OR_JUNK = st.one_of(  # a valid value stays cheap (no 2**40 iterations); the rest must be refused
    st.integers(-3, 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.5, 1e-3, 2.5]),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.integers(-3, 3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(-2, 2), max_size=2),
)


@settings(max_examples=EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_resume_from_mutated_state(inputs, data):
    """state.json is input too (part 3): its config, iteration, env steps and sampler state, edited at random."""
    state = json.loads((inputs / "run" / "checkpoint" / "state.json").read_text())
    paths = [p for p in _leaves(state) if p[:2] not in (("config", "out"), ("config", "resume"))]
    edits = data.draw(st.lists(st.tuples(st.sampled_from(paths), SMALL_OR_JUNK), min_size=1, max_size=2), label="edits")
    with tempfile.TemporaryDirectory() as t:
        root = Path(t)
        shutil.copytree(inputs / "run", root / "run")
        for path, value in edits:
            with contextlib.suppress(KeyError, IndexError, TypeError):
                _set(state, path, value)
        (root / "run" / "checkpoint" / "state.json").write_text(json.dumps(state))
        out = root / "run"

        def ok():
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            assert all(_finite_json(r) for r in rows), [r for r in rows if not _finite_json(r)][:1]
            assert (out / "final" / "model.safetensors").is_file()

        _check_contract(["train", "--resume", str(root / "run" / "checkpoint"), "--no-progress"], root, ok)
