"""Checks live with what they check (issue 24): each kind of config refuses bad input from Python with the one-line
``UsageError`` the CLI prints, before any env is built or any file written (``train()``, ``run_recipe``, ``run_sft``,
``run_eval``, ``run_collect``); and a resume reads its checkpoint's state.json once, in ``train.resume``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from vlaforge.errors import CheckpointError, UsageError

FAST = dict(suite="pointreach", tasks="train", iterations=1, groups=2, num_envs=2, max_steps=8, image_size=32,
            backbone="state", eval_every=0, progress=False, tensorboard=False, threads=1)


def _cfg(tmp_path, **kw):
    from vlaforge.train.config import TrainConfig

    return TrainConfig(**{**FAST, "out": str(tmp_path / "run"), **kw})


@pytest.fixture
def no_env(monkeypatch):
    """Fail the test if an env is built: every refusal below comes before any work."""
    import vlaforge.envs as envs

    def refuse(*a, **k):
        raise AssertionError("an env was built before the check refused the input")

    monkeypatch.setattr(envs, "env_factory", refuse)
    for mod in ("vlaforge.train.loop", "vlaforge.pipeline"):
        monkeypatch.setattr(f"{mod}.make_vec_env", refuse)


def _refused(tmp_path, fn, match: str) -> None:
    with pytest.raises(UsageError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)  # one line, as the CLI prints it
    assert not (tmp_path / "run").exists()


def test_train_refuses_the_run_own_fields(tmp_path, no_env):
    from vlaforge.train.loop import train

    _refused(tmp_path, lambda: train(_cfg(tmp_path, lr=math.nan)), r"--lr must be a finite number")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, groups=0)), r"--groups must be >= 1")


def test_train_refuses_an_algorithm_config(tmp_path, no_env):
    """The algorithm's registry entry checks its ``--<algo>.*`` (a group method needs two rollouts per state)."""
    from vlaforge.train.loop import train

    cfg = _cfg(tmp_path, algo="rloo")
    cfg.rloo.group_size = 1
    _refused(tmp_path, lambda: train(cfg), r"--rloo.group-size must be >= 2 \(a group method")
    cfg = _cfg(tmp_path, algo="ppo")
    cfg.ppo.gamma = 1.5
    _refused(tmp_path, lambda: train(cfg), r"--ppo.gamma must be in \[0, 1\]")


def test_train_refuses_env_options(tmp_path, no_env):
    from vlaforge.train.loop import train

    _refused(tmp_path, lambda: train(_cfg(tmp_path, num_envs=0)), r"--num-envs must be >= 1")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, env_kwargs={"radius": -1.0})), r"--env-kwargs radius must be > 0")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, env_kwargs={"nope": 1.0})), r"suite 'pointreach' has no option")


def test_train_refuses_a_policy_family_and_shape(tmp_path, no_env):
    """The family's ``check_fresh`` (registry) and ``PolicyShape.check`` / ``HFConfig.check``."""
    from vlaforge.train.loop import train

    _refused(tmp_path, lambda: train(_cfg(tmp_path, backbone="vision", image_size=36)), r"multiple of 8")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, policy="hf")), r"--policy hf needs --policy.path")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, head="mlp")), r"--head 'mlp' is unknown")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, log_std_init=0.6)), r"--log-std-init must be in \[-4.0, 0.5\]")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, log_std_init=math.nan)), r"--log-std-init must be in")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, head="flow", log_std_init=0.0)), r"the flow head has none")
    _refused(tmp_path, lambda: train(_cfg(tmp_path, policy="hf", log_std_init=0.0)),
             r"--policy hf has its own --policy.\* options")
    cfg = _cfg(tmp_path)
    cfg.hf.lora_dropout = 1.0
    _refused(tmp_path, lambda: train(cfg), r"--policy.lora-dropout must be in \[0, 1\)")


