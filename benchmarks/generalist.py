"""A generalist base (issue 23): one tiny VLA SFT'd on scripted-expert demos of every task of a benchmark (Meta-World
MT10), the task given only by its instruction; per-task success on the fixed held-out evaluation seeds.

Stage ``base`` (part 1), per config ``N:STEPS[:DIM]`` (N demos per task, STEPS SFT steps, DIM the token width,
default 64), all seeded by ``--seed``:

1. ``vlaforge collect --suite SUITE --tasks TASKS --episodes N --seed SEED`` (N layouts per task: demo seeds
   ``SEED * 100003 + 1,000,000 + k``, never evaluation seeds);
2. ``vlaforge sft`` of one fresh tiny VLA (vision backbone, Gaussian head) on all of them, ``--sft.seed SEED``,
   at ``--sft-lr`` (constant, or with ``--sft-schedule cosine`` decaying to ``--sft-min-lr``: the config's name then
   ends in ``_cos``);
3. ``vlaforge eval`` on ``--eval-episodes`` seeds per task from 10,000,000 (the project's evaluation seeds).

The tiny VLA never reads a task id: the task reaches it only as the instruction's words (FiLM on the CNN and
word tokens in the fusion transformer; policies/tiny/model.py). A fixed ``--seed`` gives the same checkpoint
(tests/test_generalist.py builds twice and compares the weights); ``policy_sha`` in the JSON is the weights'
sha256 prefix.

    python benchmarks/generalist.py base --suite metaworld --tasks MT10 --configs 25:2000 --seed 0 --threads 1 \\
        --out docs/bench/generalist_base.json      # the base of docs/benchmarks.md (issue 23)
    python benchmarks/generalist.py base --suite metaworld --tasks MT10 --configs 25:5000 --seed 0 --threads 1 \\
        --num-envs 4 --sft-schedule cosine --sft-min-lr 1e-5 --out B.json   # session 13's base, N25_S5000_cos: 51.4%

writes ``{"meta", "configs": [{"config", "demos_per_task", "image_size", "dim", "sft_steps", "sft_lr", "sft_schedule",
"sft_min_lr", "seed",
"command", "policy_dir", "policy_sha", "demo_episodes", "demo_successes", "frames", "collect_cpu_s", "sft_cpu_s", "eval_cpu_s",
"mean_success"}], "rows": [{"config", "suite", "task", "demos_per_task", "image_size", "dim", "sft_steps", "seed",
"successes", "episodes", "rate", "ci95", "collect_cpu_s", "sft_cpu_s", "eval_cpu_s"}]}`` (one row per (config,
task); the CPU seconds are the config's, process + children). Configs already in the JSON are skipped (rerun
with a new ``--out`` to measure again); the JSON is rewritten after each config.

Stage ``methods`` (issue 23 part 2) post-trains a built base per task and method and writes rows
``{"suite", "task", "method", "seed", "before": {"successes", "episodes"}, "after": {...}, "env_steps", "cpu_s"}``
to ``--methods-out`` (docs/bench/generalist.json). A method (``METHODS``) post-trains the base once on all tasks
per training seed: ``none`` (the base itself), the direct methods ``ppo+priv`` (PPO, privileged critic), ``grpo``
and ``rloo`` (groups of 8) and ``ire-vla`` (the recipe: RL stages on a frozen backbone alternating with SFT on
demos ∪ kept successes; ``--iterations`` per RL stage, ``--ire-rounds``, ``--ire-sl-steps``, ``--ire-sl-lr``), its control
``sft-more`` (the base SFT'd further on its own demos, ``--sft-more-steps``, no rollouts), and ``mtdistill``
(issue 23 part 4: one multi-task DAgger run from per-task privileged teachers, built in or reused from
``--teachers-cache``; docs/pixels.md):

    python benchmarks/generalist.py methods --base-config N25_S2000 --methods none
    python benchmarks/generalist.py methods --base-config N25_S2000 --methods ppo+priv --seeds 0,1,2 \\
        --iterations 20 --groups 8 --num-envs 8 --threads 1
    python benchmarks/generalist.py methods --base-config N25_S2000 --methods mtdistill --teachers-cache runs/teachers

Stage ``chart`` (part 5) draws the per-task bar chart of ``--methods-out`` into ``--chart``
(docs/bench/generalist.png): the base and every method pooled over its seeds, with Wilson 95% intervals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vlaforge.algos.distill import DistillConfig
from vlaforge.algos.sft import SFTConfig
from vlaforge.checks import learning_rate
from vlaforge.fsutil import atomic_path, atomic_write_text
from vlaforge.pipeline import CollectArgs, EvalArgs, SFTArgs, run_collect, run_eval, run_sft
from vlaforge.policies import build_policy, policy_hash, save_policy
from vlaforge.rollout.evaluate import EVAL_SEED_BASE, wilson
from vlaforge.train.recipe_configs import IReVLAConfig

DEFAULT_DIM = 64  # TinyConfig.dim


class BadInput(ValueError):
    """A bad command line: reported in one line before any work."""


@dataclass(frozen=True)
class Config:
    demos: int
    steps: int
    dim: int = DEFAULT_DIM
    schedule: str = "constant"  # --sft-schedule (cosine: from --sft-lr down to --sft-min-lr)
    lr: float = SFTConfig.lr

    @property
    def name(self) -> str:
        return (f"N{self.demos}_S{self.steps}" + (f"_D{self.dim}" if self.dim != DEFAULT_DIM else "")
                + (f"_lr{self.lr:g}" if self.lr != SFTConfig.lr else "") + ("_cos" if self.schedule == "cosine" else ""))


def parse_configs(text: str) -> list[Config]:
    """``"10:2000,25:4000:128"`` -> configs; anything else is a BadInput naming the part."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        bits = part.split(":")
        if len(bits) not in (2, 3) or not all(b.isdigit() and int(b) > 0 for b in bits):
            raise BadInput(f"--configs: '{part}' is not N:STEPS[:DIM] with positive integers (e.g. 10:2000,25:4000)")
        out.append(Config(*(int(b) for b in bits)))
    if not out:
        raise BadInput("--configs: give at least one N:STEPS[:DIM] (e.g. 10:2000)")
    if len({c.name for c in out}) != len(out):
        raise BadInput(f"--configs: '{text}' names a config twice")
    return out


