"""End-to-end jobs built from the pieces: collect demos → SFT → (RL) → evaluate.

Used by the CLI (``vlaforge collect|sft|eval|demo``) and by the benchmark scripts, so that the
numbers in docs/ come from the same code a user runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from vlaforge.algos.distill import check_teacher
from vlaforge.algos.sft import SFTConfig, train_sft
from vlaforge.checks import SEED_LIMIT, at_least, check_image_size, check_seed, need
from vlaforge.data.demos import DEMO_SEED_BASE, DEMO_SEED_STRIDE, collect_demos, load_demos
from vlaforge.data.lerobot import write_v3
from vlaforge.device import DeviceOptions, precision_context, resolve_device, set_deterministic
from vlaforge.envs import env_tasks, make_vec_env, require, suite_info, suite_spec, suite_task_names
from vlaforge.envs.options import EnvOptions
from vlaforge.errors import NonFiniteError, UsageError
from vlaforge.fsutil import atomic_dir, atomic_write_text
from vlaforge.policies import build_policy, load_policy, policy_hash, write_policy_files
from vlaforge.policies.base import check_fits, reads_images
from vlaforge.policies.options import PolicyShape
from vlaforge.policies.privileged import perception_targets
from vlaforge.rollout.evaluate import EVAL_SEED_BASE, evaluate_policy, format_table, manifest, write_manifest
from vlaforge.train.logging import LogOptions, RunLogger, progress_bar
from vlaforge.train.loop import TrainConfig, env_settings, train


def selected_tasks(spec, suite: str, tasks: str | None) -> list[str]:
    """The task names a command runs on. A suite whose envs are built with the selection (Meta-World, ...) has
    resolved it already, benchmark names included ("MT10", "ML10-test"): its env's tasks are the selection.
    A suite whose env holds every task (PointReach) selects among them by name or split."""
    return suite_task_names(spec, tasks if suite_info(suite).holds_all_tasks else None)


@dataclass
class CollectArgs(EnvOptions):
    """Record scripted-expert demonstrations (LeRobot v2 parquet layout)."""

    episodes: int = 50
    """episodes per task"""
    out: str = "runs/demos"
    """output directory (written atomically)"""
    noise: float = 0.1
    """std of Gaussian noise on executed actions (labels stay noise-free)"""
    image_size: int = 64
    """image size"""
    seed: int = 0
    """seed"""
    format: Literal["v2", "v3"] = "v2"
    """v2: vlaforge's LeRobot v2.0 layout with lossless PNG frames (the default); v3: LeRobot v3.0 (many episodes per
    parquet file, AV1 MP4 video, parquet episode/task tables; frames lose a little to the codec)"""

    def check(self) -> None:
        """The options (``run_collect`` and the CLI run it before any env is built): envs, episodes, seeds, noise;
        ``v3`` needs PyAV."""
        EnvOptions.check(self)
        check_image_size("--image-size", self.image_size)
        at_least("--episodes", self.episodes, 1, " (episodes per task)")
        check_demo_seed(self.seed, self.episodes)
        at_least("--noise", self.noise, 0)
        if self.format == "v3":  # MP4 video: PyAV, checked before any episode is collected
            require("av", "lerobot")


def check_demo_seed(seed: int, episodes: int, episodes_flag: str = "--episodes") -> None:
    """``--seed`` of a demo collection: a seed whose ``episodes`` demo env seeds (``collect_demos``: seed × stride +
    base + k) stay below the 32-bit limit envs take."""
    check_seed("--seed", seed)
    top = seed * DEMO_SEED_STRIDE + DEMO_SEED_BASE + episodes
    need(top < SEED_LIMIT, f"--seed {seed} with {episodes_flag} {episodes} gives demo env seeds up to {top}, past the "
                           f"32-bit seeds envs take; pass --seed <= {(SEED_LIMIT - DEMO_SEED_BASE - episodes) // DEMO_SEED_STRIDE}")


def run_collect(a: CollectArgs, quiet: bool = False):
    a.check()
    venv = make_vec_env(a.suite, a.num_envs, tasks=env_tasks(a.suite, a.tasks), image_size=a.image_size,
                        workers=a.workers, **a.env_kwargs)
    try:
        names = selected_tasks(venv.spec, a.suite, a.tasks)
        prog, task = progress_bar("collect", a.episodes * len(names), not quiet)
        v3 = tempfile.TemporaryDirectory(prefix="vlaforge-collect-") if a.format == "v3" else contextlib.nullcontext()
        with prog, v3 as tmp:  # v3: the PNG dataset first (in a temp folder), then encoded into --out
            first = a.out if tmp is None else str(Path(tmp) / "v2")
            info = collect_demos(venv, first, names, a.episodes, a.seed, a.noise,
                                 progress=lambda done, total: prog.update(task, completed=done))
            if a.format == "v3":
                info = dataclasses.replace(info, path=write_v3(first, a.out))
    finally:
        venv.close()
    if not quiet:
        print(f"wrote {info.episodes} episodes ({info.frames} frames, {info.successes} successful) to {info.path}")
    return info


@dataclass
class SFTArgs(PolicyShape, DeviceOptions, LogOptions):
    """Supervised fine-tuning of a VLA on demonstrations."""

    demos: str = "runs/demos"
    """demo directory from `vlaforge collect`, or a LeRobot dataset v2.0/v2.1/v3.0 (docs/demos.md)"""
    demos_map: str | None = None
    """which dataset features the policy reads: FEATURE=image0[,FEATURE=image1...],FEATURE=state,FEATURE=action
    (default: every camera feature in info.json's order, observation.state, action)"""
    out: str = "runs/sft"
    """output policy directory (written whole at the end; its training logs in <out>/logs)"""
    overwrite: bool = False
    """replace an earlier policy in --out (without it, an --out that holds one is refused)"""
    init: str | None = None
    """start from this policy checkpoint (default: a fresh tiny VLA)"""
    trust_remote_code: bool = False
    """let a Hugging Face --init checkpoint run its own Python code (auto_map); only if you trust its files"""
    aux: bool = False
    """give a fresh policy a perception readout trained to predict the object/goal positions of the demos'
    recorded sim_state from the image features (an auxiliary loss that teaches the encoder to localise;
    never an actor input). Weight: --sft.aux-weight"""
    threads: int = 2
    """torch CPU threads"""
    sft: SFTConfig = field(default_factory=SFTConfig)

    def check(self) -> None:
        """The options (``run_sft`` and the CLI run it before any work): threads, ``--sft.*``, a fresh policy's
        shape. The demos and the --init checkpoint are checked by ``vlaforge.validate`` (files)."""
        at_least("--threads", self.threads, 1)
        self.sft.check()
        if not self.init:
            PolicyShape.check(self)


def run_sft(a: SFTArgs, quiet: bool = False):
    a.check()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.sft.seed)
    demos = load_demos(a.demos, demos_map=a.demos_map)
    info = demos.info
    if a.init:
        policy = load_policy(a.init, trust_remote_code=a.trust_remote_code)
    else:
        V, H = info.get("views", 1), info["image_size"]
        aux = {}
        if a.aux:
            aux_index = perception_targets(demos.sim_state_names)
            if demos.sim_state is None or not aux_index:
                raise ValueError(f"--aux needs demos with object/goal positions in sim_state; '{a.demos}' has none "
                                 "(re-collect them with this version of `vlaforge collect`)")
            aux = {"aux_index": aux_index, "sim_state_dim": demos.sim_state.shape[1], "aux_weight": a.sft.aux_weight}
        policy = build_policy("tiny", state_dim=info["features"]["observation.state"]["shape"][0],
                              action_dim=info["features"]["action"]["shape"][0], views=V, image_size=H,
                              **a.shape(), **aux)
    policy.to(resolve_device(a.device))
    set_deterministic(a.deterministic)
    if info.get("renderer") == "none" and reads_images(policy):
        raise ValueError(f"demos '{a.demos}' were recorded with render 0 (blank images) but this policy reads images; "
                         "use --backbone state or record the demos with rendering")
    task_index = demos.task_index
    tb, wandb = a.sinks()
    prog, task = progress_bar("sft", a.sft.steps, not quiet)
    t0 = time.perf_counter()
    with atomic_dir(a.out) as tmp:  # the logs and the policy appear together in --out, or nothing does
        logger = RunLogger(tmp / "logs", tb, wandb_config=dataclasses.asdict(a) if wandb else None,
                           name=Path(a.out).name)
        try:
            with prog:
                metrics = train_sft(policy, demos, a.sft, task_index, logger, precision=a.precision,
                                    progress=lambda s, n, m: prog.update(task, completed=s, info=f"loss {float(m.get('sft/loss', 0)):.4f}")
                                    if s % 10 == 0 or s == n else None)
        finally:
            logger.close()
        if metrics.get("sft/skipped_nonfinite"):  # the final weights give a NaN/inf loss: a model that cannot act
            raise NonFiniteError(f"SFT diverged: the loss at the last step is non-finite ({metrics}); '{a.out}' was "
                                 "not written: lower --sft.lr")
        write_policy_files(policy, tmp, extra={"trained_on": {"demos": str(a.demos), "suite": info["suite"],
                                                             "frames": len(demos), "steps": a.sft.steps}})
    if not quiet:
        print(f"SFT done in {time.perf_counter() - t0:.0f}s on {len(demos)} frames; final {metrics}; saved to {a.out}")
    return policy, metrics


