"""iRe-VLA: iterate a reinforcement stage on a frozen backbone with a supervised stage on
expert demos ∪ the RL stage's successes.

1. Start from an SFT checkpoint (``--init``).
2. Repeat ``rounds`` times:
   (a) RL stage — backbone frozen, PPO trains only the action head and the critic on sparse
       success (``rl_iterations`` iterations over ``tasks`` and ``new_tasks``); every
       successful, valid episode is kept (``data.replay.SuccessBuffer``);
   (b) SL stage — everything trainable again (the whole tiny model; a LoRA adapter on an HF
       backbone), ``sl_steps`` steps on batches drawn ``demo_fraction`` from the expert demos and
       the rest task-balanced from the kept successes; the critic is re-initialised after.
3. Evaluate on iRe-VLA's three task groups: tasks seen in SFT (``tasks``: must not be
   forgotten), new tasks learned by RL only (``new_tasks``), and held-out tasks never trained on
   (``eval_tasks`` minus both).

Differences from the paper: the paper's RL stage uses a 7B-scale VLM with LoRA in the SL stage;
here the same code runs the tiny VLA with full fine-tuning in the SL stage (an HF policy trains
its adapter). Demo/success balance is explicit (``demo_fraction``) and successes are drawn
task-balanced, where the paper says only that it rebalances.

    vlaforge train --recipe ire-vla --suite metaworld --tasks reach-v3 \
        --ire-vla.new-tasks button-press-topdown-v3 --eval-tasks reach-v3,button-press-topdown-v3,drawer-close-v3 \
        --init runs/sft
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from vlaforge.algos.sft import DemoSampler, sft_step
from vlaforge.checks import at_least, learning_rate, need
from vlaforge.data.demo_files import check_demos
from vlaforge.data.demos import load_demos
from vlaforge.data.replay import SuccessBuffer
from vlaforge.envs import env_kwargs, env_tasks, suite_spec
from vlaforge.fsutil import atomic_write_text
from vlaforge.hooks import Hooks
from vlaforge.pipeline import EvalArgs, run_eval, selected_tasks
from vlaforge.policies import load_policy, read_config, save_policy
from vlaforge.rollout.evaluate import wilson
from vlaforge.train.loop import run_threads, train
from vlaforge.types import Observation

NAME = "ire-vla"
SUMMARY = "RL on a frozen backbone (PPO: head + critic) alternating with SFT on demos ∪ RL successes"


def preset(cfg) -> None:
    cfg.algo = "ppo"
    cfg.freeze_backbone = True
    cfg.ppo.critic_warmup = 1


def reset_value_head(policy) -> int:
    """Re-initialise every module holding value-head parameters. Returns the modules reset."""
    value_ids = {id(p) for p in policy.value_parameters()}
    n = 0
    for m in policy.modules():
        own = list(m.parameters(recurse=False))
        if own and all(id(p) in value_ids for p in own) and hasattr(m, "reset_parameters"):
            m.reset_parameters()
            n += 1
    return n


class KeepSuccesses(Hooks):
    """Loop hook: store every successful episode of each RL iteration in a buffer."""

    def __init__(self, buffer: SuccessBuffer):
        self.buffer = buffer

    def after_iteration(self, it, policy, rollout) -> dict:
        added = self.buffer.add(rollout)
        return {"ire_vla/kept_steps": float(added), "ire_vla/buffer_episodes": float(self.buffer.episodes)}


def sl_stage(policy, demos, buffer: SuccessBuffer, task_index: dict[str, int], steps: int, lr: float,
             demo_fraction: float, batch_size: int = 64, seed: int = 0, grad_clip: float = 1.0) -> dict:
    """Supervised stage on demos ∪ successes (either may be empty). Returns the last metrics."""

    for p in policy.backbone_parameters() + policy.head_parameters():  # not frozen copies (HF LoRA base, references)
        p.requires_grad_(True)
    params = [p for p in policy.parameters()
              if p.requires_grad and id(p) not in {id(q) for q in policy.value_parameters()}]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    dsamp = DemoSampler(demos, policy.chunk_size, task_index, seed) if demos is not None and len(demos) else None
    n_demo = batch_size if len(buffer) == 0 else (0 if dsamp is None else int(round(demo_fraction * batch_size)))
    if dsamp is None and len(buffer) == 0:
        return {"ire_vla/sl_skipped": 1.0}
    policy.train()
    metrics: dict = {}
    for _ in range(steps):
        parts = []
        if n_demo:
            parts.append(dsamp.batch(n_demo))
        if batch_size - n_demo:
            parts.append(buffer.batch(batch_size - n_demo, gen))
        obs = Observation(torch.cat([torch.as_tensor(p[0].images) for p in parts]),
                          torch.cat([torch.as_tensor(p[0].state) for p in parts]),
                          sum((list(p[0].instructions) for p in parts), []),
                          torch.cat([torch.as_tensor(p[0].task_ids) for p in parts]))
        acts = torch.cat([p[1] for p in parts])
        mask = torch.cat([p[2] for p in parts])
        metrics = sft_step(policy, opt, obs, acts, mask, grad_clip)
    policy.eval()
    out = {k: float(v) for k, v in metrics.items()}
    out["ire_vla/sl_demo_share"] = n_demo / batch_size
    return out


def rl_stage_config(cfg, groups: dict[str, list[str]], init, out, seed: int):
    """The RL stage as a plain PPO run: frozen backbone, seen + new tasks, no recipe, no evaluation of its own."""
    rl = copy.deepcopy(cfg)
    rl.recipe, rl.algo, rl.freeze_backbone = None, "ppo", True
    rl.init, rl.out, rl.iterations = str(init), str(out), cfg.ire_vla.rl_iterations
    rl.tasks = ",".join(groups["seen"] + groups["new"])
    rl.eval_tasks = rl.tasks  # the stage's envs hold only its tasks; the three groups are evaluated by run()
    rl.eval_every, rl.seed = 0, seed
    return rl


def task_groups(cfg) -> dict[str, list[str]]:
    """iRe-VLA's three groups by name: seen in SFT, new (RL only), held out (never trained). Each selection is
    resolved as the commands resolve it (``pipeline.selected_tasks``): task names, a split, or a benchmark name the
    suite knows ("MT10")."""

    def spec_of(sel):
        return suite_spec(cfg.suite, env_tasks(cfg.suite, sel))

    spec = spec_of(cfg.tasks)
    seen = selected_tasks(spec, cfg.suite, cfg.tasks)
    seen = [n for n in seen if spec.tasks[spec.task_index(n)].split == "train"] or seen
    new = selected_tasks(spec_of(cfg.ire_vla.new_tasks), cfg.suite, cfg.ire_vla.new_tasks) \
        if cfg.ire_vla.new_tasks else []
    evald = selected_tasks(spec_of(cfg.eval_tasks), cfg.suite, cfg.eval_tasks) if cfg.eval_tasks else seen + new
    held = [n for n in evald if n not in seen and n not in new]
    return {"seen": seen, "new": new, "heldout": held}


def evaluate_groups(policy, cfg, groups: dict[str, list[str]]) -> dict:

    names = [n for g in groups.values() for n in g]
    res, _ = run_eval(EvalArgs(checkpoint="(in memory)", suite=cfg.suite, tasks=",".join(names),
                               episodes=cfg.eval_episodes, num_envs=cfg.num_envs, workers=cfg.workers,
                               out=str(Path(cfg.out) / "eval_tmp.json"), threads=run_threads(cfg),
                               env_kwargs=env_kwargs(cfg.env_kwargs, cfg.max_steps)),
                     quiet=True, policy=policy)
    by = {r.task: r for r in res}
    out = {}
    for g, ns in groups.items():
        if ns:
            s, n = sum(by[t].successes for t in ns), sum(by[t].episodes for t in ns)
            out[g] = {"successes": s, "episodes": n, "rate": s / n, "ci95": list(wilson(s, n)),
                      "per_task": {t: by[t].rate for t in ns}}
    return out


def check(cfg, given: frozenset[str] = frozenset()) -> None:
    """``--ire-vla.*`` and what the recipe needs (an SFT start), before any work. ``given``: the fields named on
    the command line (``--iterations`` is not read here)."""
    need("iterations" not in given, "--iterations is not read by the ire-vla recipe; set the RL stage's length "
                                    "with --ire-vla.rl-iterations and the number of rounds with --ire-vla.rounds")
    need(bool(cfg.init), "the ire-vla recipe starts from an SFT checkpoint: pass --init DIR (from `vlaforge sft`)")
    ic = cfg.ire_vla
    at_least("--ire-vla.rounds", ic.rounds, 1)
    at_least("--ire-vla.rl-iterations", ic.rl_iterations, 1)
    at_least("--ire-vla.sl-steps", ic.sl_steps, 0)
    learning_rate("--ire-vla.sl-lr", ic.sl_lr)
    need(0 <= ic.demo_fraction <= 1, f"--ire-vla.demo-fraction must be in [0, 1]; got {ic.demo_fraction}")
    if ic.demos:
        check_demos(ic.demos, "--ire-vla.demos")


def run(cfg) -> dict:
    """Run the iRe-VLA alternation; writes ``<out>/ire_vla.json`` (groups before/after each stage)."""

    if not cfg.init:
        raise ValueError("the ire-vla recipe starts from an SFT checkpoint: pass --init DIR (from `vlaforge sft`)")
    ic = cfg.ire_vla
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = task_groups(cfg)
    demo_dir = ic.demos or read_config(cfg.init).get("trained_on", {}).get("demos")
    demos = load_demos(demo_dir) if demo_dir and Path(demo_dir).exists() else None
    # ids only label demo frames for the sampler (policies read instructions, not task ids)
    task_index = {n: i for i, n in enumerate(dict.fromkeys(demos.task_names))} if demos is not None else {}
    torch.manual_seed(cfg.seed)
    policy = load_policy(cfg.init)
    report = {"groups": groups, "stages": [{"stage": "sft", **evaluate_groups(policy, cfg, groups)}]}
    buffer = SuccessBuffer()
    current = cfg.init
    for r in range(ic.rounds):
        rl = rl_stage_config(cfg, groups, current, out / f"round{r}" / "rl", cfg.seed + r)
        train(rl, hooks=KeepSuccesses(buffer))
        policy = load_policy(out / f"round{r}" / "rl" / "final")
        rl_eval = evaluate_groups(policy, cfg, groups)
        sl = sl_stage(policy, demos, buffer, task_index, ic.sl_steps, ic.sl_lr, ic.demo_fraction,
                      seed=cfg.seed + r)
        reset_value_head(policy)
        save_policy(policy, out / f"round{r}" / "sl", extra={"recipe": NAME, "round": r})
        current = out / f"round{r}" / "sl"
        report["stages"].append({"stage": f"round{r}/rl", **rl_eval})
        report["stages"].append({"stage": f"round{r}/sl", "buffer_episodes": buffer.episodes,
                                 "buffer_task_steps": buffer.task_counts(), "sl_metrics": sl,
                                 **evaluate_groups(policy, cfg, groups)})
        atomic_write_text(out / "ire_vla.json", json.dumps(report, indent=2))
    save_policy(policy, out / "final", extra={"recipe": NAME})
    final = report["stages"][-1]
    return {f"eval/success_{g}": final[g]["rate"] for g in groups if g in final}