def check_args(a) -> list[Config]:
    """Every check before any env is built or file written (a one-line BadInput)."""
    configs = [dataclasses.replace(c, schedule=a.sft_schedule, lr=a.sft_lr) for c in parse_configs(a.configs)]
    try:
        SFTConfig(lr=a.sft_lr, schedule=a.sft_schedule, min_lr=a.sft_min_lr).check()
    except ValueError as e:
        raise BadInput(str(e).replace("--sft.", "--sft-")) from None
    for name in ("eval_episodes", "image_size", "num_envs", "threads", "max_steps"):
        if getattr(a, name) <= 0:
            raise BadInput(f"--{name.replace('_', '-')} must be positive; got {getattr(a, name)}")
    if a.workers < 0:
        raise BadInput(f"--workers must be >= 0; got {a.workers}")
    if a.seed < 0:
        raise BadInput(f"--seed must be >= 0; got {a.seed}")
    if not 0.0 <= a.noise <= 1.0:
        raise BadInput(f"--noise must be in [0, 1]; got {a.noise}")
    from vlaforge.envs import SUITES, EnvError, MissingExtra, env_tasks, suite_spec
    from vlaforge.pipeline import selected_tasks

    if a.suite not in SUITES:
        raise BadInput(f"--suite: unknown suite '{a.suite}'; choose one of: {', '.join(SUITES)}")
    try:  # the task selection resolves (builds no simulator for Meta-World: its sims are made on first reset)
        selected_tasks(suite_spec(a.suite, env_tasks(a.suite, a.tasks), image_size=a.image_size), a.suite, a.tasks)
    except (EnvError, MissingExtra, ValueError) as e:
        raise BadInput(f"--tasks: {e}") from None
    out = Path(a.out)
    if out.exists() and out.is_dir():
        raise BadInput(f"--out '{out}' is a directory; name a .json file")
    if out.exists():
        try:
            data = json.loads(out.read_text())
        except ValueError:
            raise BadInput(f"--out '{out}' exists and is not JSON; move it away or name another file") from None
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise BadInput(f"--out '{out}' exists but is not a generalist JSON (no 'rows' list)")
    return configs


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def build_base(a, c: Config, work: Path) -> dict:
    """Collect N demos per task, SFT one tiny VLA on all of them, evaluate it per task. Returns the config's entry
    and its per-task results."""
    base = work / c.name
    sft = base / "sft"
    env_kw = {"max_steps": a.max_steps}
    # demos depend on (N, seed) only: configs with the same N share them (the collect CPU is the first collect's)
    demos = work / f"demos_N{c.demos}_seed{a.seed}"
    record = demos.with_name(demos.name + ".json")
    if record.exists() and (demos / "meta" / "info.json").exists():
        info = json.loads(record.read_text())
    else:
        c0 = cpu_seconds()
        got = run_collect(CollectArgs(suite=a.suite, tasks=a.tasks, episodes=c.demos, out=str(demos), noise=a.noise,
                                      image_size=a.image_size, num_envs=a.num_envs, workers=a.workers, seed=a.seed,
                                      env_kwargs=dict(env_kw)), quiet=True)
        info = {"episodes": got.episodes, "successes": got.successes, "frames": got.frames,
                "cpu_s": round(cpu_seconds() - c0, 1)}
        atomic_write_text(record, json.dumps(info))
    c1 = cpu_seconds()
    init = None
    if c.dim != DEFAULT_DIM:  # a fresh policy of another width, built with the same seed as run_sft builds its own
        torch.manual_seed(a.seed)
        meta = json.loads((demos / "meta" / "info.json").read_text())
        init = base / "init"
        save_policy(build_policy("tiny", state_dim=meta["features"]["observation.state"]["shape"][0],
                                 action_dim=meta["features"]["action"]["shape"][0], views=meta.get("views", 1),
                                 image_size=meta["image_size"], dim=c.dim), init)
    run_sft(SFTArgs(demos=str(demos), out=str(sft), init=init and str(init), threads=a.threads,
                    sft=SFTConfig(steps=c.steps, seed=a.seed, lr=c.lr, schedule=c.schedule, min_lr=a.sft_min_lr)),
            quiet=True)
    c2 = cpu_seconds()
    res, man = run_eval(EvalArgs(checkpoint=str(sft), suite=a.suite, tasks=a.tasks, episodes=a.eval_episodes,
                                 num_envs=a.num_envs, workers=a.workers, threads=a.threads, env_kwargs=dict(env_kw),
                                 out=str(base / "eval.json")), quiet=True)
    c3 = cpu_seconds()
    cfg = {"config": c.name, "command": a.command, "demos_per_task": c.demos,
           "image_size": a.image_size, "dim": c.dim, "sft_steps": c.steps, "sft_lr": c.lr, "sft_schedule": c.schedule,
           "sft_min_lr": a.sft_min_lr if c.schedule == "cosine" else None, "seed": a.seed, "policy_dir": str(sft),
           "policy_sha": policy_hash(sft), "demos_dir": str(demos), "demo_episodes": info["episodes"],
           "demo_successes": info["successes"], "frames": info["frames"], "collect_cpu_s": info["cpu_s"],
           "sft_cpu_s": round(c2 - c1, 1), "eval_cpu_s": round(c3 - c2, 1), "eval_env_steps": man.get("env_steps")}
    rows = []
    for r in res:
        lo, hi = wilson(r.successes, r.episodes)
        rows.append({"config": c.name, "suite": a.suite, "task": r.task, "demos_per_task": c.demos,
                     "image_size": a.image_size, "dim": c.dim, "sft_steps": c.steps, "seed": a.seed,
                     "successes": r.successes, "episodes": r.episodes, "rate": r.rate, "ci95": [lo, hi],
                     "collect_cpu_s": cfg["collect_cpu_s"], "sft_cpu_s": cfg["sft_cpu_s"],
                     "eval_cpu_s": cfg["eval_cpu_s"]})
    cfg["mean_success"] = sum(r["rate"] for r in rows) / max(len(rows), 1)
    return {"config": cfg, "rows": rows}