@dataclass
class EvalArgs(EnvOptions, DeviceOptions, LogOptions):
    """Evaluate a policy: success per task over fixed seeds with Wilson 95% intervals."""

    tasks: str = "all"
    """comma-separated task names, or a split/benchmark name the suite knows (train / heldout / all)"""
    checkpoint: str = "runs/sft"
    """policy directory"""
    episodes: int = 20
    """episodes per task"""
    out: str | None = None
    """write the eval manifest (JSON) here; default <checkpoint>/eval_<suite>.json"""
    videos: int = 0
    """record this many episodes per batch as mp4 next to the manifest"""
    stochastic: bool = False
    """sample actions instead of taking the mode"""
    seed_base: int = EVAL_SEED_BASE
    """first evaluation seed"""
    threads: int = 2
    """torch CPU threads"""
    trust_remote_code: bool = False
    """let a Hugging Face checkpoint run its own Python code (auto_map); only if you trust its files"""

    def check(self) -> None:
        """The options (``run_eval`` and the CLI run it before any env is built): threads, envs, episodes, videos,
        seeds. The checkpoint and the manifest's path are checked by ``vlaforge.validate`` (files)."""
        at_least("--threads", self.threads, 1)
        EnvOptions.check(self)
        at_least("--episodes", self.episodes, 1, " (episodes per task)")
        at_least("--videos", self.videos, 0)
        check_seed("--seed-base", self.seed_base, self.episodes)


