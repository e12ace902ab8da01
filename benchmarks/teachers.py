"""The privileged state teachers of ``--algo distill`` (``pipeline.privileged_teacher``) on Meta-World MT10: PPO on the
privileged state without rendering, started from SFT on ``--demos`` scripted-expert episodes (what
``benchmarks/vision_rl.py --methods distill300+tdemos`` trains), per (task, seed): held-out success on 50 evaluation
seeds and the per-iteration curve of what decides whether PPO keeps or wrecks the SFT start (rollout success, the
critic's explained variance, the update's approx KL, optimizer steps kept, steps shrunk or undone by the KL guard).

    OMP_NUM_THREADS=1 python benchmarks/teachers.py --tasks mt10 --seeds 0 --out docs/bench/teachers_mt10.json

``--from-cache DIR`` trains nothing: it reads the teachers a ``--distill.teachers-cache DIR`` run built with the same
seed, demos, ``--sft-steps``, iterations and episode length (``pipeline.teacher_dir``; a distillation run's defaults
are ``--demos 50 --sft-steps 4000 --iterations 64``, not this script's), evaluates their SFT start and final policy
the same way (the evaluation files go under ``--work``, linked to the cache, which is not written), and takes the CPU
seconds their ``teacher.json`` records.

JSON: ``{"meta": …, "rows": [{"task", "seed", "demos", "sft_steps", "iterations", "seed_base", "tag", "sft":
{"successes", "episodes"}, "success": {…}, "cpu_s", "env_steps", "curve": [{"it", "success", "ev", "kl", "steps",
"kl_skips", "backtracks"}, …], "command"}]}`` (rows merged with those already in ``--out``, keyed by
task/seed/demos/SFT steps/iterations/seed base/tag, ``row_key``; the oldest rows lack the fields after ``demos``
and ``command``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import time
from pathlib import Path

import torch

from vlaforge.fsutil import atomic_write_text
from vlaforge.pipeline import EvalArgs, privileged_teacher, run_eval, teacher_dir

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]
PRIV = {"privileged": 1.0, "render": 0.0}


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def held_out(checkpoint: Path, task: str, a, out: Path) -> dict:
    res, _ = run_eval(EvalArgs(checkpoint=str(checkpoint), suite="metaworld", tasks=task, episodes=a.eval_episodes,
                               num_envs=a.num_envs, threads=a.threads, out=str(out), seed_base=a.seed_base,
                               env_kwargs={**PRIV, "max_steps": a.max_steps}), quiet=True)
    return {"successes": sum(r.successes for r in res), "episodes": sum(r.episodes for r in res)}


def curve(run: Path) -> list[dict]:
    """The PPO run's per-iteration curve (none for a teacher with no PPO iterations)."""
    f = run / "metrics.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines() if x] if f.is_file() else []
    return [{"it": i + 1, "success": round(r["rollout/success"], 4),
             "ev": round(r.get("rollout/value_explained_variance", 0.0), 3),
             "kl": round(r.get("train/approx_kl", 0.0), 4), "steps": int(r.get("train/optimizer_steps", 0)),
             "kl_skips": int(r.get("train/skipped_kl_guard", 0)), "backtracks": int(r.get("train/kl_backtracks", 0)),
             "env_steps": int(r.get("rollout/env_steps", 0))}
            for i, r in enumerate(rows) if "rollout/success" in r]


def table(data: dict, tag: str) -> str:
    """docs/benchmarks.md's table of the rows with ``tag``."""
    lines = ["| task | SFT (of 50) | after PPO (of 50) | rollout success: first 4 iterations | lowest from iteration 4 "
             "| mean of the last 10 | steps halved / undone | env steps | CPU-s |", "| --- |" + " --- |" * 8]
    for r in [r for r in data["rows"] if r.get("tag", "") == tag]:
        c = r["curve"]
        s = [x["success"] for x in c]
        ok = "**" if r["success"]["successes"] >= 0.9 * r["success"]["episodes"] else ""
        first = f"{', '.join(f'{100 * x:.0f}' for x in s[:4])}%" if s else "–"
        low = f"{100 * min(s[3:]):.0f}%" if s[3:] else "–"
        last = f"{100 * sum(s[-10:]) / len(s[-10:]):.0f}%" if s else "–"
        lines.append(f"| {r['task']} | {r['sft']['successes'] if r['sft'] else '–'} | {ok}{r['success']['successes']}{ok} | "
                     f"{first} | {low} | {last} | {sum(x['backtracks'] for x in c)} / "
                     f"{sum(x['kl_skips'] for x in c)} | {r['env_steps']:,} | {r['cpu_s']:.0f} |")
    return "\n".join(lines)


def row_key(r: dict) -> tuple:
    """What makes two rows the same measurement (rows written before these fields existed: 1000 SFT steps, 64
    iterations, seeds from 10,000,000)."""
    return (r["task"], r["seed"], r["demos"], r.get("sft_steps", 1000 if r["demos"] else 0), r.get("iterations", 64),
            r.get("seed_base", 10_000_000), r.get("tag", ""))