def stage_base(a) -> dict:
    configs = check_args(a)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.exists() else {"configs": [], "rows": []}
    data.setdefault("configs", [])
    done = {c["config"] for c in data["configs"]}
    for c in configs:
        if c.name in done:
            print(f"{c.name}: already in {out}; skipped", flush=True)
            continue
        got = build_base(a, c, Path(a.work))
        data["configs"].append(got["config"])
        data["rows"] += got["rows"]
        data["meta"] = {
            "benchmark": "generalist_base", "issue": "23 part 1", "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), {a.threads} torch thread(s)",
            "torch": torch.__version__, "command": a.command,
            "args": {k: v for k, v in vars(a).items() if k not in ("func", "command")},
            "metric": f"success_once on {a.eval_episodes} fixed evaluation seeds per task from {EVAL_SEED_BASE:,} "
                      "(episodes end at first success); demos use seeds SEED*100003 + 1,000,000 + k",
            "cpu": "process + children CPU seconds (getrusage) of each step of the config",
        }
        atomic_write_text(out, json.dumps(data, indent=2))
        cfg = got["config"]
        print(f"{c.name}: mean per-task success {cfg['mean_success']:.3f}; CPU s collect {cfg['collect_cpu_s']}, "
              f"SFT {cfg['sft_cpu_s']}, eval {cfg['eval_cpu_s']}; policy {cfg['policy_sha']}", flush=True)
        for r in got["rows"]:
            print(f"  {r['task']:<28} {r['successes']:>3}/{r['episodes']}", flush=True)
    return data


# Post-training methods of stage ``methods`` (issue 23 part 2). A method post-trains the base ONCE on all the tasks
# (multi-task: the loop samples a task per group) with the training seed, and returns ``({task: after counts},
# env steps, CPU seconds)``; every task's "after" comes from one evaluation of the post-trained policy on the same
# held-out seeds as the base. ``none`` is the zero-budget row: the base itself, so a method's "before" is exactly
# ``none``'s "after".
def method_none(a, cfg: dict, seed: int, work: Path, before: dict) -> tuple[dict, int, float]:
    return {t: dict(b) for t, b in before.items()}, 0, 0.0


