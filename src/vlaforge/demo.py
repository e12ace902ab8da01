"""The main job (``make demo`` / ``vlaforge demo``): scripted demos → SFT → RL → evaluation, with a video and a plot.

Defaults: Meta-World MT1 button-press-topdown-v3 from pixels (64x64 corner camera, the tiny VLA with a Gaussian
head), 10 scripted-expert demos, a short SFT (300 steps: a start that leaves room to improve), then the method that
lifted pixel policies by tens of points here at every training seed (docs/benchmarks.md, "RL on pixels";
docs/pixels.md): privileged-teacher distillation (``--algo distill``). The teacher is a state policy — it reads the
object and goal positions, no camera — started from SFT on the same 10 demos recorded again with the privileged
state (same seed: same layouts), improved by PPO without rendering (64 iterations), and distilled into the pixel
policy by DAgger (5 iterations × 16 episodes, 300 cloning steps each). The run ends with a table of success before
and after, with Wilson 95% intervals on 50 fixed evaluation seeds no training rollout used, and writes:

- ``OUT/demo_results.json``: the rows, the pooled rates with intervals, each stage's wall time, the options;
- ``OUT/before_after.mp4``: the first evaluation episode (same seed, same layout) before | after, side by side;
- ``OUT/learning_curve.png``: the student's rollout success and cloning loss per iteration, with the evaluations
  before and after and their intervals.

Measured on the development machine (2 cores): docs/benchmarks.md, "make demo". The actor never reads the
privileged state; only the teacher's labels come from it. ``--algo ppo|grpo|rloo|tpo`` runs the policy-gradient
methods instead (``--suite pointreach --tasks train --algo rloo`` runs the whole pipeline in a couple of minutes).
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
from vlaforge.fsutil import atomic_path, atomic_write_text
from vlaforge.pipeline import (
    CollectArgs,
    EvalArgs,
    SFTArgs,
    check_demo_seed,
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
    sft_steps: int = 300
    """SFT gradient steps (300: a start that leaves room to improve; 800 started button-press-topdown at 58–92%)"""
    algo: str = "distill"
    """RL algorithm (ppo | grpo | rloo | tpo), or distill: a privileged state teacher trained by PPO without
    rendering, distilled into the pixel policy by DAgger (one Meta-World task; docs/benchmarks.md, issue 15)"""
    teacher_iterations: int = 64
    """with --algo distill: PPO iterations of the state teacher (32 episodes each, no rendering; 8 left seed 2's
    teacher at 35/50, docs/benchmarks.md "make demo")"""
    teacher_demos: int = 10
    """with --algo distill: start the teacher from SFT on this many expert episodes recorded with the privileged
    state and no camera (the demos' seed, so the same layouts); 0 = PPO from scratch (fails on button-press-topdown
    and drawer-open in this budget, docs/pixels.md)"""
    rl_iterations: int = 5
    """RL iterations"""
    distill_steps: int = 300
    """with --algo distill: cloning steps per DAgger iteration"""
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
    seed: int = 0
    """demo layouts, SFT, the teacher and RL (the evaluation seeds are fixed and never used by either)"""
    threads: int = 2
    """torch CPU threads of SFT, the evaluations and RL (the demo is the machine's one job: the DAgger update gets the
    cores the idle env workers leave; give demos run side by side 1); the state teacher uses 1"""
    media: bool = True
    """write OUT/before_after.mp4 and OUT/learning_curve.png (--no-media: neither)"""

    def check(self) -> None:
        """The options (the CLI runs it before any work; the output folder is ``vlaforge.validate``'s)."""
        for f in ("demo_episodes", "sft_steps", "rl_iterations", "groups", "group_size", "eval_episodes",
                  "distill_steps", "threads"):
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
        # the demos' and the teacher's demo env seeds, checked here so that a bad --seed stops before any work
        check_demo_seed(self.seed, max(self.demo_episodes, self.teacher_demos), "--demo-episodes/--teacher-demos")


def run_demo(a: DemoArgs) -> dict:
    a.check()
    t0 = time.perf_counter()
    out = Path(a.out)
    env_kw = env_kwargs(a.env_kwargs, a.max_steps)
    stages: dict[str, float] = {}
    last = [t0]

    def stage_done(name: str) -> None:
        now = time.perf_counter()
        stages[name] = round(now - last[0], 1)
        last[0] = now

    print(f"[1/4] collecting {a.demo_episodes} expert episodes per task on {a.suite}: {a.tasks}")
    run_collect(CollectArgs(suite=a.suite, tasks=a.tasks, episodes=a.demo_episodes, out=str(out / "demos"),
                            num_envs=a.num_envs, workers=a.workers, env_kwargs=env_kw, seed=a.seed), quiet=False)
    stage_done("collect")
    print(f"[2/4] SFT of the tiny VLA ({a.sft_steps} steps)")
    dev = {"device": a.device, "precision": a.precision, "deterministic": a.deterministic}
    run_sft(SFTArgs(demos=str(out / "demos"), out=str(out / "sft"), threads=a.threads,
                    sft=SFTConfig(steps=a.sft_steps, seed=a.seed), **dev))
    stage_done("sft")
    videos = 1 if a.media and not a.skip_rl else 0  # one episode per batch; before_after.mp4 uses the first
    ev = EvalArgs(checkpoint=str(out / "sft"), suite=a.suite, tasks=a.tasks, episodes=a.eval_episodes,
                  num_envs=a.num_envs, workers=a.workers, env_kwargs=env_kw, videos=videos, threads=a.threads,
                  out=str(out / "eval_sft.json"), **dev)
    print(f"[3/4] evaluating the SFT policy ({a.eval_episodes} episodes per task)")
    before, _ = run_eval(ev, quiet=True, progress=True)
    stage_done("eval_sft")
    after = None
    if not a.skip_rl:
        print(f"[4/4] RL: {a.algo}, {a.rl_iterations} iterations × {a.groups} initial states × {a.group_size} rollouts")
        cfg = TrainConfig(algo=a.algo, suite=a.suite, tasks=a.tasks, init=str(out / "sft"), out=str(out / "rl"),
                          iterations=a.rl_iterations, groups=a.groups, num_envs=a.num_envs, workers=a.workers,
                          max_steps=a.max_steps or None, env_kwargs=dict(a.env_kwargs), eval_every=0, tensorboard=True,
                          seed=a.seed, threads=a.threads, **dev)
        cfg.algo_cfg.group_size = a.group_size  # every algorithm's config has one (algos/__init__.py)
        if a.algo == "distill":  # every episode its own layout; an SFT-like learning rate for the DAgger steps
            start = f"SFT on {a.teacher_demos} privileged demos, then " if a.teacher_demos else ""
            print(f"      privileged teacher: {start}PPO on the state, {a.teacher_iterations} iterations without rendering")
            teacher, index = privileged_teacher(a.suite, a.tasks, out / "teacher", a.teacher_iterations, seed=a.seed,
                                                threads=1, max_steps=a.max_steps or 150, num_envs=16,
                                                env_kwargs=a.env_kwargs, demos=a.teacher_demos, progress=True,
                                                student={  # refused if it does worse
                                                    "successes": sum(r.successes for r in before),
                                                    "episodes": sum(r.episodes for r in before)})
            stage_done("teacher")
            cfg.groups, cfg.lr = a.groups * a.group_size, 3e-4
            cfg.distill.group_size, cfg.distill.teacher, cfg.distill.teacher_state = 1, str(teacher), index
            cfg.distill.steps = a.distill_steps
        train(cfg)
        stage_done("rl")
        print(f"      evaluating the policy after {a.algo} ({a.eval_episodes} episodes per task)")
        after, _ = run_eval(EvalArgs(**{**ev.__dict__, "checkpoint": str(out / "rl" / "final"),
                                        "out": str(out / "eval_after.json")}), quiet=True, progress=True)
        stage_done("eval_after")
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
        apart = summary["rl_overall"][1] > summary["sft_overall"][2] or summary["rl_overall"][2] < summary["sft_overall"][1]
        print(f"overall: {tot_b[0]}/{tot_b[1]} → {tot_a[0]}/{tot_a[1]}; the 95% intervals "
              f"{'do not overlap' if apart else 'overlap: the difference is not shown at this number of episodes'}")
    print(f"wall time {time.perf_counter() - t0:.0f}s ({', '.join(f'{k} {v:.0f}s' for k, v in stages.items())}); "
          f"manifests and checkpoints under {out}")
    record = {"rows": rows, **summary, "args": a.__dict__, "stages_s": stages, "media": {},
              "wall_time_s": round(time.perf_counter() - t0, 1)}
    atomic_write_text(out / "demo_results.json", json.dumps(record, indent=2))  # the results first: media may fail
    media = write_media(out, a.algo, summary, bool(after) and a.media)
    for name, path in media.items():
        print(f"{name}: {path}")
    if media:
        record["media"] = {k: str(v) for k, v in media.items()}
        atomic_write_text(out / "demo_results.json", json.dumps(record, indent=2))
    return summary


def write_media(out: Path, algo: str, summary: dict, wanted: bool) -> dict[str, Path]:
    """``before_after.mp4`` (the first evaluation episode of each evaluation, side by side: the same seed, so the
    same layout) and ``learning_curve.png`` when ``wanted``; returns {what: path} of those written. Files of an
    earlier demo in ``out`` that this one does not write are removed (they would describe another run); a failure
    to write one (a codec, a font) is a printed line, not a lost run: the results are already on disk."""
    made: dict[str, Path] = {}
    video, curve = out / "before_after.mp4", out / "learning_curve.png"
    for f in (video, curve):
        f.unlink(missing_ok=True)
    if not wanted:
        return made
    first = [out / "eval_sft" / "episode_000.mp4", out / "eval_after" / "episode_000.mp4"]
    metrics = out / "rl" / "metrics.jsonl"
    jobs = [("video", lambda: side_by_side(first, ["SFT", f"after {algo}"], video), all(f.is_file() for f in first)),
            ("learning curve", lambda: learning_curve(metrics, summary, algo, curve), metrics.is_file())]
    for name, make, ready in jobs:
        if not ready:
            continue
        try:
            made[name] = make()
        except Exception as e:  # noqa: BLE001 - the media are a courtesy; the run's results are written
            print(f"could not write the {name}: {type(e).__name__}: {e}")
    return made


def side_by_side(videos: list[Path], titles: list[str], path: Path, fps: int = 10) -> Path:
    """The videos next to each other, each with its title above; the shorter ones hold their last frame."""
    import imageio.v3 as iio
    import numpy as np
    from PIL import Image, ImageDraw

    clips = [iio.imread(v) for v in videos]
    n = max(len(c) for c in clips)
    h = max(c.shape[1] for c in clips)
    panels = []
    for c, title in zip(clips, titles):
        c = np.concatenate([c, np.repeat(c[-1:], n - len(c), 0)]) if len(c) < n else c
        bar = Image.new("RGB", (c.shape[2], 24), "white")
        ImageDraw.Draw(bar).text((6, 6), title, fill="black")
        bar_arr = np.repeat(np.asarray(bar)[None], n, 0)
        pad = np.zeros((n, h - c.shape[1], c.shape[2], 3), np.uint8)
        panels.append(np.concatenate([bar_arr, c, pad], 1))
    frames = np.concatenate(panels, 2)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, frames, fps=fps, codec="libx264", macro_block_size=1)
    return path