def run_eval(a: EvalArgs, quiet: bool = False, policy=None, progress: bool | None = None):
    """Evaluate ``a.checkpoint`` (or ``policy``); ``quiet`` drops the printed table, ``progress`` (default: not
    ``quiet``) shows the episodes done (a bar in a terminal, a line every few seconds in a log)."""
    a.check()
    torch.set_num_threads(a.threads)
    policy = policy if policy is not None else load_policy(a.checkpoint, trust_remote_code=a.trust_remote_code)
    device = resolve_device(a.device)
    policy.to(device)
    venv = make_vec_env(a.suite, a.num_envs, tasks=env_tasks(a.suite, a.tasks),
                        image_size=policy.cfg.image_size, workers=a.workers, **a.env_kwargs)
    try:
        check_fits(policy, venv.spec, a.suite)
        names = selected_tasks(venv.spec, a.suite, a.tasks)
        out = Path(a.out) if a.out else Path(a.checkpoint) / f"eval_{a.suite}.json"
        t0 = time.perf_counter()
        prog, task = progress_bar("eval", a.episodes * len(names), not quiet if progress is None else progress)
        with precision_context(a.precision, device), prog:
            results, stats = evaluate_policy(policy, venv, names, a.episodes, deterministic=not a.stochastic,
                                             seed_base=a.seed_base, videos=a.videos,
                                             video_dir=out.with_suffix("") if a.videos else None,
                                             progress=lambda done, total: prog.update(task, completed=done))
        data = manifest(venv.spec, names, a.episodes, a.seed_base, policy_hash(a.checkpoint)
                        if (Path(a.checkpoint) / "model.safetensors").exists() else None, results,
                        {"deterministic": not a.stochastic, "wall_time_s": time.perf_counter() - t0,
                         "env_steps": stats.env_steps, "policy_s_per_env_step": stats.policy_time / max(stats.env_steps, 1),
                         "sim_s_per_env_step": stats.sim_time / max(stats.env_steps, 1),
                         "lost_episodes": stats.invalid})
        write_manifest(out, data)
    finally:
        venv.close()
    if a.sinks()[1]:  # --log wandb: the per-task table, the overall rate and the videos, beside the manifest
        logger = RunLogger(out.with_suffix(""), tensorboard=False, wandb_config={**dataclasses.asdict(a), "manifest": str(out)},
                           name=f"eval-{Path(a.checkpoint).name}-{a.suite}")
        logger.log(0, {"eval/success": data["overall"]["success_rate"]})
        logger.table("eval/per_task", [{"task": r["task"], "successes": r["successes"], "episodes": r["episodes"],
                                        "success": r["success_rate"], "ci95_lo": r["ci95"][0], "ci95_hi": r["ci95"][1]}
                                       for r in data["results"]])
        for f in sorted(out.with_suffix("").glob("*.mp4")):
            logger.video(f"eval/video/{f.stem}", f)
        logger.close()
    if not quiet:
        print(format_table(results, f"{a.suite}: {Path(a.checkpoint).name}", a.episodes, a.seed_base,
                           not a.stochastic))
        print(f"manifest: {out}")
    return results, data