def evaluate_after(a, checkpoint: Path, work: Path, tasks: str | None = None) -> dict:
    """``{task: {"successes", "episodes"}}`` of ``checkpoint`` on the base's evaluation seeds (``--eval-episodes``
    per task of ``tasks``, default the base's), the manifest in ``WORK/eval.json``: every method's "after"."""
    res, _ = run_eval(EvalArgs(checkpoint=str(checkpoint), suite=a.suite, tasks=tasks or a.tasks,
                               episodes=a.eval_episodes, num_envs=a.num_envs, workers=a.workers, threads=a.threads,
                               env_kwargs={"max_steps": a.max_steps}, out=str(work / "eval.json")), quiet=True)
    return {r.task: {"successes": r.successes, "episodes": r.episodes} for r in res}


def direct(algo: str, critic: str = "image", **algo_kw):
    """A direct method (no teacher labels): ``vlaforge train --algo ALGO --init BASE --tasks MT10`` with
    ``--iterations``, ``--groups`` and ``--lr`` of this script, potential shaping 1 (the suite's dense progress;
    success still ends the episode with +1), then the per-task evaluation. The actor reads pixels,
    proprioception and the instruction; ``critic="privileged"`` lets PPO's value read the simulator state."""

    def run(a, cfg: dict, seed: int, work: Path, before: dict) -> tuple[dict, int, float]:
        from vlaforge.train.loop import TrainConfig, train

        c0 = cpu_seconds()
        tc = TrainConfig(algo=algo, suite=a.suite, tasks=a.tasks, init=cfg["policy_dir"], out=str(work),
                         iterations=a.iterations, groups=a.groups, num_envs=a.num_envs, workers=a.workers,
                         max_steps=a.max_steps, image_size=cfg["image_size"], critic=critic, lr=a.lr,
                         env_kwargs={"shaping": 1.0}, eval_every=0, progress=False, tensorboard=False, seed=seed,
                         threads=a.threads)
        for k, v in algo_kw.items():
            setattr(getattr(tc, algo), k, v)
        train(tc)
        state = json.loads((work / "checkpoint" / "state.json").read_text())
        return evaluate_after(a, work / "final", work), int(state["env_steps"]), cpu_seconds() - c0

    return run


def mtdistill_run(a, cfg: dict, seed: int, work: Path) -> dict:
    """Multi-task distillation of the base, once for all of its tasks (the same run serves every task's row):
    ``vlaforge train --algo distill --tasks <the base's tasks> --init <base> --distill.teachers-cache
    --teachers-cache --curriculum need`` (pipeline.distill_teachers builds or reuses each task's privileged teacher,
    seeded like the base, and skips a task whose teacher does worse than the base on the evaluation seeds; the base
    rows are that comparison's student side), then the final policy evaluated on every task, the same seeds.

    Costs: the CPU seconds (process + children) of every task's teacher build as its ``teacher.json`` records it,
    whether built in this call or reused from the cache, plus this call's teacher evaluations and distillation;
    env steps: the student's rendered rollouts plus every teacher's unrendered PPO steps (the teachers' demos and
    evaluations not counted). Kept in ``WORK/seedS/result.json``; a run that did not finish is started again from
    an empty folder."""
    from vlaforge.pipeline import distill_teachers, teacher_dir
    from vlaforge.train.loop import TrainConfig, train

    work = work / f"seed{seed}"
    result = work / "result.json"
    if result.exists():
        return json.loads(result.read_text())
    if (work / "run").exists():
        shutil.rmtree(work / "run")
    rows = [r for r in json.loads(Path(a.out).read_text())["rows"] if r["config"] == cfg["config"]]
    tasks = [r["task"] for r in rows]
    tc = TrainConfig(algo="distill", suite=a.suite, tasks=",".join(tasks), init=cfg["policy_dir"],
                     out=str(work / "run"), iterations=a.distill_iterations, groups=a.distill_groups,
                     num_envs=a.num_envs, workers=a.workers, threads=a.threads, max_steps=a.max_steps,
                     image_size=cfg["image_size"], eval_every=0, eval_episodes=a.eval_episodes, lr=3e-4,
                     curriculum="need", seed=seed, progress=False, tensorboard=False)
    tc.distill.teachers_cache, tc.distill.teacher_seed = a.teachers_cache, cfg["seed"]
    tc.distill.teacher_demos, tc.distill.teacher_iterations = a.teacher_demos, a.teacher_iterations
    tc.distill.teacher_sft_steps, tc.distill.capacity = a.teacher_sft_steps, a.distill_capacity
    logs: list[str] = []

    def log(line: str) -> None:
        logs.append(line)
        print(line, flush=True)

    c0 = cpu_seconds()
    tc = distill_teachers(tc, {r["task"]: {"successes": r["successes"], "episodes": r["episodes"]} for r in rows},
                          log=log)
    c1 = cpu_seconds()
    train(tc)
    c2 = cpu_seconds()
    d = tc.distill
    teachers = {t: json.loads((teacher_dir(d.teachers_cache, a.suite, t, d.teacher_seed, d.teacher_demos,
                                           d.teacher_iterations, a.max_steps, d.teacher_sft_steps, tc.env_kwargs)
                                / "teacher.json").read_text())
                for t in tasks}
    built_now = [t for t in tasks if any(x.startswith(f"distill: {t}: building") for x in logs)]
    after = evaluate_after(a, work / "run" / "final", work, ",".join(tasks))
    lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
    student_steps = int(json.loads(lines[-1])["rollout/env_steps"])
    teacher_steps = sum(t["ppo_env_steps"] for t in teachers.values())
    teacher_cpu = sum(t["cpu_s"] for t in teachers.values())
    selection_cpu = (c1 - c0) - sum(teachers[t]["cpu_s"] for t in built_now)  # the teachers' evaluations
    out = {"after": after,
           "distilled_tasks": [p.partition("=")[0] for p in d.teacher.split(",")], "log": logs,
           "teachers": teachers, "teachers_built_in_this_call": built_now,
           "student_env_steps": student_steps, "teacher_ppo_env_steps": teacher_steps,
           "env_steps": student_steps + teacher_steps, "teachers_build_cpu_s": round(teacher_cpu, 1),
           "teachers_eval_cpu_s": round(selection_cpu, 1), "distill_cpu_s": round(c2 - c1, 1),
           "cpu_s": round(teacher_cpu + selection_cpu + (c2 - c1), 1),
           "train_config": {k: v for k, v in dataclasses.asdict(tc).items() if k in (
               "tasks", "iterations", "groups", "lr", "curriculum", "curriculum_floor", "max_steps", "seed")},
           "distill": dataclasses.asdict(d)}
    atomic_write_text(result, json.dumps(out, indent=2))
    return out


