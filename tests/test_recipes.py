"""Recipes: presets, CLI overrides, and each recipe's distinctive logic."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vlaforge.data.replay import SuccessBuffer
from vlaforge.envs import make_vec_env
from vlaforge.policies import build_policy, save_policy
from vlaforge.recipes import RECIPES, get_recipe, recipe_defaults
from vlaforge.recipes.ire_vla import reset_value_head, sl_stage
from vlaforge.rollout.collect import collect
from vlaforge.train.loop import TrainConfig, config_from_dict, config_to_dict, train

PRIV = {"radius": 0.3, "privileged": 1.0}


def test_every_recipe_has_a_preset_and_a_runner():
    assert set(RECIPES) == {"ire-vla", "grape", "ript-vla", "vla-rl", "simplevla-rl"}
    algos = {"ire-vla": "ppo", "grape": "tpo", "ript-vla": "rloo", "vla-rl": "ppo", "simplevla-rl": "grpo"}
    for name, algo in algos.items():
        cfg = recipe_defaults(name)
        assert cfg.recipe == name and cfg.algo == algo and callable(get_recipe(name).run)
        assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg  # survives a checkpoint
    s = recipe_defaults("simplevla-rl")
    assert s.grpo.keep_band == (0.1, 0.9) and s.grpo.clip_high > s.grpo.clip_low and s.grpo.temperature == 1.6
    assert s.dynamic_rejection
    r = recipe_defaults("ript-vla")
    assert r.dynamic_rejection and r.fill_fraction == 0.8 and r.rloo.group_size == 8
    assert recipe_defaults("ire-vla").freeze_backbone
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("nope")


def test_cli_flags_override_the_recipe_preset():
    import tyro

    cfg = tyro.cli(TrainConfig, args=["--recipe", "simplevla-rl", "--grpo.temperature", "1.2"],
                   default=recipe_defaults("simplevla-rl"))
    assert cfg.grpo.temperature == 1.2 and cfg.grpo.keep_band == (0.1, 0.9) and cfg.algo == "grpo"
    r = subprocess.run([sys.executable, "-m", "vlaforge.cli", "train", "--recipe", "nope"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "unknown recipe 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _rollout(K=4, groups=3, seed=0):
    torch.manual_seed(seed)
    policy = build_policy(backbone="state", state_dim=4)
    venv = make_vec_env("pointreach", K * groups, **PRIV)
    r, _ = collect(policy, venv, np.repeat(np.arange(groups), K), np.repeat(np.arange(groups) + 7, K))
    return r


def test_success_buffer_keeps_only_successful_valid_steps_and_balances_tasks():
    r = _rollout()
    r.success[:] = False
    r.success[[0, 5]] = True
    r.valid[5] = False  # a crashed worker's episode never counts, even if flagged successful
    buf = SuccessBuffer()
    added = buf.add(r)
    assert buf.episodes == 1 and added == int(r.alive[:, 0].sum()) == len(buf)
    obs, acts, mask = buf.batch(8, torch.Generator().manual_seed(0))
    assert acts.shape == (8, r.actions.shape[2], r.actions.shape[3]) and mask.shape == (8, r.actions.shape[2])
    steps = torch.nonzero(r.alive[:, 0]).flatten()
    # masks follow the sim steps each chunk actually ran
    ref = (torch.arange(r.actions.shape[2])[None] < r.executed[steps, 0, None]).float()
    assert torch.equal(torch.cat(buf.mask), ref)
    # balance: two tasks with 1 vs many samples are drawn about equally often
    r2 = _rollout(seed=1)
    r2.success[:] = False
    r2.success[4:8] = True  # four episodes of task 1
    buf.add(r2)
    obs, _, _ = buf.batch(2000, torch.Generator().manual_seed(1))
    share = (obs.task_ids == 0).float().mean().item()
    assert 0.4 < share < 0.6, share
    with pytest.raises(ValueError, match="empty"):
        SuccessBuffer().batch(2, torch.Generator())


def test_ire_vla_rl_stage_keeps_the_backbone_frozen(tmp_path):
    torch.manual_seed(0)
    init = build_policy(head="gaussian", chunk_size=4)
    save_policy(init, tmp_path / "init")
    cfg = TrainConfig(algo="ppo", freeze_backbone=True, suite="pointreach", init=str(tmp_path / "init"), iterations=1,
                      groups=8, num_envs=8, eval_every=0, progress=False, tensorboard=False, out=str(tmp_path / "rl"),
                      env_kwargs={"radius": 0.3}, lr=1e-3)
    cfg.ppo.critic_warmup = 0
    train(cfg)
    from vlaforge.policies import load_policy

    after = load_policy(tmp_path / "rl" / "final")
    before = dict(init.named_parameters())
    moved = {n for n, p in after.named_parameters() if not torch.equal(p, before[n])}
    backbone = {n for n, p in after.named_parameters() if any(p is q for q in after.backbone_parameters())}
    assert moved and not (moved & backbone)
    assert any(n.startswith("head.") for n in moved)


def test_reset_value_head_and_sl_stage_mix():
    torch.manual_seed(0)
    p = build_policy(backbone="state", state_dim=4)
    v0 = [x.clone() for x in p.value_parameters()]
    rest0 = {n: x.clone() for n, x in p.named_parameters() if not n.startswith("value_net.")}
    assert reset_value_head(p) > 0
    assert all(not torch.equal(a, b) for a, b in zip(v0, p.value_parameters()))
    assert all(torch.equal(x, rest0[n]) for n, x in p.named_parameters() if n in rest0)
    r = _rollout()
    r.success[:] = True
    buf = SuccessBuffer()
    buf.add(r)
    m = sl_stage(p, None, buf, {}, steps=3, lr=1e-3, demo_fraction=0.5, batch_size=16)
    assert m["ire_vla/sl_demo_share"] == 0.0 and np.isfinite(m["sft/loss"])  # no demos: all from successes
    assert any(not torch.equal(x, rest0[n]) for n, x in p.named_parameters() if n in rest0)


@pytest.mark.slow
def test_ire_vla_recipe_runs_end_to_end(tmp_path):
    from vlaforge.recipes import run_recipe

    torch.manual_seed(0)
    save_policy(build_policy(backbone="state", state_dim=4), tmp_path / "init")
    cfg = recipe_defaults("ire-vla")
    cfg.suite, cfg.tasks, cfg.eval_tasks = "pointreach", "red-0,green-0", "red-0,green-0,blue-0,yellow-1"
    cfg.ire_vla.new_tasks, cfg.ire_vla.rounds, cfg.ire_vla.rl_iterations, cfg.ire_vla.sl_steps = "blue-0", 1, 1, 2
    cfg.init, cfg.out, cfg.groups, cfg.num_envs, cfg.eval_episodes = str(tmp_path / "init"), str(tmp_path / "r"), 8, 8, 4
    cfg.env_kwargs, cfg.progress, cfg.tensorboard = dict(PRIV), False, False
    final = run_recipe(cfg)
    rep = json.loads((tmp_path / "r" / "ire_vla.json").read_text())
    assert rep["groups"] == {"seen": ["red-0", "green-0"], "new": ["blue-0"], "heldout": ["yellow-1"]}
    assert [s["stage"] for s in rep["stages"]] == ["sft", "round0/rl", "round0/sl"]
    assert set(final) == {"eval/success_seen", "eval/success_new", "eval/success_heldout"}
    assert (tmp_path / "r" / "final" / "model.safetensors").exists()


def test_grape_cost_weights_parse_and_reach_the_decomposer():
    from vlaforge.recipes.grape import hooks_for, parse_weights

    assert parse_weights("path=2, collision=0") == {"path": 2.0, "collision": 0.0} and parse_weights("") == {}
    for bad in ("path", "speed=1", "path=x"):
        with pytest.raises(ValueError, match="cost-weights"):
            parse_weights(bad)
    cfg = recipe_defaults("grape")
    cfg.grape.cost_weights = "path=3"
    hooks = hooks_for(cfg)
    assert hooks.scorer.decomposer.weights["path"] == 3.0
    cfg.grape.decomposer = "lm"
    with pytest.raises(ValueError, match="lm-path"):
        hooks_for(cfg)


def test_grape_recipe_iteration_logs_reward_parts(tmp_path):
    from vlaforge.recipes import run_recipe

    torch.manual_seed(0)
    save_policy(build_policy(backbone="state", state_dim=4), tmp_path / "init")
    cfg = recipe_defaults("grape")
    cfg.init, cfg.out, cfg.iterations, cfg.groups, cfg.num_envs = str(tmp_path / "init"), str(tmp_path / "g"), 1, 4, 16
    cfg.env_kwargs, cfg.eval_every, cfg.progress, cfg.tensorboard, cfg.lr = dict(PRIV), 0, False, False, 1e-3
    run_recipe(cfg)
    row = json.loads((tmp_path / "g" / "metrics.jsonl").read_text().splitlines()[-1])
    for k in ("grape/r_self", "grape/r_ext", "grape/path_length", "grape/contacts"):
        assert k in row and np.isfinite(row[k])


def test_vla_rl_process_reward_hook_adds_weighted_progress_increments():
    from vlaforge.envs import suite_spec
    from vlaforge.rewards.rprm import RPRM, RPRMShaper, rprm_rewards

    torch.manual_seed(0)
    r = _rollout()
    model = RPRM.for_spec(suite_spec("pointreach", **PRIV))
    before = r.reward.clone()
    info = RPRMShaper(model, 0.5).shape_rewards(r)
    torch.testing.assert_close(r.reward, before + 0.5 * rprm_rewards(model, r))
    assert (r.reward[~r.alive] == 0).all() and np.isfinite(info["rprm/dense_return"])


def test_vla_rl_needs_a_token_head_and_demos(tmp_path):
    from vlaforge.recipes import run_recipe

    save_policy(build_policy(head="gaussian"), tmp_path / "g")
    cfg = recipe_defaults("vla-rl")
    cfg.init = str(tmp_path / "g")
    with pytest.raises(ValueError, match="--head tokens"):
        run_recipe(cfg)
    save_policy(build_policy(head="tokens"), tmp_path / "t")
    cfg.init, cfg.out = str(tmp_path / "t"), str(tmp_path / "run")
    with pytest.raises(ValueError, match="--vla-rl.demos"):
        run_recipe(cfg)


def test_ire_vla_rl_stage_config_is_plain_frozen_ppo_on_seen_and_new_tasks(tmp_path):
    from vlaforge.recipes.ire_vla import rl_stage_config

    cfg = recipe_defaults("ire-vla")
    cfg.suite, cfg.tasks, cfg.eval_tasks = "metaworld", "reach-v3", "reach-v3,drawer-close-v3,door-close-v3"
    cfg.ire_vla.rl_iterations = 3
    groups = {"seen": ["reach-v3"], "new": ["drawer-close-v3"], "heldout": ["door-close-v3"]}
    rl = rl_stage_config(cfg, groups, tmp_path / "init", tmp_path / "rl", seed=5)
    assert (rl.recipe, rl.algo, rl.freeze_backbone, rl.iterations, rl.seed) == (None, "ppo", True, 3, 5)
    # held-out tasks are never trained on, and the stage never evaluates on tasks its envs lack
    assert rl.tasks == rl.eval_tasks == "reach-v3,drawer-close-v3"
    assert cfg.recipe == "ire-vla" and cfg.eval_tasks.endswith("door-close-v3")  # the caller's config untouched


def test_ire_vla_task_groups_take_a_benchmark_name():
    """``--recipe ire-vla --tasks MT10`` (the generalist, benchmarks/generalist.py): each selection is resolved as the
    commands resolve it, a benchmark name included; PointReach's splits as before."""
    from vlaforge.recipes.ire_vla import task_groups

    cfg = recipe_defaults("ire-vla")
    cfg.suite, cfg.tasks, cfg.eval_tasks = "metaworld", "MT10", "MT10,door-close-v3"
    cfg.ire_vla.new_tasks = "reach-wall-v3"
    g = task_groups(cfg)
    assert len(g["seen"]) == 10 and "peg-insert-side-v3" in g["seen"]
    assert g["new"] == ["reach-wall-v3"] and g["heldout"] == ["door-close-v3"]
    cfg = recipe_defaults("ire-vla")
    cfg.suite, cfg.tasks, cfg.eval_tasks = "pointreach", "train", "all"
    g = task_groups(cfg)
    assert g["seen"] and g["new"] == [] and g["heldout"] and not set(g["seen"]) & set(g["heldout"])