def privileged_teacher(suite: str, task: str, out: str | Path, iterations: int = 64, seed: int = 0, threads: int = 1,
                       max_steps: int = 150, num_envs: int = 16, workers: int = 0, demos: int = 0,
                       sft_steps: int = 1000, demo_noise: float = 0.1,
                       env_kwargs: dict | None = None, progress: bool = False,
                       student: dict | None = None) -> tuple[Path, str]:
    """Train the teacher of ``--algo distill``: a state-backbone tiny policy trained by PPO on the suite's
    privileged state (Meta-World: hand, gripper, object and goal positions) without rendering, with shaping 1
    and 32 episodes per iteration at lr 3e-4 (docs/benchmarks.md: 44/50 held-out on reach-v3 after 64
    iterations from scratch, ~165 CPU-s). It never sees pixels.

    ``demos = 0``: PPO from scratch (no demos). ``demos = N``: first N scripted-expert episodes are recorded with the
    privileged state and no camera, with ``seed`` and ``demo_noise`` — the same layouts and expert as the pixel
    policy's demos when those were collected with the same seed, so the teacher is told nothing the student's
    demos did not show — and the teacher starts from ``sft_steps`` of SFT on them (then PPO; ``iterations = 0``:
    the SFT policy is the teacher). ``sft_steps`` defaults to the 1,000 ``vlaforge demo`` measured with; the
    distillation cache passes ``--distill.teacher-sft-steps`` (4,000: 1,000 underfit 50 demos).
    Tasks that PPO does not solve from scratch in this budget (button-press-topdown: 0/50) need this start.

    ``env_kwargs``: the suite's env options of the student's run (``--env-kwargs``), under the teacher's own
    (privileged state, no rendering, shaping 1). ``progress``: show the teacher's PPO iterations (``vlaforge demo``).

    ``student``: the student's ``{"successes", "episodes"}`` on the evaluation seeds from ``EVAL_SEED_BASE``; the
    teacher is then evaluated on the same seeds and refused (``UsageError``, ``algos.distill.check_teacher``) when it
    does worse than the student it would teach.

    The teacher's ``config.json`` records the sim_state fields its state is (``state_fields``: Meta-World's
    ``privileged`` group), so a distillation run needs no ``--distill.teacher-state``.

    Returns (the teacher's policy directory, the ``--distill.teacher-state`` indices of its state in sim_state: the
    older form, still read)."""
    if suite != "metaworld":
        raise UsageError(f"a privileged teacher is built for metaworld only (its state layout is named); got '{suite}'")
    from vlaforge.envs.metaworld import PRIVILEGED_STATE_NAMES, SIM_STATE_NAMES  # the metaworld extra

    if iterations < 1 and demos < 1:
        raise UsageError("a privileged teacher with no PPO iterations is its SFT policy, so it needs demos (demos > 0)")
    out = Path(out)
    priv = {**(env_kwargs or {}), "privileged": 1.0, "render": 0.0}
    init = None
    if demos > 0:
        demo_dir, init = out / "demos", out / ("sft" if iterations > 0 else "final")
        run_collect(CollectArgs(suite=suite, tasks=task, episodes=demos, out=str(demo_dir), noise=demo_noise,
                                num_envs=min(demos, num_envs), seed=seed, env_kwargs=dict(priv)), quiet=True)
        run_sft(SFTArgs(demos=str(demo_dir), out=str(init), backbone="state", threads=threads,
                        sft=SFTConfig(steps=sft_steps, seed=seed)), quiet=True)
    if iterations > 0:
        cfg = TrainConfig(algo="ppo", suite=suite, tasks=task, backbone="state", out=str(out), iterations=iterations,
                          groups=32, num_envs=num_envs, workers=workers, max_steps=max_steps, init=init and str(init),
                          env_kwargs={**priv, "shaping": 1.0}, eval_every=0, progress=progress,
                          tensorboard=False, seed=seed, lr=3e-4, threads=threads)
        train(cfg)
    meta_file = out / "final" / "config.json"  # the teacher says which sim_state fields its state is
    atomic_write_text(meta_file, json.dumps({**json.loads(meta_file.read_text()),
                                             "state_fields": list(PRIVILEGED_STATE_NAMES)}, indent=2))
    if student is not None:
        res, _ = run_eval(EvalArgs(checkpoint=str(out / "final"), suite=suite, tasks=task, episodes=student["episodes"],
                                   num_envs=num_envs, workers=workers, threads=threads, out=str(out / "eval_teacher.json"),
                                   env_kwargs={**priv, "max_steps": max_steps}), quiet=True)
        check_teacher({"successes": sum(r.successes for r in res), "episodes": sum(r.episodes for r in res)}, student,
                      f"the teacher '{out / 'final'}'")
    return Path(out) / "final", ",".join(str(SIM_STATE_NAMES.index(n)) for n in PRIVILEGED_STATE_NAMES)


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (env workers), user + system."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def teacher_dir(cache: str | Path, suite: str, task: str, seed: int, demos: int, iterations: int,
                max_steps: int, sft_steps: int = 0, env_kwargs: dict | None = None) -> Path:
    """Where ``--distill.teachers-cache`` keeps one task's teacher run: keyed by (suite, task, seed, demos, SFT steps
    on them, PPO iterations, episode length, the run's ``--env-kwargs``). ``sft_steps`` is part of the key only with
    demos (none are taken without); env options only when there are some, as a short hash of their sorted pairs
    (``_kw`` + 8 hex digits). ``--num-envs`` / ``--workers`` are not: they batch the same recipe differently."""
    sft = f"_sft{sft_steps}" if demos > 0 else ""
    kw = ""
    if env_kwargs:
        text = json.dumps(sorted((str(k), v) for k, v in env_kwargs.items()))
        kw = "_kw" + hashlib.sha256(text.encode()).hexdigest()[:8]
    return Path(cache) / suite / task / f"seed{seed}_demos{demos}{sft}_it{iterations}_steps{max_steps}{kw}"