def method_mtdistill(a, cfg: dict, seed: int, work: Path, before: dict) -> tuple[dict, int, float]:
    """The multi-task distillation run (``mtdistill_run``): its env steps and CPU seconds are the whole run's
    (teachers included, ``mtdistill_run`` says which)."""
    got = mtdistill_run(a, cfg, seed, work)
    return got["after"], got["env_steps"], got["cpu_s"]


def method_ire_vla(a, cfg: dict, seed: int, work: Path, before: dict) -> tuple[dict, int, float]:
    """iRe-VLA, a direct method (no teacher labels): ``vlaforge train --recipe ire-vla --init BASE --tasks MT10``,
    ``--ire-rounds`` rounds of (an RL stage: PPO on a frozen backbone, privileged critic, ``--iterations``
    iterations of ``--groups`` episodes, potential shaping 1, every successful episode kept; an SL stage:
    ``--ire-sl-steps`` supervised steps on the base's demos ∪ the kept successes, ``--ire-demo-fraction`` of each
    batch from the demos, the rest task-balanced from the successes; 1.0: demos only, the control),
    then the final policy evaluated per task. The recipe's own per-stage evaluations use
    ``--ire-stage-eval-episodes`` per task (progress only; nothing is chosen by them). Env steps: the RL
    stages' rollouts (the stage evaluations not counted)."""
    from vlaforge.recipes import recipe_defaults, run_recipe
    from vlaforge.train.loop import TrainConfig

    c0 = cpu_seconds()
    tc = recipe_defaults("ire-vla", TrainConfig(
        suite=a.suite, tasks=a.tasks, init=cfg["policy_dir"], out=str(work), groups=a.groups, num_envs=a.num_envs,
        workers=a.workers, max_steps=a.max_steps, image_size=cfg["image_size"], critic="privileged", lr=a.lr,
        env_kwargs={"shaping": 1.0}, eval_every=0, eval_episodes=a.ire_stage_eval_episodes, progress=False,
        tensorboard=False, seed=seed, threads=a.threads))
    tc.ire_vla.rounds, tc.ire_vla.rl_iterations, tc.ire_vla.sl_steps = a.ire_rounds, a.iterations, a.ire_sl_steps
    tc.ire_vla.demo_fraction, tc.ire_vla.sl_lr = a.ire_demo_fraction, a.ire_sl_lr
    run_recipe(tc)
    steps = sum(int(json.loads((work / f"round{r}" / "rl" / "metrics.jsonl").read_text().splitlines()[-1])
                    ["rollout/env_steps"]) for r in range(a.ire_rounds))
    return evaluate_after(a, work / "final", work), steps, cpu_seconds() - c0


def method_sft_more(a, cfg: dict, seed: int, work: Path, before: dict) -> tuple[dict, int, float]:
    """The control of ``ire-vla`` (not a post-training method): the base SFT'd further on its own demos alone,
    ``--sft-more-steps`` steps at the SL stage's lr 3e-4 and batch 64 (``vlaforge sft --init BASE --demos DEMOS``,
    ``--sft.seed`` the training seed), no rollouts. With 6 iRe-VLA rounds of 500 steps, 3,000 such steps show the
    demos twice as many samples as the recipe's half-demo batches did. Env steps: 0."""
    c0 = cpu_seconds()
    run_sft(SFTArgs(demos=cfg["demos_dir"], out=str(work / "sft"), init=cfg["policy_dir"], threads=a.threads,
                    overwrite=True, sft=SFTConfig(steps=a.sft_more_steps, lr=3e-4, seed=seed)), quiet=True)
    return evaluate_after(a, work / "sft", work), 0, cpu_seconds() - c0


