"""Hostile input: every bad flag or file is refused by the real CLI entry point with exit 2 and one line
naming the flag/file and what to do, no traceback, before any work, leaving no file behind. Also: resume
never writes outside its run directory, torn metrics and stale temp dirs are repaired, a non-finite
policy is never written, a checkpoint never runs code, and the evaluation protocol's two metrics.

The table runs ``vlaforge.cli.main`` in-process (one import of torch for ~50 cases); one case runs the
console script as a subprocess to check the real entry point.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vlaforge.cli import main
from vlaforge.envs import make_vec_env
from vlaforge.policies import build_policy, save_policy

PRIV = ["--env-kwargs", "radius", "0.2", "privileged", "1"]
TRAIN = ["train", "--backbone", "state", *PRIV, "--groups", "2", "--num-envs", "4", "--eval-every", "0",
         "--no-progress", "--no-tensorboard", "--threads", "1"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs the cases point at: demos, a policy, a finished 1-iteration training run, broken variants."""
    from vlaforge.data.demos import collect_demos

    root = tmp_path_factory.mktemp("world")
    collect_demos(make_vec_env("pointreach", 4), root / "demos", ["red-0"], 2, seed=0)
    save_policy(build_policy(backbone="state", state_dim=2, action_dim=2), root / "policy")
    assert main([*TRAIN, "--iterations", "1", "--out", str(root / "run")]) == 0
    # broken copies
    for name, edit in {"v99": lambda m: m.update(format_version=99),
                       "unknown_field": lambda m: m["policy"].update(evil="x"),
                       "bad_type": lambda m: m["policy"].update(chunk_size="4"),
                       "bad_family": lambda m: m["policy"].update(family="pickle"),
                       # values of the right type but no usable size: refused before anything is allocated
                       "neg_dim": lambda m: m["policy"].update(dim=-4),
                       "huge_dim": lambda m: m["policy"].update(dim=2 ** 20, heads=1),
                       "huge_image": lambda m: m["policy"].update(image_size=100_000),
                       "heads_dim": lambda m: m["policy"].update(dim=63, heads=4),
                       "bad_head": lambda m: m["policy"].update(head="mlp")}.items():
        shutil.copytree(root / "policy", root / name)
        meta = json.loads((root / name / "config.json").read_text())
        edit(meta)
        (root / name / "config.json").write_text(json.dumps(meta))
    shutil.copytree(root / "demos", root / "demos_badinfo")
    (root / "demos_badinfo" / "meta" / "info.json").write_text("{not json")
    shutil.copytree(root / "demos", root / "demos_badeps")
    with open(root / "demos_badeps" / "meta" / "episodes.jsonl", "a") as f:
        f.write('{"episode_index": 9, "succ\n')
    shutil.copytree(root / "demos", root / "demos_nopq")
    next((root / "demos_nopq" / "data").rglob("*.parquet")).unlink()
    shutil.copytree(root / "demos", root / "demos_badpq")
    next((root / "demos_badpq" / "data").rglob("*.parquet")).write_text("not parquet")
    shutil.copytree(root / "run", root / "crafted")  # a checkpoint whose state.json carries an unknown field
    st = json.loads((root / "crafted" / "checkpoint" / "state.json").read_text())
    st["config"]["exec"] = "rm -rf /"
    (root / "crafted" / "checkpoint" / "state.json").write_text(json.dumps(st))
    shutil.copytree(root / "demos", root / "demos_nosim")  # recorded before demos carried sim_state
    info = json.loads((root / "demos_nosim" / "meta" / "info.json").read_text())
    info["features"].pop("observation.sim_state", None)
    (root / "demos_nosim" / "meta" / "info.json").write_text(json.dumps(info))
    shutil.copytree(root / "demos", root / "demos_views_true")  # JSON true where a count goes (True == 1 in Python)
    info = json.loads((root / "demos_views_true" / "meta" / "info.json").read_text())
    info["views"] = True
    (root / "demos_views_true" / "meta" / "info.json").write_text(json.dumps(info))
    for name, edit in RESUME_EDITS.items():  # hand-edited checkpoints: refused in one line on --resume
        shutil.copytree(root / "run", root / name)
        edit(root / name / "checkpoint")
    _poc(root, root / "poc_marker")  # an HF checkpoint whose backbone asks to run its own code (auto_map)
    (root / "lm_remote").mkdir()  # a "local causal LM" for --grape.lm-path that asks the same
    (root / "lm_remote" / "config.json").write_text(json.dumps({"model_type": "x_remote", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}}))
    (root / "lm_remote" / "configuration_x.py").write_text(f"open({str(root / 'poc_marker')!r}, 'w').write('pwned')\n")
    (root / "afile").write_text("x")
    (root / "loop").symlink_to("loop")  # environment faults: a symlink loop, a dangling link, a file that is a folder
    (root / "dangling").symlink_to(root / "nowhere" / "x")
    (root / "mdir" / "metrics.jsonl").mkdir(parents=True)
    (root / "mine").mkdir()  # a user's folder: never replaced by an output written whole
    (root / "mine" / "thesis.tex").write_text("x")
    return root


def _edit_state(ck: Path, fn) -> None:
    st = json.loads((ck / "state.json").read_text())
    fn(st)
    (ck / "state.json").write_text(json.dumps(st))  # NaN is written as the JSON extension Python reads back


def _edit_optimizer(ck: Path) -> None:
    opt = torch.load(ck / "optimizer.pt", weights_only=True)
    opt["param_groups"][0]["params"] = opt["param_groups"][0]["params"][:-1]
    torch.save(opt, ck / "optimizer.pt")


def _edit_optimizer_shape(ck: Path) -> None:
    opt = torch.load(ck / "optimizer.pt", weights_only=True)
    opt["state"][0] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3, 1), "exp_avg_sq": torch.zeros(3, 1)}
    torch.save(opt, ck / "optimizer.pt")


def _edit_rng(ck: Path) -> None:
    from safetensors.torch import load_file, save_file

    rng = load_file(str(ck / "rng.safetensors"))
    rng["torch_cpu"] = rng["torch_cpu"][:100].clone()
    save_file(rng, str(ck / "rng.safetensors"))


RESUME_EDITS = {
    "lr_nan": lambda ck: _edit_state(ck, lambda st: st["config"].update(lr=float("nan"))),
    "lr_huge_int": lambda ck: _edit_state(ck, lambda st: st["config"].update(lr=10 ** 400)),  # past float's range
    "ckpt_every_0": lambda ck: _edit_state(ck, lambda st: st["config"].update(checkpoint_every=0)),
    "seed_huge": lambda ck: _edit_state(ck, lambda st: st["config"].update(seed=2 ** 40)),
    "rloo_clip_neg": lambda ck: _edit_state(ck, lambda st: st["config"]["rloo"].update(clip=-1.0)),
    "no_history": lambda ck: _edit_state(ck, lambda st: st["sampler"].pop("history")),
    "bad_history": lambda ck: _edit_state(ck, lambda st: st["sampler"].update(history={"0": ["x"]})),
    "bad_sampler_rng": lambda ck: _edit_state(ck, lambda st: st["sampler"].update(rng={"state": 1})),
    "opt_groups": _edit_optimizer,
    "opt_shape": _edit_optimizer_shape,
    "rng_size": _edit_rng,
}