def learning_curve(metrics: Path, summary: dict, algo: str, path: Path) -> Path:
    """The training run's rollout success (sampled actions, the episodes it trained on) and loss per iteration,
    with the deterministic evaluations before (iteration 0) and after (the last) and their 95% intervals."""
    from matplotlib.figure import Figure  # no pyplot: the caller's matplotlib backend stays as it was

    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "rollout/success" in r]
    its = list(range(1, len(rows) + 1))
    fig = Figure(figsize=(9, 3.4))
    ax, ax2 = fig.subplots(1, 2)
    ax.plot(its, [r["rollout/success"] for r in rows], "o-", label="training rollouts (sampled)")
    for x, key, name, color in ((0, "sft_overall", "eval: SFT", "tab:gray"),
                                (len(rows), "rl_overall", f"eval: after {algo}", "tab:green")):
        if key in summary:
            p, lo, hi = summary[key]
            ax.errorbar([x], [p], yerr=[[p - lo], [hi - p]], fmt="s", color=color, capsize=4, label=f"{name} (95% CI)")
    ax.set(xlabel="iteration", ylabel="success", ylim=(-0.03, 1.03), title="success")
    ax.legend(fontsize=7, loc="lower right")
    loss = [r.get("train/loss") for r in rows]
    if any(v is not None for v in loss):
        ax2.plot(its, [v if v is not None else float("nan") for v in loss], "o-", color="tab:orange")
        ax2.set_yscale("log")
    ax2.set(xlabel="iteration", ylabel="train/loss", title=f"{algo}: training loss")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path