METHODS = {"none": method_none, "ppo+priv": direct("ppo", "privileged"), "grpo": direct("grpo", group_size=8),
           "rloo": direct("rloo", group_size=8), "ire-vla": method_ire_vla, "sft-more": method_sft_more,
           "mtdistill": method_mtdistill}


def stage_methods(a) -> dict:
    """Rows ``{"suite", "task", "method", "seed", "before", "after", "env_steps", "cpu_s"}`` per (task, method,
    training seed) into ``--methods-out``, post-training the base config ``--base-config`` of ``--out`` (built by
    stage ``base`` first). "before" is the base on the same evaluation seeds, from the base JSON; ``env_steps`` and
    ``cpu_s`` are the whole multi-task run's, repeated on each of its task rows."""
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise BadInput(f"--methods: unknown {unknown or 'empty list'}; known: {', '.join(METHODS)}")
    parts = [x.strip() for x in str(a.seeds).split(",") if x.strip()] if a.seeds else None
    if parts is not None and not (parts and all(x.isdigit() for x in parts)):
        raise BadInput(f"--seeds: '{a.seeds}' is not comma-separated training seeds >= 0 (e.g. 0,1,2)")
    seeds = [int(x) for x in parts] if parts is not None else None
    for name in ("iterations", "groups"):
        if getattr(a, name) < 1:
            raise BadInput(f"--{name} must be >= 1; got {getattr(a, name)}")
    if not (a.lr > 0 and a.lr < float("inf")):
        raise BadInput(f"--lr must be a finite number > 0; got {a.lr}")
    if a.label and not all(c.isalnum() or c in "-_." for c in a.label):
        raise BadInput(f"--label '{a.label}' may hold letters, digits, '-', '_' and '.' only (it names folders)")
    if "ire-vla" in methods:
        for name, least in (("ire_rounds", 1), ("ire_sl_steps", 0), ("ire_stage_eval_episodes", 1)):
            if getattr(a, name) < least:
                raise BadInput(f"--{name.replace('_', '-')} must be >= {least}; got {getattr(a, name)}")
        try:  # the recipe's own check of --ire-vla.sl-lr
            learning_rate("--ire-sl-lr", a.ire_sl_lr)
        except ValueError as e:
            raise BadInput(str(e)) from None
        if not 0 <= a.ire_demo_fraction <= 1:
            raise BadInput(f"--ire-demo-fraction must be in [0, 1]; got {a.ire_demo_fraction}")
    if "sft-more" in methods and a.sft_more_steps < 1:
        raise BadInput(f"--sft-more-steps must be >= 1; got {a.sft_more_steps}")
    if "mtdistill" in methods:
        for name, least in (("teacher_demos", 0), ("teacher_iterations", 0), ("teacher_sft_steps", 1),
                            ("distill_iterations", 1), ("distill_groups", 1),
                            ("distill_capacity", 1)):
            if getattr(a, name) < least:
                raise BadInput(f"--{name.replace('_', '-')} must be >= {least}; got {getattr(a, name)}")
        if a.teacher_iterations == 0 and a.teacher_demos == 0:
            raise BadInput("--teacher-iterations 0 keeps each teacher's SFT policy, so it needs --teacher-demos N > 0")
        if a.suite != "metaworld":
            raise BadInput(f"--methods mtdistill builds privileged teachers for metaworld only; got '{a.suite}'")
        if Path(a.teachers_cache).exists() and not Path(a.teachers_cache).is_dir():
            raise BadInput(f"--teachers-cache '{a.teachers_cache}' is a file; name a folder")
    base_file = Path(a.out)
    if not base_file.exists():
        raise BadInput(f"--out '{base_file}' does not exist: build the base first (stage base)")
    base = json.loads(base_file.read_text())
    cfgs = {c["config"]: c for c in base.get("configs", [])}
    if a.base_config not in cfgs:
        raise BadInput(f"--base-config '{a.base_config}' is not in '{base_file}'; it has: {', '.join(cfgs) or 'none'}")
    cfg = cfgs[a.base_config]
    seeds = seeds if seeds is not None else [cfg["seed"]]
    out = Path(a.methods_out)
    data = json.loads(out.read_text()) if out.exists() else {"rows": []}
    done = {(r["method"], r["seed"]) for r in data["rows"]}
    label = (lambda m: f"{m}:{a.label}") if a.label else (lambda m: m)
    base_rows = [r for r in base["rows"] if r["config"] == a.base_config]
    a.suite, a.tasks = base_rows[0]["suite"], base["meta"]["args"]["tasks"]  # post-train where the base was built
    before = {r["task"]: {"successes": r["successes"], "episodes": r["episodes"]} for r in base_rows}
    for m in methods:
        for seed in seeds:
            if (label(m), seed) in done:
                continue
            after, steps, cpu = METHODS[m](a, cfg, seed, Path(a.work) / a.base_config / f"{label(m)}_seed{seed}",
                                           before)
            for r in base_rows:
                data["rows"].append({"suite": r["suite"], "task": r["task"], "method": label(m), "seed": seed,
                                     "before": before[r["task"]], "after": after[r["task"]], "env_steps": steps,
                                     "cpu_s": round(cpu, 1)})
            data["meta"] = {"benchmark": "generalist", "issue": "23 part 2", "date": time.strftime("%Y-%m-%d"),
                            "base": {k: cfg[k] for k in ("config", "policy_dir", "policy_sha", "demos_per_task",
                                                         "sft_steps", "dim", "image_size", "seed")},
                            "base_json": str(base_file), "metric": base["meta"]["metric"],
                            "command": a.command,
                            "shared_runs": "one multi-task run per (method, seed) serves every task row: env_steps and "
                                           "cpu_s are that run's totals (mtdistill: teachers included; details in "
                                           "WORK/CONFIG/mtdistill_seedS/seedS/result.json), repeated on each row"}
            atomic_write_text(out, json.dumps(data, indent=2))  # after each (method, seed): a crash loses one run
    return data