def test_run_recipe_refuses_a_recipe_config(tmp_path, no_env):
    from vlaforge.recipes import recipe_defaults, run_recipe

    cfg = recipe_defaults("grape", _cfg(tmp_path))
    cfg.grape.decomposer = "oracle"
    _refused(tmp_path, lambda: run_recipe(cfg), r"--grape.decomposer 'oracle' is unknown")
    cfg = recipe_defaults("ire-vla", _cfg(tmp_path))
    _refused(tmp_path, lambda: run_recipe(cfg), r"the ire-vla recipe starts from an SFT checkpoint")
    with pytest.raises(UsageError, match=r"--recipe: unknown recipe 'nope'"):
        recipe_defaults("nope")


def test_sft_eval_and_collect_refuse_their_options(tmp_path, no_env):
    from vlaforge.algos.sft import SFTConfig
    from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs, run_collect, run_eval, run_sft

    out = str(tmp_path / "run")
    _refused(tmp_path, lambda: run_sft(SFTArgs(demos=str(tmp_path / "none"), out=out, sft=SFTConfig(lr=100.0))),
             r"--sft.lr 100.0 is far above")
    _refused(tmp_path, lambda: run_eval(EvalArgs(checkpoint=str(tmp_path / "none"), out=out, num_envs=0)),
             r"--num-envs must be >= 1")
    _refused(tmp_path, lambda: run_collect(CollectArgs(out=out, seed=2 ** 31), quiet=True), r"--seed .* past the 32-bit")


def _finished_run(tmp_path) -> Path:
    from vlaforge.train.loop import train

    train(_cfg(tmp_path, algo="rloo", out=str(tmp_path / "first")))
    return tmp_path / "first" / "checkpoint"


def test_a_resume_reads_state_json_once_and_is_decided_in_one_place(tmp_path, monkeypatch):
    """``train(TrainConfig(resume=...))`` reads the checkpoint's state.json once (``train.resume.resume_point``),
    and the config it runs with is the checkpoint's with the caller's output folder."""
    from vlaforge.train.loop import train

    ck = _finished_run(tmp_path)
    reads = []
    real = Path.read_text

    def counting(self, *a, **k):
        if self.name == "state.json":
            reads.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", counting)
    caller = _cfg(tmp_path, algo="ppo", resume=str(ck), out=str(tmp_path / "second"), iterations=2)
    train(caller)  # the checkpoint's algo (rloo) and iterations (1) win: one iteration was done, nothing left
    assert len(reads) == 1
    assert (tmp_path / "second" / "final" / "config.json").exists()
    import json

    ran = json.loads((tmp_path / "second" / "train_config.json").read_text())
    assert (ran["algo"], ran["iterations"], ran["out"]) == ("rloo", 1, str(tmp_path / "second"))


def test_resume_point_refuses_a_changed_flag_and_a_bad_saved_config(tmp_path):
    import json

    from vlaforge.train.resume import resume_point

    ck = _finished_run(tmp_path)
    caller = _cfg(tmp_path, resume=str(ck), lr=1e-3)
    with pytest.raises(UsageError, match=r"--lr cannot change on resume"):
        resume_point(caller, frozenset({"lr", "resume"}))
    point = resume_point(caller, frozenset({"resume"}))  # the CLI without --out: the checkpoint's run folder
    assert point.cfg.out == str(ck.parent) and point.cfg.lr == 3e-5 and point.state["iteration"] == 1
    assert resume_point(caller).cfg.out == caller.out  # a Python caller's out is kept
    state = json.loads((ck / "state.json").read_text())
    state["config"]["lr"] = -1.0
    (ck / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"its training config is invalid \(--lr must be > 0"):
        resume_point(caller)


def test_train_config_check_covers_every_field_group(tmp_path):
    """TrainConfig.check reaches each part: a default config passes, and breaking one field of each part fails."""
    cfg = _cfg(tmp_path)
    cfg.check()
    for part, field, bad, match in [("ray", "learners", 0, "--ray.learners"), ("rloo", "epochs", 0, "--rloo.epochs"),
                                    ("hf", "n_bins", 1, "--policy.n-bins")]:
        c = _cfg(tmp_path, ray=dataclasses.replace(cfg.ray, enabled=True))
        setattr(getattr(c, part), field, bad)
        with pytest.raises(UsageError, match=match):
            c.check()