def cached_teacher(cfg, task: str, max_steps: int, build=None, log=print) -> Path:
    """One task's privileged teacher for the distillation run ``cfg`` (a ``TrainConfig``): reused from
    ``--distill.teachers-cache`` when its run finished there before (``teacher.json``, written last, says so), else
    built there by ``build`` (``privileged_teacher``'s signature; None: ``privileged_teacher``) from an emptied
    folder. Returns its policy dir."""
    build = build or privileged_teacher
    d = cfg.distill
    run = teacher_dir(d.teachers_cache, cfg.suite, task, d.teacher_seed, d.teacher_demos, d.teacher_iterations,
                      max_steps, d.teacher_sft_steps, cfg.env_kwargs)
    record = run / "teacher.json"
    if record.is_file() and (run / "final" / "config.json").is_file():
        log(f"distill: {task}: teacher reused from {run / 'final'}")
        return run / "final"
    if run.exists():  # an interrupted build: its run folder holds a partial metrics.jsonl / checkpoint
        shutil.rmtree(run)
    sft = f", {d.teacher_sft_steps} SFT steps" if d.teacher_demos else ""
    log(f"distill: {task}: building the teacher in {run} ({d.teacher_demos} demos{sft}, {d.teacher_iterations} PPO "
        "iterations on the privileged state)")
    t0 = cpu_seconds()
    final, _ = build(cfg.suite, task, run, d.teacher_iterations, d.teacher_seed, cfg.threads or 1,
                     max_steps, cfg.num_envs, cfg.workers, demos=d.teacher_demos, sft_steps=d.teacher_sft_steps,
                     env_kwargs=dict(cfg.env_kwargs))
    metrics = run / "metrics.jsonl"  # the teacher's PPO run: its last line counts the env steps it took
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    steps = int(json.loads(lines[-1]).get("rollout/env_steps", 0)) if lines else 0
    atomic_write_text(record, json.dumps({"suite": cfg.suite, "task": task, "seed": d.teacher_seed,
                                          "demos": d.teacher_demos, "iterations": d.teacher_iterations,
                                          "sft_steps": d.teacher_sft_steps if d.teacher_demos else 0,
                                          "env_kwargs": dict(cfg.env_kwargs),
                                          "max_steps": max_steps, "ppo_env_steps": steps,
                                          "cpu_s": round(cpu_seconds() - t0, 1)}, indent=2))
    return Path(final)


