"""Build docs/benchmarks.md's tables from the JSON files the benchmark scripts wrote.

    python benchmarks/make_tables.py            # reads docs/bench/*.json, prints Markdown tables
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "docs" / "bench"


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def ci(d: dict) -> str:
    return f"{d['successes']}/{d['episodes']} = {pct(d['rate'])} [{pct(d['ci95'][0])}, {pct(d['ci95'][1])}]"


def throughput(d: dict) -> str:
    lines = [f"Machine: {d['machine']}; date {d['date']}; args {d['args']}", "",
             "| suite | envs × workers | chunk | raw steps/s | with policy steps/s | ratio | policy ms/step | sim ms/step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["rows"]:
        suite = r["suite"] + (" (pipelined)" if r.get("pipelined") else "")
        lines.append(f"| {suite} | {r['num_envs']} × {r['workers']} | {r['chunk']} | {r['raw']['steps_per_s']:.0f} | "
                     f"{r['policy']['steps_per_s']:.0f} | {r['ratio']:.2f} | {r['policy']['policy_ms_per_env_step']:.3f} | "
                     f"{r['policy']['sim_ms_per_env_step']:.3f} |")
    if "policy_cpu" in d:  # --policy-only: the tiny VLA's CPU time per env step, one row per optimisation
        c = d["policy_cpu"]
        lines += ["", f"Policy only ({c['suite']}, head {c['head']}, chunk {c['chunk']}; {c['date']}; load average "
                      f"{c['load_avg_before'][0]:.1f} → {c['load_avg_after'][0]:.1f}): thread CPU ms, median of "
                      f"{c['rounds']} rounds", "",
                  "| envs per act | step | ms per act | ms per env step | × baseline (same rounds) | max abs diff vs baseline |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for b in c["batches"]:
            lines += [f"| {b['batch']} | {r['step']} | {r['ms_per_act']:.2f} | {r['ms_per_env_step']:.3f} | "
                      f"{r['time_vs_baseline']:.2f} | {r['max_abs_diff_vs_baseline']:.1e} |" for r in b["rows"]]
    return "\n".join(lines)


def sft(d: dict) -> str:
    lines = [f"{d['suite']}, head {d['head']}; machine {d['machine']}; date {d['date']}; "
             f"collect {d['collect_s']:.0f}s, SFT {d['sft_s']:.0f}s, eval {d['eval_s']:.0f}s", ""]
    for split in ("train", "heldout"):
        if split in d:
            lines.append(f"- {split} tasks: {ci(d[split])}")
    lines += ["", "| task | split | success |", "| --- | --- | --- |"]
    for r in d["results"]:
        lines.append(f"| {r['task']} | {r['split']} | {r['successes']}/{r['episodes']} |")
    return "\n".join(lines)


def rl(d: dict) -> str:
    built = f"; SFT start built in {d['sft_time_s']:.0f}s" if "sft_time_s" in d else ""
    lines = [f"Machine: {d['machine']}; date {d['date']}{built}; args {d['args']}", "",
             "| algo | split | SFT start | after RL | env steps | wall |", "| --- | --- | --- | --- | --- | --- |"]
    for r in d["rows"]:
        for split in ("train", "heldout"):
            if split in r["before"]:
                lines.append(f"| {r['algo']} | {split} | {ci(r['before'][split])} | {ci(r['after'][split])} | "
                             f"{r['env_steps']} | {r['wall_s']:.0f}s |")
    return "\n".join(lines)


def f3(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def rprm(d: dict) -> str:
    tr, te = d["train"], d["test"]
    lines = [f"Machine: {d['machine']}; date {d['date']}; collect {d['collect_s']:.0f}s, train {d['train_s']:.0f}s; "
             f"train {tr['episodes']} episodes ({tr['successes']} successes, {tr['frames']} frames), held-out "
             f"{te['episodes']} ({te['successes']} successes)", "",
             "| task | RPRM spearman (successes) | RPRM AUC final | RPRM AUC max | GRAPE R_ext AUC (success hidden) |",
             "| --- | --- | --- | --- | --- |"]
    for k, v in d["per_task"].items():
        g = d["grape_rule_stages"][k]
        lines.append(f"| {k} | {f3(v['spearman'])} | {f3(v['auc'])} | {f3(v['auc_max'])} | {f3(g['r_ext_auc'])} |")
    lines.append(f"| all | {f3(te['spearman'])} | {f3(te['auc'])} | {f3(te['auc_max'])} | |")
    if "auc_time_baseline" in te:
        lines += ["", f"Baseline \"progress = elapsed time\": AUC {f3(te['auc_time_baseline'])}."]
    return "\n".join(lines)


def scaling(d: dict) -> str:
    from scaling import table  # benchmarks/scaling.py (this script's folder is on sys.path)

    return table(d)


def recipes(d: dict) -> str:
    lines = [f"Machine: {d['machine']}; date {d['date']}; args {d['args']}", "",
             "| run | SFT start (checkpoint) | start success | after | env steps | wall | rejected groups | "
             "env steps to rollout success ≥ level |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in d["rows"]:
        lvl = next((v for k, v in r.items() if k.startswith("env_steps_to_")), None)
        lines.append(f"| {r['run']} | {r['start']} | {ci(r['before']['train'])} | {ci(r['after']['train'])} | "
                     f"{r['env_steps']} | {r['wall_s']:.0f}s | {100 * r['rejected_group_share']:.0f}% | "
                     f"{'not reached' if lvl is None else lvl} |")
    for r in d["rows"]:
        if "stages" in r:
            groups = [g for g in ("seen", "new", "heldout") if r["groups"].get(g)]
            lines += ["", f"iRe-VLA task groups ({', '.join(f'{g}: ' + ', '.join(r['groups'][g]) for g in groups)}):", "",
                      "| stage | " + " | ".join(groups) + " |", "| --- |" + " --- |" * len(groups)]
            for st in r["stages"]:
                lines.append(f"| {st['stage']} | " + " | ".join(ci(st[g]) if g in st else "–" for g in groups) + " |")
    return "\n".join(lines)


def generalist_base(d: dict) -> str:
    """One tiny VLA per config SFT'd on every task's demos (benchmarks/generalist.py base): per-task success, one
    column per config, then the config's mean of per-task success and its CPU-minutes."""
    cfgs = d["configs"]
    tasks = list(dict.fromkeys(r["task"] for r in d["rows"]))
    cell = {(r["config"], r["task"]): r for r in d["rows"]}
    head = [f"N = {c['demos_per_task']}, {c['sft_steps']} steps" + (f", width {c['dim']}" if c["dim"] != 64 else "")
            + (f", cosine lr {c['sft_lr']:g} → {c['sft_min_lr']:g}" if c.get("sft_schedule") == "cosine" else "")
            for c in cfgs]
    lines = [f"Machine: {d['meta']['machine']}; date {d['meta']['date']}; {d['meta']['metric']}", "",
             "| task | " + " | ".join(head) + " |", "| --- |" + " --- |" * len(cfgs)]
    for t in tasks:
        cells = []
        for c in cfgs:
            r = cell.get((c["config"], t))
            cells.append("–" if r is None else f"{r['successes']}/{r['episodes']} [{pct(r['ci95'][0])}, {pct(r['ci95'][1])}]")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines.append("| **mean of per-task success** | " + " | ".join(f"**{pct(c['mean_success'])}**" for c in cfgs) + " |")
    lines.append("| demos kept (expert successes / episodes) | "
                 + " | ".join(f"{c['demo_successes']}/{c['demo_episodes']} ({c['frames']:,} frames recorded)" for c in cfgs) + " |")
    lines.append("| CPU-min collect / SFT / eval (total) | " + " | ".join(
        f"{c['collect_cpu_s'] / 60:.1f} / {c['sft_cpu_s'] / 60:.1f} / {c['eval_cpu_s'] / 60:.1f} "
        f"({(c['collect_cpu_s'] + c['sft_cpu_s'] + c['eval_cpu_s']) / 60:.1f})" for c in cfgs) + " |")
    lines.append("| policy sha256 (prefix) | " + " | ".join(f"`{c['policy_sha']}`" for c in cfgs) + " |")
    return "\n".join(lines)


KINDS = {"recipes": recipes, "scaling": scaling, "rollout_throughput": throughput, "sft_": sft, "rl_": rl, "rprm": rprm,
         "generalist_base": generalist_base}


def main() -> None:
    for f in sorted(BENCH.glob("*.json")):
        d = json.loads(f.read_text())
        for prefix, fn in KINDS.items():
            if f.stem.startswith(prefix):
                print(f"### {f.stem}  (`docs/bench/{f.name}`)\n")
                print(fn(d))
                print()
                break
        else:
            print(f"(no table maker for {f.name})", file=sys.stderr)


if __name__ == "__main__":
    main()