def check_args(ap, a, tasks: list[str]) -> list[int]:
    """Every argument and, with --from-cache, every teacher folder checked before any work: one line and exit 2."""
    def bad(msg: str):
        ap.exit(2, f"teachers.py: error: {msg}\n")

    unknown = [t for t in tasks if t not in MT10]
    if not tasks or unknown:
        bad(f"--tasks: unknown task {unknown[0] if unknown else '(none)'}; choose from {', '.join(MT10)} or mt10")
    try:
        seeds = [int(x) for x in a.seeds.split(",")]
    except ValueError:
        bad(f"--seeds must be comma-separated whole numbers; got '{a.seeds}'")
    for name, least in (("demos", 0), ("iterations", 0), ("sft_steps", 1), ("max_steps", 1), ("num_envs", 1),
                        ("eval_episodes", 1), ("threads", 1), ("seed_base", 0)):
        if getattr(a, name) < least:
            bad(f"--{name.replace('_', '-')} must be >= {least}; got {getattr(a, name)}")
    if a.iterations == 0 and a.demos == 0:
        bad("--iterations 0 keeps the SFT policy as the teacher, so it needs --demos N > 0")
    if a.from_cache:
        for task in tasks:
            for seed in seeds:
                run = teacher_dir(a.from_cache, "metaworld", task, seed, a.demos, a.iterations, a.max_steps,
                                  a.sft_steps)
                if not (run / "teacher.json").is_file():
                    bad(f"--from-cache: no finished teacher in {run}; build it with vlaforge train --algo distill "
                        "--distill.teachers-cache and the same --demos/--sft-steps/--iterations/--max-steps")
    return seeds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="mt10", help="comma-separated Meta-World tasks, or mt10")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--demos", type=int, default=10, help="SFT start on this many expert episodes (0: from scratch)")
    ap.add_argument("--iterations", type=int, default=64)
    ap.add_argument("--sft-steps", type=int, default=1000, help="SFT steps on the demos before PPO")
    ap.add_argument("--from-cache", default="", help="read the teachers built in this --distill.teachers-cache "
                                                     "instead of training them (give the run's --demos, --sft-steps "
                                                     "and --iterations: 50, 4000, 64 by default there)")
    ap.add_argument("--max-steps", type=int, default=150)
    ap.add_argument("--num-envs", type=int, default=16)
    ap.add_argument("--eval-episodes", type=int, default=50)
    ap.add_argument("--seed-base", type=int, default=10_000_000, help="first evaluation seed (another base keeps a "
                                                                      "study off the claim's seeds)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="", help="a label kept in each row (e.g. the code version)")
    ap.add_argument("--work", default="runs/teachers")
    ap.add_argument("--out", default="docs/bench/teachers_mt10.json")
    ap.add_argument("--table", action="store_true", help="print the Markdown table of --out's rows with --tag and exit")
    a = ap.parse_args(argv)
    if a.table:
        print(table(json.loads(Path(a.out).read_text()), a.tag))
        return
    tasks = MT10 if a.tasks == "mt10" else [t for t in a.tasks.split(",") if t]
    seeds = check_args(ap, a, tasks)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    data = json.loads(out.read_text()) if out.exists() else {"rows": []}
    command = "python benchmarks/teachers.py " + " ".join(
        f"--{k.replace('_', '-')} {shlex.quote(str(v))}" for k, v in vars(a).items()
        if k != "table" and v != "" and v != ap.get_default(k))
    for task in tasks:
        for seed in seeds:
            if a.from_cache:  # built by --distill.teachers-cache; this script's evaluations go under --work
                cached = teacher_dir(a.from_cache, "metaworld", task, seed, a.demos, a.iterations, a.max_steps,
                                     a.sft_steps)
                cpu = json.loads((cached / "teacher.json").read_text())["cpu_s"]
                run = Path(a.work) / "from-cache" / task / cached.name
                run.mkdir(parents=True, exist_ok=True)
                for part in ("final", "sft", "metrics.jsonl"):
                    link = run / part
                    if link.is_symlink():
                        link.unlink()
                    if (cached / part).exists():
                        link.symlink_to((cached / part).resolve())
            else:
                run = Path(a.work) / f"{task}_s{seed}_d{a.demos}{'_' + a.tag if a.tag else ''}"
                (run / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run appends: keep only this run's curve
                c0 = cpu_seconds()
                privileged_teacher("metaworld", task, run, a.iterations, seed, a.threads, a.max_steps, a.num_envs,
                                   demos=a.demos, sft_steps=a.sft_steps)
                cpu = cpu_seconds() - c0
            cv = curve(run)
            row = {"task": task, "seed": seed, "demos": a.demos, "sft_steps": a.sft_steps if a.demos else 0,
                   "iterations": a.iterations, "seed_base": a.seed_base, "tag": a.tag,
                   "sft": None, "success": held_out(run / "final", task, a, run / "eval.json"), "cpu_s": round(cpu, 1),
                   "env_steps": cv[-1]["env_steps"] if cv else 0, "curve": cv}
            if a.demos:  # with --iterations 0 the final policy is the SFT one
                row["sft"] = held_out(run / "sft", task, a, run / "eval_sft.json") if a.iterations else row["success"]
            row["command"] = command
            key = row_key(row)
            data["rows"] = [r for r in data["rows"] if row_key(r) != key]
            data["rows"].append(row)
            data["meta"] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {a.threads} torch threads",
                            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                            "command": command + " (the last; each row keeps its own)",
                            "metric": "success_once on 50 fixed evaluation seeds from --seed-base (10,000,000 unless "
                                      "a row's command says otherwise); privileged state, no rendering, episodes of "
                                      "<= max_steps"}
            atomic_write_text(out, json.dumps(data, indent=1))
            print(json.dumps({k: row[k] for k in ("task", "seed", "sft", "success", "cpu_s", "env_steps")}),
                  f"min rollout success after it 4: {min((c['success'] for c in cv[3:]), default=None)}", flush=True)


if __name__ == "__main__":
    main()