def _tree(*roots) -> set:
    return {str(p) for r in roots for p in Path(r).rglob("*")}


# (case id, argv with W = the world fixture dir and T = a fresh temp dir, words the message must hold)
CASES = [
    ("collect-episodes-0", ["collect", "--episodes", "0", "--out", "T/d"], ["--episodes", ">= 1"]),
    ("collect-episodes-neg", ["collect", "--episodes", "-3", "--out", "T/d"], ["--episodes"]),
    ("collect-envkw-bogus", ["collect", "--env-kwargs", "bogus", "1", "--out", "T/d"], ["--env-kwargs", "bogus", "radius"]),
    ("collect-envkw-image", ["collect", "--env-kwargs", "image_size", "32", "--out", "T/d"], ["--image-size"]),
    ("collect-envkw-radius-neg", ["collect", "--env-kwargs", "radius", "-1", "--out", "T/d"], ["radius", "> 0"]),
    ("collect-envkw-nan", ["collect", "--env-kwargs", "speed", "nan", "--out", "T/d"], ["speed", "finite"]),
    ("collect-envkw-switch", ["collect", "--env-kwargs", "privileged", "2", "--out", "T/d"], ["privileged", "0 or 1"]),
    ("collect-workers-neg", ["collect", "--workers", "-1", "--out", "T/d"], ["--workers"]),
    ("collect-num-envs-0", ["collect", "--num-envs", "0", "--out", "T/d"], ["--num-envs"]),
    ("collect-noise-neg", ["collect", "--noise", "-0.1", "--out", "T/d"], ["--noise"]),
    ("collect-out-under-file", ["collect", "--out", "W/afile/d"], ["--out", "under the file"]),
    ("collect-out-is-file", ["collect", "--out", "W/afile"], ["--out", "is a file"]),
    ("collect-out-replaces-user-dir", ["collect", "--out", "W/mine"], ["--out", "not a vlaforge demo dataset"]),
    ("sft-out-replaces-user-dir", ["sft", "--demos", "W/demos", "--out", "W/mine"], ["--out", "not a vlaforge policy"]),
    ("eval-out-overwrites-user-file", ["eval", "--checkpoint", "W/policy", "--out", "W/afile"],
     ["--out", "not an eval manifest"]),
    ("collect-unknown-suite", ["collect", "--suite", "nosuch", "--out", "T/d"], ["unknown suite"]),
    ("sft-steps-0", ["sft", "--demos", "W/demos", "--sft.steps", "0", "--out", "T/s"], ["--sft.steps"]),
    ("sft-steps-neg", ["sft", "--demos", "W/demos", "--sft.steps", "-5", "--out", "T/s"], ["--sft.steps"]),
    ("sft-batch-0", ["sft", "--demos", "W/demos", "--sft.batch-size", "0", "--out", "T/s"], ["--sft.batch-size"]),
    ("sft-lr-nan", ["sft", "--demos", "W/demos", "--sft.lr", "nan", "--out", "T/s"], ["--sft.lr", "finite"]),
    ("sft-lr-neg", ["sft", "--demos", "W/demos", "--sft.lr", "-1", "--out", "T/s"], ["--sft.lr"]),
    ("sft-lr-huge", ["sft", "--demos", "W/demos", "--sft.lr", "1e38", "--out", "T/s"], ["--sft.lr", "<= 10"]),
    ("sft-min-lr-above-lr", ["sft", "--demos", "W/demos", "--sft.schedule", "cosine", "--sft.min-lr", "0.01",
                            "--out", "T/s"], ["--sft.min-lr", "must not exceed --sft.lr"]),
    ("sft-schedule-bogus", ["sft", "--demos", "W/demos", "--sft.schedule", "step", "--out", "T/s"], ["--sft.schedule"]),
    ("sft-threads-0", ["sft", "--demos", "W/demos", "--threads", "0", "--out", "T/s"], ["--threads"]),
    ("sft-chunk-0", ["sft", "--demos", "W/demos", "--chunk-size", "0", "--out", "T/s"], ["--chunk-size"]),
    ("sft-head-bogus", ["sft", "--demos", "W/demos", "--head", "mlp", "--out", "T/s"], ["--head", "gaussian"]),
    ("sft-no-demos", ["sft", "--demos", "T/nothing", "--out", "T/s"], ["--demos", "vlaforge collect"]),
    ("sft-bad-info-json", ["sft", "--demos", "W/demos_badinfo", "--out", "T/s"], ["info.json", "not valid JSON"]),
    ("sft-info-views-true", ["sft", "--demos", "W/demos_views_true", "--out", "T/s"], ["info.json", "re-create it"]),
    ("sft-bad-episodes-json", ["sft", "--demos", "W/demos_badeps", "--out", "T/s"], ["episodes.jsonl", "line"]),
    ("sft-missing-parquet", ["sft", "--demos", "W/demos_nopq", "--out", "T/s"], [".parquet", "missing"]),
    ("sft-corrupt-parquet", ["sft", "--demos", "W/demos_badpq", "--out", "T/s"], [".parquet", "unreadable"]),
    ("sft-init-with-head", ["sft", "--demos", "W/demos", "--init", "W/policy", "--head", "flow", "--out", "T/s"],
     ["--head", "--init"]),
    ("sft-init-with-chunk", ["sft", "--demos", "W/demos", "--init", "W/policy", "--chunk-size", "8", "--out", "T/s"],
     ["--chunk-size", "--init"]),
    ("sft-out-under-file", ["sft", "--demos", "W/demos", "--out", "W/afile/s"], ["--out", "under the file"]),
    ("train-iterations-neg", [*TRAIN, "--iterations", "-1", "--out", "T/r"], ["--iterations"]),
    ("train-groups-0", [*TRAIN, "--groups", "0", "--out", "T/r"], ["--groups"]),
    ("train-checkpoint-every-0", [*TRAIN, "--checkpoint-every", "0", "--out", "T/r"], ["--checkpoint-every"]),
    ("train-image-size-33", ["train", "--image-size", "33", "--out", "T/r"], ["--image-size", "multiple of 8"]),
    ("train-chunk-0", [*TRAIN, "--chunk-size", "0", "--out", "T/r"], ["--chunk-size"]),
    ("train-readout-without-readout", [*TRAIN, "--algo", "ppo", "--ppo.readout-coef", "1", "--out", "T/r"],
     ["--ppo.readout-coef", "--aux"]),
    ("train-distill-no-teacher", [*TRAIN, "--algo", "distill", "--out", "T/r"], ["--distill.teacher"]),
    ("train-distill-bad-state", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/policy",
                                 "--distill.teacher-state", "a,b", "--out", "T/r"], ["--distill.teacher-state"]),
    ("train-distill-state-length", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/policy",
                                    "--distill.teacher-state", "0,1,2", "--out", "T/r"], ["--distill.teacher-state", "2"]),
    ("train-distill-teacher-missing", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/nothere",
                                       "--distill.teacher-state", "0,1", "--out", "T/r"], ["nothere"]),
    ("train-distill-unknown-field", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/policy",
                                     "--distill.teacher-state", "ee_x,bogus", "--out", "T/r"],
     ["--distill.teacher-state", "'bogus'", "valid: ee_x, ee_y, goal_x"]),
    ("train-distill-index-out-of-range", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/policy",
                                          "--distill.teacher-state", "0,99", "--out", "T/r"],
     ["--distill.teacher-state", "99", "name the fields"]),
    ("train-distill-no-fields-recorded", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/policy", "--out", "T/r"],
     ["does not record", "--distill.teacher-state"]),
    ("train-distill-teacher-other-task", [*TRAIN, "--algo", "distill", "--tasks", "red-0", "--distill.teacher",
                                          "red-0=W/policy,blue-1=W/policy", "--distill.teacher-state", "ee_x,ee_y",
                                          "--out", "T/r"], ["--distill.teacher", "blue-1", "red-0"]),
    ("train-distill-capacity-zero", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/policy",
                                     "--distill.capacity", "0", "--out", "T/r"], ["--distill.capacity", ">= 1"]),
    ("train-distill-steps-zero", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/policy",
                                  "--distill.steps", "0", "--out", "T/r"], ["--distill.steps", ">= 1"]),
    ("train-distill-batch-size-zero", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/policy",
                                       "--distill.batch-size", "0", "--out", "T/r"], ["--distill.batch-size", ">= 1"]),
    ("train-distill-teacher-not-pair", [*TRAIN, "--algo", "distill", "--distill.teacher", "red-0=W/policy,=x",
                                        "--distill.teacher-state", "ee_x,ee_y", "--out", "T/r"], ["TASK=DIR"]),
    ("train-distill-cache-without-group", [*TRAIN, "--algo", "distill", "--distill.teachers-cache", "T/c",
                                           "--out", "T/r"], ["--distill.teachers-cache", "privileged"]),
    ("train-curriculum-floor-0", [*TRAIN, "--curriculum", "need", "--curriculum-floor", "0", "--out", "T/r"],
     ["--curriculum-floor", "(0, 1]"]),
    ("demo-teacher-demos-neg", ["demo", "--teacher-demos", "-1", "--out", "T/d"], ["--teacher-demos", ">= 0"]),
    ("demo-seed-neg", ["demo", "--seed", "-1", "--out", "T/d"], ["--seed", "[0,"]),
    ("demo-seed-past-demo-seeds", ["demo", "--seed", "50000", "--out", "T/d"], ["--seed", "<= 42938"]),
    ("demo-distill-steps-zero", ["demo", "--distill-steps", "0", "--out", "T/d"], ["--distill-steps", ">= 1"]),
    ("demo-threads-zero", ["demo", "--threads", "0", "--out", "T/d"], ["--threads", ">= 1"]),
    ("sft-aux-without-sim-state", ["sft", "--demos", "W/demos_nosim", "--aux", "--out", "T/s"], ["--aux", "sim_state"]),
    ("train-threads-0", [*TRAIN, "--threads", "0", "--out", "T/r"], ["--threads"]),
    ("train-lr-neg", [*TRAIN, "--lr", "-1", "--out", "T/r"], ["--lr", "> 0"]),
    ("train-lr-nan", [*TRAIN, "--lr", "nan", "--out", "T/r"], ["--lr", "finite"]),
    ("train-workers-neg", [*TRAIN, "--workers", "-1", "--out", "T/r"], ["--workers"]),
    ("train-eval-episodes-0", [*TRAIN, "--eval-episodes", "0", "--out", "T/r"], ["--eval-episodes"]),
    ("train-group-size-1", [*TRAIN, "--rloo.group-size", "1", "--out", "T/r"], ["--rloo.group-size"]),
    ("train-envkw-bogus", [*TRAIN, "--env-kwargs", "bogus", "1", "--out", "T/r"], ["--env-kwargs", "bogus"]),
    ("train-envkw-image", [*TRAIN, "--env-kwargs", "image_size", "32", "--out", "T/r"], ["--image-size"]),
    ("train-out-under-file", [*TRAIN, "--out", "W/afile/r"], ["--out", "under the file"]),
    ("train-recipe-unknown", [*TRAIN, "--recipe", "nope", "--out", "T/r"], ["--recipe", "ript-vla"]),
    ("train-ire-vla-iterations", ["train", "--recipe", "ire-vla", "--iterations", "1", "--init", "W/policy",
                                  "--out", "T/r"], ["--iterations", "--ire-vla.rl-iterations"]),
    ("train-vla-rl-no-demos", ["train", "--recipe", "vla-rl", "--iterations", "1", "--out", "T/r"],
     ["--vla-rl.demos", "--vla-rl.rprm"]),
    ("train-grape-lm-no-path", ["train", "--recipe", "grape", "--grape.decomposer", "lm", "--out", "T/r"],
     ["--grape.lm-path"]),
    ("train-hf-flow-steps-1", [*TRAIN, "--policy.flow-steps", "1", "--out", "T/r"], ["--policy.flow-steps"]),
    ("train-tpo-base-no-lora", [*TRAIN, "--algo", "tpo", "--tpo.reference", "base", "--out", "T/r"],
     ["--tpo.reference", "LoRA"]),
    ("train-init-with-head", ["train", *PRIV, "--init", "W/policy", "--head", "flow", "--out", "T/r"],
     ["--head", "--init"]),
    ("train-init-with-log-std", ["train", *PRIV, "--init", "W/policy", "--log-std-init", "0", "--out", "T/r"],
     ["--log-std-init", "--init"]),
    ("train-log-std-out-of-range", [*TRAIN, "--log-std-init", "1", "--out", "T/r"], ["--log-std-init", "[-4.0, 0.5]"]),
    ("train-init-wrong-dims", ["train", "--iterations", "1", "--groups", "2", "--num-envs", "4", "--eval-every", "0",
                               "--init", "W/run/final", "--env-kwargs", "radius", "0.2", "--out", "T/r"],
     ["--init", "state/action dims"]),
    ("train-hf-no-path", [*TRAIN, "--policy", "hf", "--out", "T/r"], ["--policy.path"]),
    ("resume-iterations", ["train", "--resume", "W/run/checkpoint", "--iterations", "5"],
     ["--iterations", "cannot change on resume"]),
    ("train-resume-iterations-fresh", [*TRAIN, "--resume-iterations", "5", "--out", "T/r"], ["--resume-iterations",
                                                                                              "--resume CK"]),
    ("resume-suite", ["train", "--resume", "W/run/checkpoint", "--suite", "metaworld"], ["--suite", "resume"]),
    ("resume-threads", ["train", "--resume", "W/run/checkpoint", "--threads", "2"], ["--threads", "resume"]),
    ("resume-run-dir", ["train", "--resume", "W/run"], ["--resume", "run/checkpoint"]),
    ("resume-missing", ["train", "--resume", "T/none"], ["no training checkpoint"]),
    ("resume-crafted-state", ["train", "--resume", "W/crafted/checkpoint"], ["state.json", "exec"]),
    # the checkpoint is input too: its saved config passes the checks of a fresh one, its files fit the policy
    ("resume-state-lr-nan", ["train", "--resume", "W/lr_nan/checkpoint"], ["state.json", "--lr", "finite"]),
    ("resume-state-lr-huge-int", ["train", "--resume", "W/lr_huge_int/checkpoint"], ["state.json", "--lr", "finite"]),
    ("resume-state-checkpoint-every-0", ["train", "--resume", "W/ckpt_every_0/checkpoint"],
     ["state.json", "--checkpoint-every"]),
    ("resume-state-seed-huge", ["train", "--resume", "W/seed_huge/checkpoint"], ["state.json", "--seed", "32-bit"]),
    ("resume-state-rloo-clip-neg", ["train", "--resume", "W/rloo_clip_neg/checkpoint"], ["state.json", "--rloo.clip"]),
    ("resume-sampler-no-history", ["train", "--resume", "W/no_history/checkpoint"], ["state.json", "history"]),
    ("resume-sampler-bad-history", ["train", "--resume", "W/bad_history/checkpoint"], ["state.json", "history"]),
    ("resume-sampler-bad-rng", ["train", "--resume", "W/bad_sampler_rng/checkpoint"], ["state.json", "rng"]),
    ("resume-optimizer-groups", ["train", "--resume", "W/opt_groups/checkpoint"],
     ["optimizer.pt", "parameter groups"]),
    ("resume-optimizer-state-shape", ["train", "--resume", "W/opt_shape/checkpoint"], ["optimizer.pt", "shape"]),
    ("resume-rng-size", ["train", "--resume", "W/rng_size/checkpoint"], ["rng.safetensors", "torch_cpu"]),
    ("eval-episodes-0", ["eval", "--checkpoint", "W/policy", "--episodes", "0", "--env-kwargs", "privileged", "1"],
     ["--episodes"]),
    ("eval-episodes-neg", ["eval", "--checkpoint", "W/policy", "--episodes", "-2"], ["--episodes"]),
    ("eval-videos-neg", ["eval", "--checkpoint", "W/policy", "--videos", "-1"], ["--videos"]),
    ("eval-workers-neg", ["eval", "--checkpoint", "W/policy", "--workers", "-1"], ["--workers"]),
    ("eval-threads-0", ["eval", "--checkpoint", "W/policy", "--threads", "0"], ["--threads"]),
    ("eval-envkw-bogus", ["eval", "--checkpoint", "W/policy", "--env-kwargs", "bogus", "1"], ["bogus"]),
    ("eval-envkw-image", ["eval", "--checkpoint", "W/policy", "--env-kwargs", "image_size", "32"], ["--image-size"]),
    ("eval-out-under-file", ["eval", "--checkpoint", "W/policy", "--out", "W/afile/m.json"], ["--out", "under the file"]),
    ("eval-out-is-dir", ["eval", "--checkpoint", "W/policy", "--out", "W/demos"], ["--out", "is a directory"]),
    ("eval-no-checkpoint", ["eval", "--checkpoint", "T/nope"], ["no checkpoint"]),
    ("eval-format-99", ["eval", "--checkpoint", "W/v99"], ["format_version 99"]),
    ("eval-config-unknown-field", ["eval", "--checkpoint", "W/unknown_field"], ["config.json", "evil"]),
    ("eval-config-bad-type", ["eval", "--checkpoint", "W/bad_type"], ["config.json", "chunk_size"]),
    ("eval-config-bad-family", ["eval", "--checkpoint", "W/bad_family"], ["config.json", "pickle"]),
    ("eval-config-negative-dim", ["eval", "--checkpoint", "W/neg_dim"], ["config.json", "'dim' = -4"]),
    ("eval-config-huge-dim", ["eval", "--checkpoint", "W/huge_dim"], ["config.json", "GiB", "parameters"]),
    ("eval-config-huge-image", ["eval", "--checkpoint", "W/huge_image"], ["config.json", "image_size"]),
    ("eval-config-heads-dim", ["eval", "--checkpoint", "W/heads_dim"], ["config.json", "multiple of 'heads'"]),
    ("eval-config-bad-head", ["eval", "--checkpoint", "W/bad_head"], ["config.json", "head", "gaussian"]),
    ("sft-init-huge-dim", ["sft", "--demos", "W/demos", "--init", "W/huge_dim", "--out", "T/s"], ["config.json", "GiB"]),
    ("train-init-negative-dim", [*TRAIN, "--init", "W/neg_dim", "--out", "T/r"], ["config.json", "'dim'"]),
    # numeric flags are bounded before any work
    ("collect-image-size-huge", ["collect", "--image-size", "100000", "--out", "T/d"], ["--image-size", "1024"]),
    ("collect-image-size-4", ["collect", "--image-size", "4", "--out", "T/d"], ["--image-size", "[8, 1024]"]),
    ("train-image-size-huge", [*TRAIN, "--image-size", "4096", "--out", "T/r"], ["--image-size", "1024"]),
    ("collect-seed-huge", ["collect", "--seed", str(2 ** 32), "--out", "T/d"], ["--seed", "32-bit"]),
    ("collect-seed-demo-range", ["collect", "--seed", "50000", "--out", "T/d"], ["--seed", "demo env seeds"]),
    ("collect-seed-float", ["collect", "--seed", "1e20", "--out", "T/d"], ["--seed", "1e20"]),
    ("collect-seed-neg", ["collect", "--seed", "-1", "--out", "T/d"], ["--seed"]),
    ("train-seed-huge", [*TRAIN, "--seed", str(2 ** 40), "--out", "T/r"], ["--seed", "32-bit"]),
    ("train-seed-float", [*TRAIN, "--seed", "1.5", "--out", "T/r"], ["--seed", "1.5"]),
    ("sft-seed-huge", ["sft", "--demos", "W/demos", "--sft.seed", str(2 ** 33), "--out", "T/s"], ["--sft.seed"]),
    ("eval-seed-base-huge", ["eval", "--checkpoint", "W/policy", "--seed-base", str(2 ** 32 - 3), "--episodes", "5"],
     ["--seed-base"]),
    # environment faults: one line before any work, nothing half-written
    ("collect-out-symlink-loop", ["collect", "--out", "W/loop/d"], ["--out", "symbolic links"]),
    ("train-out-symlink-loop", [*TRAIN, "--out", "W/loop"], ["--out", "symbolic links"]),
    ("eval-checkpoint-symlink-loop", ["eval", "--checkpoint", "W/loop"], ["--checkpoint", "symbolic links"]),
    ("sft-demos-symlink-loop", ["sft", "--demos", "W/loop", "--out", "T/s"], ["--demos", "symbolic links"]),
    ("resume-symlink-loop", ["train", "--resume", "W/loop/checkpoint"], ["--resume", "symbolic links"]),
    ("sft-out-dangling-link", ["sft", "--demos", "W/demos", "--out", "W/dangling"], ["--out", "symbolic link", "missing"]),
    ("train-out-metrics-is-a-folder", [*TRAIN, "--out", "W/mdir"], ["--out", "metrics.jsonl", "folder"]),
    ("collect-out-name-too-long", ["collect", "--out", "T/" + "a" * 300], ["--out", "300 bytes", "shorter"]),
    ("sft-out-name-no-room-for-temp", ["sft", "--demos", "W/demos", "--out", "T/" + "b" * 240],
     ["--out", "temp files"]),
    ("train-out-name-too-long", [*TRAIN, "--out", "T/x/" + "c" * 256 + "/r"], ["--out", "256 bytes"]),
    ("eval-checkpoint-name-too-long", ["eval", "--checkpoint", "T/" + "d" * 300], ["--checkpoint", "300 bytes"]),
    ("train-unknown-flag", [*TRAIN, "--bogus", "1", "--out", "T/r"], ["--bogus"]),
    ("train-bad-choice", [*TRAIN, "--algo", "nope", "--out", "T/r"], ["--algo", "nope"]),
    ("eval-wrong-dims", ["eval", "--checkpoint", "W/run/final", "--env-kwargs", "privileged", "0"],
     ["state/action dims"]),
    ("eval-duplicate-task", ["eval", "--checkpoint", "W/policy", "--tasks", "red-0,blue-0,red-0"], ["--tasks", "red-0"]),
    ("eval-unknown-task", ["eval", "--checkpoint", "W/policy", "--tasks", "magenta-7"], ["unknown"]),
    ("unknown-command", ["frobnicate"], ["unknown command"]),
    # GRAPE's cost weights are finite numbers
    ("train-grape-cost-weights-nan", ["train", "--recipe", "grape", "--grape.cost-weights", "path=nan", "--out", "T/r"],
     ["--grape.cost-weights", "path=nan", "finite"]),
    ("train-grape-cost-weights-inf", ["train", "--recipe", "grape", "--grape.cost-weights", "collision=-inf",
                                      "--out", "T/r"], ["--grape.cost-weights", "finite"]),
    # a run owns its folder: never written over another run or another command's output (vlaforge.runlock)
    ("train-out-holds-a-run", [*TRAIN, "--out", "W/run"], ["--out", "training run", "--overwrite"]),
    ("train-out-is-a-policy", [*TRAIN, "--overwrite", "--out", "W/policy"], ["--out", "policy folder"]),
    ("train-out-is-demos", [*TRAIN, "--out", "W/demos"], ["--out", "demo dataset"]),
    ("train-out-is-a-checkpoint", [*TRAIN, "--out", "W/run/checkpoint"], ["--out", "training checkpoint"]),
    ("sft-out-holds-a-policy", ["sft", "--demos", "W/demos", "--out", "W/policy"], ["--out", "policy", "--overwrite"]),
    ("sft-out-is-a-checkpoint", ["sft", "--demos", "W/demos", "--overwrite", "--out", "W/run/checkpoint"],
     ["--out", "training checkpoint"]),
    ("sft-out-is-a-runs-final", ["sft", "--demos", "W/demos", "--overwrite", "--out", "W/run/final"],
     ["--out", "part of the training run"]),
    ("sft-out-is-a-run", ["sft", "--demos", "W/demos", "--out", "W/run"], ["--out", "training run folder"]),
    ("sft-out-is-demos", ["sft", "--demos", "W/demos", "--out", "W/demos"], ["--out", "demo dataset"]),
    ("collect-out-is-a-checkpoint", ["collect", "--out", "W/run/checkpoint"], ["--out", "training checkpoint"]),
    ("collect-out-is-a-policy", ["collect", "--out", "W/policy"], ["--out", "policy folder"]),
    ("collect-out-is-a-run", ["collect", "--out", "W/run"], ["--out", "training run folder"]),
    ("demo-out-is-a-run", ["demo", "--out", "W/run"], ["--out", "training run folder"]),
    ("resume-overwrite-own-run", ["train", "--resume", "W/run/checkpoint", "--overwrite"], ["--overwrite", "resume"]),
    ("resume-fork-into-another-run", ["train", "--resume", "W/run/checkpoint", "--out", "W/crafted"],
     ["--out", "--overwrite"]),
    # the remote-code refusal names the flag of the command at hand
    ("sft-init-remote-code", ["sft", "--demos", "W/demos", "--init", "W/poc", "--out", "T/s"],
     ["--init", "auto_map", "only with --trust-remote-code"]),
    ("train-init-remote-code", ["train", "--init", "W/poc", "--out", "T/r"],
     ["--init", "auto_map", "only with --policy.trust-remote-code"]),
    ("train-grape-lm-remote-code", ["train", "--recipe", "grape", "--grape.decomposer", "lm", "--grape.lm-path",
                                    "W/lm_remote", "--out", "T/r"], ["--grape.lm-path", "auto_map", "never runs it"]),
    ("train-distill-teacher-remote-code", [*TRAIN, "--algo", "distill", "--distill.teacher", "W/poc",
                                           "--distill.teacher-state", "0,1", "--out", "T/r"],
     ["--distill.teacher", "auto_map", "never runs it"]),
    # issue 22/23/26 flags
    ("train-device-malformed", ["train", "--device", "gpu0", "--out", "T/r"], ["--device", "not a device"]),
    ("sft-device-malformed", ["sft", "--demos", "W/demos", "--device", "tpu:0", "--out", "T/s"], ["--device"]),
    ("eval-device-malformed", ["eval", "--checkpoint", "W/policy", "--device", "cuda:x"], ["--device"]),
    ("train-precision-unknown", ["train", "--precision", "fp16", "--out", "T/r"], ["--precision"]),
    ("train-log-unknown", ["train", "--log", "mlflow", "--out", "T/r"], ["--log"]),
    ("train-ray-learner-gpus-2", ["train", "--ray", "--ray.learner-gpus", "2", "--out", "T/r"],
     ["--ray.learner-gpus", "[0, 1]"]),
    ("train-ray-worker-gpus-neg", ["train", "--ray", "--ray.env-worker-gpus", "-1", "--out", "T/r"],
     ["--ray.env-worker-gpus"]),
    ("train-kl-backtracks-neg", ["train", "--algo", "ppo", "--ppo.kl-backtracks", "-1", "--out", "T/r"],
     ["--ppo.kl-backtracks"]),
    ("collect-format-unknown", ["collect", "--format", "v4", "--out", "T/d"], ["--format"]),
    ("sft-demos-map-role", ["sft", "--demos", "W/demos", "--demos-map", "observation.state=camera", "--out", "T/s"],
     ["--demos-map", "unknown role"]),
    ("sft-demos-map-missing", ["sft", "--demos", "W/demos", "--demos-map",
                               "observation.images.wrist9=image0,observation.state=state,action=action", "--out", "T/s"],
     ["--demos-map", "no feature"]),
    ("export-to-unknown", ["export", "W/policy", "--to", "onnx", "--out", "T/x"], ["--to"]),
    ("export-tiny-to-hf", ["export", "W/policy", "--to", "hf", "--out", "T/x"], ["--to hf", "no loader outside"]),
    ("export-out-is-policy", ["export", "W/policy", "--to", "peft", "--out", "W/policy"], ["--to peft"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_one_line_exit_2_nothing_written(argv, words, world, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/...) land here and are checked too
    argv = [a.replace("W/", f"{world}/").replace("T/", f"{tmp_path}/") for a in argv]
    before = _tree(world, tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert _tree(world, tmp_path) == before, "a refused command left files behind"


def test_remote_code_flags_named_in_errors_exist():
    """The flag each command's remote-code refusal names is one of that command's flags."""
    from vlaforge.validate import TRUST_FLAG

    for command, flag in TRUST_FLAG.items():
        r = subprocess.run([sys.executable, "-m", "vlaforge.cli", command, "--help"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "COLUMNS": "200"})
        assert r.returncode == 0 and flag + "," in r.stdout, (command, flag, r.stdout[-2000:])


def test_console_script_one_line(tmp_path):
    """The installed entry point (a subprocess) prints the same single line and exits 2."""
    r = subprocess.run([sys.executable, "-m", "vlaforge.cli", "collect", "--episodes", "0", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--episodes" in r.stderr, r.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_read_only_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["collect", "--out", str(ro / "d")]) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_out_read_only_run_folder(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main([*TRAIN, "--iterations", "1", "--out", str(ro)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot write" in err, err
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_metrics_file_that_became_a_folder_is_one_line(tmp_path):
    """After the checks (a folder changed meanwhile): RunLogger's open fails as an EnvError, not a traceback."""
    from vlaforge.envs import EnvError
    from vlaforge.train.logging import RunLogger

    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(EnvError, match="metrics.jsonl"):
        RunLogger(tmp_path, tensorboard=False)


def test_internal_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """A plain ValueError from inside a command is a bug: it propagates (traceback), not a one-line message."""
    import vlaforge.pipeline

    def boom(a, quiet=False):
        raise ValueError("max() arg is an empty sequence")

    monkeypatch.setattr(vlaforge.pipeline, "run_collect", boom)
    with pytest.raises(ValueError, match="empty sequence"):
        main(["collect", "--episodes", "1", "--out", str(tmp_path / "d")])


# -- security: a checkpoint never runs code ---------------------------------------------------------

def _poc(root: Path, marker: Path) -> Path:
    """A checkpoint dir whose backbone/config.json maps AutoConfig to a configuration_x.py that writes ``marker``."""
    ck = root / "poc"
    (ck / "backbone").mkdir(parents=True)
    from safetensors.torch import save_file

    save_file({"act_lo": -torch.ones(2), "act_hi": torch.ones(2)}, str(ck / "model.safetensors"))
    (ck / "config.json").write_text(json.dumps({"format_version": 1, "policy": {
        "family": "hf", "path": str(ck / "base"), "trust_remote_code": True, "head": "tokens", "state_dim": 2, "action_dim": 2,
        "views": 1, "image_size": 64, "lora_rank": 0}}))
    (ck / "backbone" / "config.json").write_text(json.dumps({
        "model_type": "x", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    (ck / "backbone" / "configuration_x.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n"
        "from transformers import PretrainedConfig\nclass XConfig(PretrainedConfig):\n    model_type = 'x'\n")
    return ck


def test_checkpoint_remote_code_never_runs_without_the_flag(tmp_path, capsys):
    marker = tmp_path / "marker"
    ck = _poc(tmp_path, marker)
    assert main(["eval", "--checkpoint", str(ck), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert err.count("\n") == 1 and "--trust-remote-code" in err and "auto_map" in err, err
    # the loader itself refuses too (programmatic use, no validation in front), before transformers reads it
    from vlaforge.policies import CheckpointError, load_policy

    with pytest.raises(CheckpointError, match="auto_map"):
        load_policy(ck)
    assert not marker.exists()


def test_poc_is_real_with_the_flag(tmp_path):
    """The same directory does run its code when the user passes --trust-remote-code: the test above can fail."""
    pytest.importorskip("transformers")
    marker = tmp_path / "marker"
    ck = _poc(tmp_path, marker)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "vlaforge.cli", "eval", "--checkpoint", str(ck), "--episodes", "1",
                        "--trust-remote-code", "--threads", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert marker.exists(), r.stderr[-3000:]


def test_policy_config_allow_list_is_per_family():
    from dataclasses import dataclass

    from vlaforge.policies import CheckpointError
    from vlaforge.validate import CONFIG_SCHEMAS, check_policy_config, register_config_schema

    @dataclass
    class ToyConfig:
        width: int = 4
        name: str | None = None

    meta = {"format_version": 1, "policy": {"family": "toy", "width": 8}}
    with pytest.raises(CheckpointError, match="family"):
        check_policy_config(meta, "x")
    register_config_schema("toy", ToyConfig, ignored=("legacy",))
    try:
        assert check_policy_config({**meta, "policy": {**meta["policy"], "legacy": 1}}, "x") == {"family": "toy",
                                                                                                "width": 8}
        with pytest.raises(CheckpointError, match="width"):
            check_policy_config({"policy": {"family": "toy", "width": 1.5}}, "x")
    finally:
        CONFIG_SCHEMAS.pop("toy")


@pytest.mark.parametrize("family,edit,words", [
    ("hf", {"n_bins": -1}, "'n_bins' = -1"),
    ("hf", {"head_hidden": 2 ** 40}, "head_hidden"),
    ("hf", {"log_std_init": float("nan")}, "not finite"),
    ("hf", {"lora_dropout": 1.0}, "lora_dropout"),
    ("smolvla", {"state_dim": -2}, "state_dim"),
    ("openvla", {"max_text_tokens": 10 ** 9}, "max_text_tokens"),
    ("openvla-oft", {"center_crop": float("inf")}, "center_crop"),
])
def test_vlm_family_configs_bounded(family, edit, words):
    """The VLM families' config.json values (the heads and switches vlaforge adds) are bounded like the tiny VLA's."""
    pytest.importorskip("transformers")
    from vlaforge.errors import CheckpointError
    from vlaforge.schema import check_policy_config

    with pytest.raises(CheckpointError, match="config.json") as e:
        check_policy_config({"format_version": 1, "policy": {"family": family, **edit}}, "x")
    assert words in str(e.value), str(e.value)


def _text(**kv):
    return lambda raw: raw["text_config"].update(kv)


@pytest.mark.parametrize("edit,words", [
    (_text(hidden_size=-32), "hidden_size = -32"),
    (_text(num_hidden_layers="2"), "num_hidden_layers"),
    (_text(hidden_size=2 ** 20, intermediate_size=2 ** 22), "GiB"),
    (_text(vocab_size=10 ** 12), "GiB"),
    (lambda raw: raw.update(text_config=[1, 2]), "text_config is list"),
    (lambda raw: raw.update(image_sizes=["224px", 224]), "image_sizes"),
    (lambda raw: raw.update(image_sizes=[10 ** 9, 224]), "image_sizes"),
    (lambda raw: raw.update(n_action_bins=10 ** 6), "n_action_bins"),
    (lambda raw: raw["vlaforge_vit_overrides"][0].update(embed_dim=-16), "embed_dim"),
    (lambda raw: raw["vlaforge_vit_overrides"][0].update(embed_dim=2 ** 22, mlp_hidden=2 ** 22), "GiB"),
], ids=["neg-hidden", "str-layers", "huge-hidden", "huge-vocab", "text-list", "image-str", "image-huge", "bins",
        "vit-neg", "vit-huge"])
def test_openvla_config_bounded_before_allocation(tmp_path, edit, words):
    """A released OpenVLA config.json with unusable sizes is refused in one line (LayoutError, a UsageError) before
    anything is built; the real 7B sizes pass."""
    from vlaforge.errors import UsageError
    from vlaforge.policies.openvla.prismatic import read_prismatic_config
    from vlaforge.policies.openvla.tiny import tiny_config

    raw = tiny_config(2, 2, "pointreach")
    edit(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(UsageError) as e:
        read_prismatic_config(tmp_path)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config(2, 2, "pointreach", real_size=True)))
    assert read_prismatic_config(tmp_path).text_config["vocab_size"] == 32064


def test_openvla_huge_config_one_line_through_the_cli(tmp_path, capsys):
    pytest.importorskip("transformers")
    from vlaforge.policies.openvla.tiny import tiny_config

    raw = tiny_config(2, 2, "pointreach")
    raw["text_config"].update(hidden_size=2 ** 20, intermediate_size=2 ** 22)
    (tmp_path / "ovla").mkdir()
    (tmp_path / "ovla" / "config.json").write_text(json.dumps(raw))
    before = _tree(tmp_path)
    assert main(["train", "--policy", "openvla", "--policy.path", str(tmp_path / "ovla"), *OVLA,
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GiB" in err and "Traceback" not in err, err
    assert _tree(tmp_path) == before


# -- resume never writes elsewhere; repairs -----------------------------------------------------------

def _mtimes(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_mtime_ns for p in d.rglob("*")}


def test_resume_writes_into_the_checkpoints_parent_only(world, tmp_path, capsys):
    src = world / "run"
    copy = tmp_path / "C"
    shutil.copytree(src, copy)
    st = json.loads((copy / "checkpoint" / "state.json").read_text())
    st["config"]["out"] = str(tmp_path / "elsewhere")  # a crafted run directory is never used
    (copy / "checkpoint" / "state.json").write_text(json.dumps(st))
    before = _mtimes(src)
    assert main(["train", "--resume", str(copy / "checkpoint"), "--no-progress"]) == 0
    assert f"run directory: {copy}" in capsys.readouterr().out
    assert _mtimes(src) == before
    assert not (tmp_path / "elsewhere").exists()
    assert (copy / "final" / "model.safetensors").exists()
    # an explicit --out is honoured
    assert main(["train", "--resume", str(copy / "checkpoint"), "--out", str(tmp_path / "fork"), "--no-progress"]) == 0
    assert (tmp_path / "fork" / "final" / "model.safetensors").exists()


def test_torn_metrics_line_is_repaired(tmp_path):
    from vlaforge.train.checkpoint import repair_metrics

    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "a": 1}\n{"step": 2, "a": 2}\n{"step": 3, "a": 3}\n{"step": 4, "a"')
    assert repair_metrics(f, 2) == 2
    assert [json.loads(x)["step"] for x in f.read_text().splitlines()] == [1, 2]


def test_stale_temp_dirs_repaired(tmp_path):
    from vlaforge.fsutil import atomic_dir, repair_atomic

    ck = tmp_path / "checkpoint"
    with atomic_dir(ck) as t:
        (t / "a").write_text("1")
    dead = 2 ** 22 + 12345  # above the default pid_max: no such process
    (tmp_path / f".checkpoint.tmp-{dead}-abc").mkdir()
    (tmp_path / ".checkpoint.tmp-legacy").mkdir()  # an older vlaforge's name, without a pid
    with atomic_dir(ck) as t:  # every save removes leftovers of processes that are gone
        (t / "a").write_text("2")
    assert not (tmp_path / f".checkpoint.tmp-{dead}-abc").exists() and (tmp_path / ".checkpoint.tmp-legacy").exists()
    # killed between the two renames: only the .old- copy is left; resume's repair puts it back
    os.rename(ck, tmp_path / f".checkpoint.old-{dead}")
    repair_atomic(ck)
    assert (ck / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# -- non-finite guard ---------------------------------------------------------------------------------

def test_nonfinite_policy_never_written(world, tmp_path):
    from vlaforge.policies import load_policy
    from vlaforge.train.checkpoint import save_checkpoint
    from vlaforge.validate import NonFiniteError

    ck = tmp_path / "run" / "checkpoint"
    shutil.copytree(world / "run" / "checkpoint", ck)
    before = _mtimes(ck)
    policy = load_policy(ck)
    with torch.no_grad():
        next(policy.parameters()).fill_(float("nan"))
    opt = torch.optim.AdamW(policy.parameters())
    with pytest.raises(NonFiniteError, match=r"iteration 7: .*NaN.*last good checkpoint is .*\(iteration 1\)"):
        save_checkpoint(ck, policy, opt, {"iteration": 7}, torch.Generator())
    assert _mtimes(ck) == before and sorted(p.name for p in ck.parent.iterdir()) == ["checkpoint"]
    with pytest.raises(NonFiniteError):
        save_policy(policy, tmp_path / "sft")
    assert not (tmp_path / "sft").exists()


def test_diverging_sft_exits_1_and_saves_nothing(world, tmp_path, capsys):
    rc = main(["sft", "--demos", str(world / "demos"), "--out", str(tmp_path / "s"), "--sft.steps", "10",
               "--sft.batch-size", "4", "--sft.lr", "10", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "diverged" in err and "--sft.lr" in err, err
    assert not (tmp_path / "s").exists()


# -- evaluation protocol ------------------------------------------------------------------------------

def test_episode_outcomes_truncated_never_success():
    from types import SimpleNamespace

    from vlaforge.rollout.evaluate import episode_outcomes

    B = torch.tensor
    # 3 episodes, T = 3: ep0 solved at step 1 and ended there; ep1 flagged success but truncated at its end;
    # ep2 solved at step 0, kept running, ended at step 2 by the time limit without being solved then
    alive = B([[1, 1, 1], [1, 1, 1], [0, 1, 1]]).bool()
    terminated = B([[0, 0, 0], [1, 0, 0], [0, 0, 0]]).bool()
    truncated = B([[0, 0, 0], [0, 0, 0], [0, 1, 0]]).bool()
    r = SimpleNamespace(alive=alive, terminated=terminated, truncated=truncated, success=B([1, 1, 1]).bool())
    once, at_end = episode_outcomes(r)
    assert once.tolist() == [True, False, True] and at_end.tolist() == [True, False, False]


def test_eval_manifest_and_table_report_both_metrics(world, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(world / "run" / "final"), "--tasks", "red-0", "--episodes", "3",
                 "--num-envs", "3", "--threads", "1", *PRIV, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "at_end" in text and "3 episodes per task on seeds 10000000..10000002" in text
    m = json.loads(out.read_text())
    r = m["results"][0]
    assert {"success_rate", "success_once", "success_at_end", "successes"} <= set(r)
    assert r["success_once"] == r["success_rate"] and r["success_at_end"] <= r["success_once"]
    assert m["overall"]["success_at_end"] == pytest.approx(np.mean([x["success_at_end"] for x in m["results"]]))


def test_lost_episodes_reported_on_the_console(tmp_path):
    """Episodes of crashed env workers appear under the eval table and after training, not only in metrics.jsonl."""
    from vlaforge.cli import _lost_episodes
    from vlaforge.rollout.evaluate import TaskResult, format_table

    text = format_table([TaskResult("red-0", "train", 3, 8, 3), TaskResult("blue-0", "train", 1, 10, 1)], "t", 10)
    assert "seeds 10000000..10000009" in text and "warning: 2 episodes lost to crashed env workers" in text
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 1, "rollout/invalid_episodes": 2}\n{"step": 2, "rollout/invalid_episodes": 0}\n{"ste')
    assert _lost_episodes(f) == 2


def test_diverging_rl_run_stops_naming_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """NaN weights from iteration 2 on (injected into the optimizer step): the run exits 1 with one line naming the
    iteration-1 checkpoint, which is left intact; no final/ policy is written."""
    orig, calls = torch.optim.AdamW.step, [0]

    def step(self, *a, **k):
        out = orig(self, *a, **k)
        calls[0] += 1
        if calls[0] > first_iteration_steps[0]:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    first_iteration_steps = [10 ** 9]
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    args = [*TRAIN, "--algo", "ppo", "--ppo.minibatch-size", "32", "--groups", "4", "--iterations", "3"]
    assert main([*args, "--iterations", "1", "--out", str(tmp_path / "probe")]) == 0
    first_iteration_steps[0], calls[0] = calls[0], 0
    run = tmp_path / "run"
    rc = main([*args, "--out", str(run)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert "iteration 2" in err and f"last good checkpoint is '{run / 'checkpoint'}' (iteration 1)" in err, err
    assert json.loads((run / "checkpoint" / "state.json").read_text())["iteration"] == 1
    assert not (run / "final").exists() and not [p for p in run.iterdir() if p.name.startswith(".")]


# -- no model file decides to run code, whatever stdin answers ----------------------------------------

def _code(d: Path, module: str, marker: Path, body: str = "") -> None:
    """``d/<module>.py``: writes ``marker`` when imported (what transformers would do with an auto_map entry)."""
    (d / f"{module}.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n{body}")


def _edit_json(f: Path, **kv) -> None:
    data = json.loads(f.read_text())
    data.update(kv)
    f.write_text(json.dumps(data))


OVLA = ["--policy.max-text-tokens", "76", "--policy.head-hidden", "16", "--groups", "1", "--num-envs", "2",
        "--max-steps", "2", "--image-size", "28", "--iterations", "1", "--eval-every", "0", "--no-tensorboard",
        "--no-progress", "--threads", "1", "--rloo.group-size", "2"]
EVAL1 = ["--episodes", "1", "--num-envs", "1", "--tasks", "red-0", "--threads", "1"]


def _family_case(family: str, root: Path, marker: Path) -> tuple[list[str], bool]:
    """(argv of a command that reads a crafted checkpoint of ``family``, whether it may load: the auto_map ignored)."""
    d = root / family
    if family == "tiny":
        save_policy(build_policy(backbone="state", state_dim=2, action_dim=2), d)
        _edit_json(d / "config.json", auto_map={"AutoConfig": "configuration_x.XConfig"}, model_type="x_remote")
        _code(d, "configuration_x", marker)
        return ["eval", "--checkpoint", str(d), *EVAL1, "--out", str(root / "e.json")], True
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    cfg_body = "from transformers import PretrainedConfig\nclass XConfig(PretrainedConfig):\n    model_type = 'x_remote'\n"
    if family == "hf":  # a fresh --policy hf whose config maps AutoConfig to its own file
        from vlaforge.policies.hf.tiny import save_tiny_vlm

        save_tiny_vlm(d, "llava")
        _edit_json(d / "config.json", auto_map={"AutoConfig": "configuration_x.XConfig"}, model_type="x_remote")
        _code(d, "configuration_x", marker, cfg_body)
        return ["train", "--policy", "hf", "--policy.path", str(d), "--head", "tokens", "--policy.n-bins", "32",
                "--groups", "1", "--num-envs", "2", "--chunk-size", "2", "--max-steps", "4", "--image-size", "32",
                "--iterations", "1", "--eval-every", "0", "--no-tensorboard", "--no-progress", "--threads", "1",
                "--rloo.group-size", "2", "--out", str(root / "run")], False
    if family in ("openvla", "openvla-oft"):  # the released config.json carries this auto_map: it is ignored
        from vlaforge.policies.openvla.tiny import save_tiny_openvla

        save_tiny_openvla(d, oft=family == "openvla-oft")
        _edit_json(d / "config.json", auto_map={"AutoConfig": "configuration_prismatic.OpenVLAConfig",
                                                "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"})
        _code(d, "configuration_prismatic", marker)
        _code(d, "modeling_prismatic", marker)
        chunk = ["--chunk-size", "2"] if family == "openvla-oft" else []
        return ["train", "--policy", family, "--policy.path", str(d), *chunk, *OVLA, "--out", str(root / "run")], True
    if family in ("pi0", "pi0-saved"):  # LeRobot's pi0 layout / vlaforge's pi0 checkpoint: the tokenizer asks
        from vlaforge.policies.pi0 import load_lerobot as load_pi0
        from vlaforge.policies.pi0 import tiny_lerobot_dir as tiny_pi0_dir

        tiny_pi0_dir(d)
        ck = d if family == "pi0" else save_policy(load_pi0(d), root / "saved")
        f = ck / "tokenizer" / "tokenizer_config.json"
        tok = json.loads(f.read_text())
        tok.pop("tokenizer_class", None)
        f.write_text(json.dumps({**tok, "auto_map": {"AutoTokenizer": ["tokenization_x.XTok", "tokenization_x.XTok"]}}))
        _code(ck / "tokenizer", "tokenization_x", marker)
        return ["eval", "--checkpoint", str(ck), *EVAL1, "--out", str(root / "e.json")], False
    from vlaforge.policies.smolvla import load_lerobot, tiny_lerobot_dir

    tiny_lerobot_dir(d)
    if family == "smolvla":  # LeRobot's layout: the VLM's config in vlm/ maps AutoConfig to its own file
        _edit_json(d / "vlm" / "config.json", auto_map={"AutoConfig": "configuration_x.XConfig"}, model_type="x_remote")
        _code(d / "vlm", "configuration_x", marker, cfg_body)
        return ["eval", "--checkpoint", str(d), *EVAL1, "--out", str(root / "e.json")], False
    # smolvla-saved: vlaforge's own smolvla checkpoint, whose tokenizer/ maps AutoTokenizer to its own file
    ck = save_policy(load_lerobot(d), root / "saved")
    f = ck / "tokenizer" / "tokenizer_config.json"
    tok = json.loads(f.read_text())
    tok.pop("tokenizer_class", None)  # so that transformers would take the auto_map's class (and ask "run it?")
    f.write_text(json.dumps({**tok, "auto_map": {"AutoTokenizer": ["tokenization_x.XTok", "tokenization_x.XTok"]}}))
    _code(ck / "tokenizer", "tokenization_x", marker)
    return ["eval", "--checkpoint", str(ck), *EVAL1, "--out", str(root / "e.json")], False


@pytest.mark.parametrize("family", ["tiny", "hf", "openvla", "openvla-oft", "smolvla", "smolvla-saved", "pi0",
                                    "pi0-saved"])
def test_no_model_file_runs_code_even_when_stdin_says_yes(family, tmp_path):
    """A checkpoint of each family with an ``auto_map`` to a Python file that would write a marker: the CLI (a
    subprocess, "y" on stdin for transformers' "run this code?" prompt) never imports it; it either loads the
    checkpoint without it or refuses in one line."""
    marker = tmp_path / "marker"
    argv, may_load = _family_case(family, tmp_path, marker)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "vlaforge.cli", *argv], input="y\n" * 8, capture_output=True, text=True,
                       env=env, timeout=600)
    assert not marker.exists(), f"{family}: the checkpoint's code ran\n{r.stderr[-3000:]}"
    if r.returncode == 0:
        assert may_load, f"{family} loaded a checkpoint that asks to run code"
    else:
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert "auto_map" in lines[0] or "own Python code" in lines[0], lines[0]