def pooled(rows: list[dict], side: str) -> tuple[int, int]:
    """(successes, episodes) of ``side`` ("before" / "after") summed over ``rows``."""
    return sum(r[side]["successes"] for r in rows), sum(r[side]["episodes"] for r in rows)


def stage_chart(a) -> dict:
    """The per-task bar chart of docs/benchmarks.md (issue 23 part 5) from ``--methods-out``: per task, the base and
    each method's success pooled over its training seeds (bars) with Wilson 95% intervals (whiskers), the MT10 mean
    last; written to ``--chart`` (PNG). Returns {method: {task: [successes, episodes]}}."""
    src, out = Path(a.methods_out), Path(a.chart)
    if not src.is_file():
        raise BadInput(f"--methods-out '{src}' does not exist: run stage methods first")
    if out.is_dir():
        raise BadInput(f"--chart '{out}' is a folder; name the PNG file to write (e.g. {out / 'generalist.png'})")
    if not out.parent.is_dir():
        raise BadInput(f"--chart '{out}': its folder '{out.parent}' does not exist; create it first")
    rows = json.loads(src.read_text())["rows"]
    if not rows:
        raise BadInput(f"--methods-out '{src}' holds no rows")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "none"]
    if not methods:
        raise BadInput(f"--methods-out '{src}' holds only the base ('none'): run a post-training method first")
    before: dict[str, tuple[int, int]] = {}
    for r in rows:  # every row's "before" is the one base on the same seeds: one value per task
        b = (r["before"]["successes"], r["before"]["episodes"])
        if before.setdefault(r["task"], b) != b:
            raise BadInput(f"--methods-out '{src}': the rows of {r['task']} disagree on 'before' ({before[r['task']]} vs "
                           f"{b}): they come from different bases; chart one base per file")
    seeds = {m: sorted({r["seed"] for r in rows if r["method"] == m}) for m in methods}
    table = {"base": dict(before)}
    for m in methods:
        table[m] = {t: pooled(got, "after") for t in tasks if (got := [r for r in rows if r["task"] == t and r["method"] == m])}
    mean = f"mean of {len(tasks)} tasks"
    for per in table.values():
        per[mean] = (sum(k for k, _ in per.values()), sum(n for _, n in per.values()))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [*tasks, mean]
    width = 0.8 / len(table)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.1 * len(labels)), 3.8))
    for i, (m, per) in enumerate(table.items()):
        xs = [j + (i - (len(table) - 1) / 2) * width for j in range(len(labels))]
        have = [j for j, t in enumerate(labels) if t in per]  # a method without a task's rows has no bar there
        xs = [xs[j] for j in have]
        rate = [per[labels[j]][0] / per[labels[j]][1] for j in have]
        ci = [wilson(*per[labels[j]]) for j in have]
        name = "base (SFT)" if m == "base" else f"{m} ({len(seeds[m])} seeds)"
        ax.bar(xs, rate, width, label=name)
        ax.errorbar(xs, rate, yerr=[[r - lo for r, (lo, _) in zip(rate, ci)], [hi - r for r, (_, hi) in zip(rate, ci)]],
                    fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5)
    ax.set_xticks(range(len(labels)), [t.removesuffix("-v3") for t in labels], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("success (pooled over seeds)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=min(len(table), 3), loc="upper left")
    ax.set_title("MT10 generalist from pixels: per-task success after post-training (95% Wilson intervals)", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    print(f"wrote {out}")
    return table


STAGES = {"base": stage_base, "methods": stage_methods, "chart": stage_chart}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=sorted(STAGES), help="base: demos -> one SFT'd tiny VLA -> per-task success; "
                                                          "methods: post-training rows of a built base; chart: the "
                                                          "per-task bar chart of --methods-out")
    ap.add_argument("--suite", default="metaworld")
    ap.add_argument("--tasks", default="MT10", help="task names or a benchmark name the suite knows (MT10)")
    ap.add_argument("--configs", default="25:2000", help="N:STEPS[:DIM], comma-separated: demos per task, SFT steps, "
                                                         f"token width (default {DEFAULT_DIM})")
    ap.add_argument("--sft-schedule", choices=["constant", "cosine"], default="constant",
                    help="base: the SFT learning-rate schedule (cosine: --sft-lr at the first step down to --sft-min-lr "
                         "at the last); a cosine config's name ends in _cos")
    ap.add_argument("--sft-lr", type=float, default=SFTConfig.lr, help="base: the SFT (peak) learning rate")
    ap.add_argument("--sft-min-lr", type=float, default=SFTConfig.min_lr, help="base: the cosine schedule's last rate")
    ap.add_argument("--seed", type=int, default=0, help="demo layouts, expert noise, policy init and SFT sampling")
    ap.add_argument("--noise", type=float, default=0.1, help="std of the expert's executed-action noise")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=150, help="episode limit for demos and evaluation")
    ap.add_argument("--eval-episodes", type=int, default=50, help="evaluation seeds per task")
    ap.add_argument("--num-envs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default="runs/generalist")
    ap.add_argument("--out", default="docs/bench/generalist_base.json", help="the base stage's JSON")
    ap.add_argument("--base-config", default="N25_S2000", help="methods: the base config to post-train")
    ap.add_argument("--methods", default="none", help=f"methods: comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--methods-out", default="docs/bench/generalist.json", help="methods: the rows' JSON")
    ap.add_argument("--chart", default="docs/bench/generalist.png", help="chart: the PNG written")
    ap.add_argument("--seeds", default=None, help="methods: training seeds, comma-separated (default: the base's)")
    ap.add_argument("--label", default="", help="methods: a variant's name, kept as METHOD:LABEL in the rows and "
                                                "the work folder (e.g. d50-it20 for --teacher-demos 50 "
                                                "--distill-iterations 20), so variants of one method sit side by side")
    ap.add_argument("--iterations", type=int, default=20, help="methods: RL iterations")
    ap.add_argument("--groups", type=int, default=8, help="methods: groups (initial states) per iteration")
    ap.add_argument("--lr", type=float, default=1e-4, help="methods: the policy learning rate")
    ap.add_argument("--ire-rounds", type=int, default=3, help="ire-vla: rounds of (RL stage, SL stage)")
    ap.add_argument("--ire-sl-steps", type=int, default=500, help="ire-vla: supervised steps per SL stage")
    ap.add_argument("--ire-sl-lr", type=float, default=IReVLAConfig.sl_lr,
                    help="ire-vla: the SL stages' learning rate (the recipe's default)")
    ap.add_argument("--ire-demo-fraction", type=float, default=0.5,
                    help="ire-vla: share of each SL batch from the base's demos (1.0: the demos-only control)")
    ap.add_argument("--ire-stage-eval-episodes", type=int, default=5,
                    help="ire-vla: episodes per task of the recipe's per-stage evaluations (progress only)")
    ap.add_argument("--sft-more-steps", type=int, default=3000,
                    help="sft-more: further SFT steps of the base on its own demos (ire-vla's control)")
    ap.add_argument("--teachers-cache", default="runs/teachers", help="mtdistill: where each task's privileged "
                                                                      "teacher is built or reused")
    ap.add_argument("--teacher-demos", type=int, default=50, help="mtdistill: scripted demos each teacher starts from")
    ap.add_argument("--teacher-iterations", type=int, default=64,
                    help="mtdistill: each teacher's PPO iterations (0: its SFT policy is the teacher)")
    ap.add_argument("--teacher-sft-steps", type=int, default=4000,
                    help="mtdistill: SFT steps on each teacher's demos before PPO")
    ap.add_argument("--distill-iterations", type=int, default=10, help="mtdistill: DAgger iterations")
    ap.add_argument("--distill-groups", type=int, default=16, help="mtdistill: student episodes per iteration")
    ap.add_argument("--distill-capacity", type=int, default=DistillConfig.capacity,
                    help="mtdistill: frames kept in the DAgger aggregate (oldest dropped; ~12.3 kB per 64 px frame)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    ap = parser()
    a = ap.parse_args(argv)
    # the command as typed, named from the repo root wherever the script ran from (a worktree, an absolute path)
    a.command = "python benchmarks/generalist.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return STAGES[a.stage](a)
    except BadInput as e:
        ap.exit(2, f"generalist.py: error: {e}\n")


if __name__ == "__main__":
    main()