def teacher_success(cfg, task: str, teacher: Path, episodes: int, max_steps: int) -> dict:
    """``{"successes", "episodes"}`` of a privileged teacher on ``task``'s evaluation seeds (from EVAL_SEED_BASE),
    with the privileged state and no rendering; kept beside the teacher and reused."""
    f = teacher.parent / f"eval_e{episodes}.json"
    if not f.is_file():
        run_eval(EvalArgs(checkpoint=str(teacher), suite=cfg.suite, tasks=task, episodes=episodes,
                          num_envs=cfg.num_envs, workers=cfg.workers, threads=cfg.threads or 1, out=str(f),
                          env_kwargs={**cfg.env_kwargs, "privileged": 1.0, "render": 0.0,
                                      "max_steps": max_steps}), quiet=True)
    o = json.loads(f.read_text())["overall"]
    return {"successes": o["successes"], "episodes": o["episodes"]}


def distill_teachers(cfg, student: dict | None = None, build=None, success=None, log=print):
    """``vlaforge train --algo distill --distill.teachers-cache DIR``'s first stage: each training task's teacher
    built or reused (``cached_teacher``), evaluated on the student's evaluation seeds (``success``) and skipped,
    with a logged line, when it does worse than the student there (``algos.distill.check_teacher``). ``student``:
    {task: {"successes", "episodes"}} of the ``--init`` policy on those seeds (None: evaluated here,
    ``--eval-episodes`` per task; a run without ``--init`` starts from nothing, so any teacher passes).

    Returns ``cfg`` with ``--distill.teacher`` = ``task=DIR,...`` (what the checkpoint's config keeps, so a resume
    rebuilds nothing) and ``--tasks`` narrowed to the tasks kept. ``build`` / ``success`` (None:
    ``privileged_teacher`` / ``teacher_success``) are seams for tests."""
    success = success or teacher_success
    spec = suite_spec(cfg.suite, **env_settings(cfg))
    named = selected_tasks(spec, cfg.suite, cfg.tasks)
    tasks = [n for n in named if spec.tasks[spec.task_index(n)].split == "train"] or named
    if student is None and cfg.init:
        res, _ = run_eval(EvalArgs(checkpoint=cfg.init, suite=cfg.suite, tasks=",".join(tasks),
                                   episodes=cfg.eval_episodes, num_envs=cfg.num_envs, workers=cfg.workers,
                                   threads=cfg.threads or 1, out=str(Path(cfg.out) / "eval_student.json"),
                                   env_kwargs={**cfg.env_kwargs, "max_steps": spec.max_steps}), quiet=True)
        student = {r.task: {"successes": r.successes, "episodes": r.episodes} for r in res}
    kept: dict[str, Path] = {}
    for task in tasks:
        teacher = cached_teacher(cfg, task, spec.max_steps, build, log)
        mine = (student or {}).get(task, {"successes": 0, "episodes": cfg.eval_episodes})
        got = success(cfg, task, teacher, mine["episodes"] or cfg.eval_episodes, spec.max_steps)
        try:
            check_teacher(got, mine, f"the teacher of {task}")
        except UsageError as e:
            log(f"distill: {task}: skipped: {e}")
            continue
        log(f"distill: {task}: teacher {got['successes']}/{got['episodes']}, student {mine['successes']}/"
            f"{mine['episodes']} on the same seeds: distilled")
        kept[task] = teacher
    if not kept:
        raise UsageError("no task has a teacher at least as good as the student; train the teachers longer "
                         "(--distill.teacher-iterations) or give them demos (--distill.teacher-demos)")
    mapping = ",".join(f"{t}={p}" for t, p in kept.items())
    narrowed = cfg.tasks if len(kept) == len(tasks) else ",".join(kept)
    return dataclasses.replace(cfg, tasks=narrowed, distill=dataclasses.replace(cfg.distill, teacher=mapping))
