"""The main job (``make demo`` / ``vlaforge demo``): scripted demos → SFT → RL → evaluation.

Defaults: Meta-World MT1 button-press-topdown-v3 from pixels (64x64 corner camera, the tiny VLA with a Gaussian
head), 10 scripted-expert demos, SFT, then the method that lifted pixel policies by tens of points here
(docs/benchmarks.md, "RL on pixels"; docs/pixels.md): privileged-teacher distillation (``--algo distill``). The
teacher is a state policy — it reads the object and goal positions, no camera — started from SFT on the same 10
demos recorded again with the privileged state (same seed: same layouts), improved by PPO without rendering, and
distilled into the pixel policy by DAgger (300 cloning steps per iteration). A table of success before and after
with Wilson 95% intervals on 50 fixed evaluation seeds ends the run. The actor never reads the privileged state;
only the teacher's labels come from it. ``--algo ppo|grpo|rloo|tpo`` runs the policy-gradient methods instead
(``--suite pointreach --tasks train --algo rloo`` runs the whole pipeline in a couple of minutes).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from vlaforge.algos.sft import SFTConfig
from vlaforge.checks import at_least, flag, need
from vlaforge.device import DeviceOptions
from vlaforge.envs import env_kwargs
from vlaforge.envs.options import EnvOptions
from vlaforge.pipeline import (
    CollectArgs,
    EvalArgs,
    SFTArgs,
    privileged_teacher,
    run_collect,
    run_eval,
    run_sft,
)
from vlaforge.rollout.evaluate import wilson
from vlaforge.train.loop import TrainConfig, train


@dataclass
class DemoArgs(EnvOptions, DeviceOptions):
    """Run collect → SFT → RL → eval end to end and print success before and after RL."""

    suite: str = "metaworld"
    """simulator suite: pointreach | metaworld | kitchen | libero | maniskill (all but pointreach need their
    extra, e.g. pip install 'vlaforge[metaworld]')"""
    tasks: str = "button-press-topdown-v3"
    """comma-separated task names, or a split/benchmark name the suite knows (train / heldout / all)"""
    workers: int = 2
    """env subprocesses (0 = in process)"""
    out: str = "runs/demo"
    """run directory"""
    demo_episodes: int = 10
    """expert episodes per task"""
    sft_steps: int = 800
    """SFT gradient steps"""
    algo: str = "distill"
    """RL algorithm (ppo | grpo | rloo | tpo), or distill: a privileged state teacher trained by PPO without
    rendering, distilled into the pixel policy by DAgger (one Meta-World task; docs/benchmarks.md, issue 15)"""
    teacher_iterations: int = 64
    """with --algo distill: PPO iterations of the state teacher (32 episodes each, no rendering)"""
    teacher_demos: int = 10
    """with --algo distill: start the teacher from SFT on this many expert episodes recorded with the privileged
    state and no camera (the demos' seed, so the same layouts); 0 = PPO from scratch (fails on button-press-topdown
    and drawer-open in this budget, docs/pixels.md)"""
    rl_iterations: int = 10
    """RL iterations"""
    groups: int = 2
    """initial states per RL iteration (each rolled out group_size times)"""
    group_size: int = 8
    """rollouts per initial state"""
    eval_episodes: int = 50
    """evaluation episodes per task"""
    max_steps: int = 150
    """simulator steps per episode for the demos, RL and evaluations (0: the suite's default)"""
    skip_rl: bool = False
    """stop after SFT (collect → SFT → eval)"""

    def check(self) -> None:
        """The options (the CLI runs it before any work; the output folder is ``vlaforge.validate``'s)."""
        for f in ("demo_episodes", "sft_steps", "rl_iterations", "groups", "group_size", "eval_episodes"):
            at_least(flag(f), getattr(self, f), 1)
        at_least("--max-steps", self.max_steps, 0)
        EnvOptions.check(self, self.max_steps)
        need(self.algo in ("ppo", "grpo", "rloo", "tpo", "distill"),
             f"--algo '{self.algo}' is unknown; choose ppo, grpo, rloo, tpo or distill")
        need(self.algo != "distill" or (self.suite == "metaworld" and "," not in self.tasks),
             "--algo distill runs on one metaworld task (its teacher reads that task's privileged state); pass one "
             "--tasks name")
        at_least("--teacher-iterations", self.teacher_iterations, 1)
        at_least("--teacher-demos", self.teacher_demos, 0)


def run_demo(a: DemoArgs) -> dict:
    a.check()
    t0 = time.perf_counter()
    out = Path(a.out)
    env_kw = env_kwargs(a.env_kwargs, a.max_steps)
    print(f"[1/4] collecting {a.demo_episodes} expert episodes per task on {a.suite}: {a.tasks}")
    run_collect(CollectArgs(suite=a.suite, tasks=a.tasks, episodes=a.demo_episodes, out=str(out / "demos"),
                            num_envs=a.num_envs, workers=a.workers, env_kwargs=env_kw), quiet=False)
    print(f"[2/4] SFT of the tiny VLA ({a.sft_steps} steps)")
    dev = {"device": a.device, "precision": a.precision, "deterministic": a.deterministic}
    run_sft(SFTArgs(demos=str(out / "demos"), out=str(out / "sft"), sft=SFTConfig(steps=a.sft_steps), **dev))
    ev = EvalArgs(checkpoint=str(out / "sft"), suite=a.suite, tasks=a.tasks, episodes=a.eval_episodes,
                  num_envs=a.num_envs, workers=a.workers, env_kwargs=env_kw, **dev)
    print("[3/4] evaluating the SFT policy")
    before, _ = run_eval(ev, quiet=True)
    after = None
    if not a.skip_rl:
        print(f"[4/4] RL: {a.algo}, {a.rl_iterations} iterations × {a.groups} initial states × {a.group_size} rollouts")
        cfg = TrainConfig(algo=a.algo, suite=a.suite, tasks=a.tasks, init=str(out / "sft"), out=str(out / "rl"),
                          iterations=a.rl_iterations, groups=a.groups, num_envs=a.num_envs, workers=a.workers,
                          max_steps=a.max_steps or None, env_kwargs=dict(a.env_kwargs), eval_every=0, tensorboard=True,
                          **dev)
        cfg.algo_cfg.group_size = a.group_size  # every algorithm's config has one (algos/__init__.py)
        if a.algo == "distill":  # every episode its own layout; an SFT-like learning rate for the DAgger steps
            start = f"SFT on {a.teacher_demos} privileged demos, then " if a.teacher_demos else ""
            print(f"      privileged teacher: {start}PPO on the state, {a.teacher_iterations} iterations without rendering")
            teacher, index = privileged_teacher(a.suite, a.tasks, out / "teacher", a.teacher_iterations,
                                                max_steps=a.max_steps or 150, num_envs=16, env_kwargs=a.env_kwargs,
                                                demos=a.teacher_demos, progress=True, student={  # refused if it does worse
                                                    "successes": sum(r.successes for r in before),
                                                    "episodes": sum(r.episodes for r in before)})
            cfg.groups, cfg.lr = a.groups * a.group_size, 3e-4
            cfg.distill.group_size, cfg.distill.teacher, cfg.distill.teacher_state = 1, str(teacher), index
        train(cfg)
        after, _ = run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(out / "rl" / "final")}), quiet=True)
    rows = []
    w = max(len(r.task) for r in before) + 2
    print()
    print(f"{'task':<{w}}{'SFT success [95% CI]':<26}{'after ' + a.algo + ' [95% CI]' if after else ''}")
    for i, r in enumerate(before):
        lo, hi = r.interval
        line = f"{r.task:<{w}}{r.successes:>3}/{r.episodes:<3} {r.rate:4.2f} [{lo:.2f}, {hi:.2f}]   "
        row = {"task": r.task, "sft": r.as_dict()}
        if after:
            s = after[i]
            lo2, hi2 = s.interval
            line += f"{s.successes:>3}/{s.episodes:<3} {s.rate:4.2f} [{lo2:.2f}, {hi2:.2f}]"
            row["rl"] = s.as_dict()
        print(line)
        rows.append(row)
    tot_b = sum(r.successes for r in before), sum(r.episodes for r in before)
    summary = {"sft_overall": [tot_b[0] / tot_b[1], *wilson(*tot_b)]}
    if after:
        tot_a = sum(r.successes for r in after), sum(r.episodes for r in after)
        summary["rl_overall"] = [tot_a[0] / tot_a[1], *wilson(*tot_a)]
    print(f"wall time {time.perf_counter() - t0:.0f}s; manifests and checkpoints under {out}")
    (out / "demo_results.json").write_text(json.dumps({"rows": rows, **summary, "args": a.__dict__,
                                                       "wall_time_s": time.perf_counter() - t0}, indent=2))
    return summary
