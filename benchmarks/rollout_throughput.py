"""Rollout throughput: env steps/s of the raw simulator (random actions, same render schedule: one
render per action chunk) against the tiny VLA in the loop through ``collect()``, plain and pipelined.

    python benchmarks/rollout_throughput.py --suites pointreach,metaworld,kitchen --seconds 5 --runs 3 \
        --out docs/bench/rollout_throughput.json
    python benchmarks/rollout_throughput.py --suites libero,maniskill --out docs/bench/rollout_throughput_libero_maniskill.json
    python benchmarks/rollout_throughput.py --suites metaworld --env-kwargs privileged=1,render=0 --backbone state \
        --out docs/bench/rollout_throughput_metaworld_norender.json

Each run measures three modes back to back for ``--seconds`` each (their order rotates from run to
run, so that a drifting machine load does not favour one): ``raw``; ``plain`` — ``collect(policy,
venv, ..., pipeline=False)``, the policy acting while every worker waits; ``pipelined`` — the policy
acting for one group of envs while the other groups simulate (``collect(..., pipeline=True)``,
rollout/collect.py). ``collect()`` is what the training loop calls, with ``keep_obs=True`` as there;
it runs whole batches (reset + one episode per env), so a mode may run a little past ``--seconds``;
raw resets when all episodes have ended, as a batch does. Kitchen episodes are shortened to 64 steps
(``SUITES``) so that a batch fits a short run.

Writes JSON (``--out``): per suite two rows, ``"pipelined": false`` and ``true``, each with the
creation/reset times, ``raw`` and ``policy`` (the median run's figures), ``ratio`` (the median over
runs of policy steps/s over that run's raw steps/s), ``runs`` (every run, with the 1-minute load
average), ``load_avg`` (``os.getloadavg()`` after the row's runs) and CPU milliseconds per env step
spent by the env workers and by this (driver) process, from which ``cpu_bound_ceiling`` follows: the
best ratio a quiet machine allows, once every core or the driver's threads are busy (``cpu_bound_ceiling``'s
docstring); CPU time per step hardly depends on the machine's load, steps/s do. LIBERO and ManiSkill use fewer envs than ``--num-envs``: a
LIBERO simulator takes ~10-15 s and ~0.5 GB to build. Prints the thread plan it used and a table.

``--policy-only`` measures the tiny VLA alone, the driver's share of collection, for the first suite's
observation shapes (Meta-World: one 64 px frame, 4-dim state; uniform random frames, the suite's instructions)
and a chunk of ``--chunk``: the CPU time of this thread (``time.thread_time``, user + system, page faults
included) per ``act`` call for ``--batch`` envs (the envs of one group: 8 envs over 2 workers = 4), divided by
batch × chunk = CPU ms per env step (``collect`` acts once per chunk). One row per optimisation of
``policies/tiny/fast.py``, applied cumulatively (``ActPath``), each checked against the reference (max |Δ| of
actions, log-probs and values for one seed). Rows are interleaved over ``--rounds`` rounds of ``--acts`` calls
(median and min reported, and the median over rounds of each row's time ÷ the baseline's in the same round) so
that a machine load that drifts does not favour one; thread CPU time still grows
when other processes share the cores (caches, frequency), so quote it with the load average it records.
``--compile`` adds a ``torch.compile`` row (minutes to compile on 2 cores). The result is merged into ``--out``
under ``policy_cpu`` (other keys kept); a full run keeps an existing ``policy_cpu`` too.

    python benchmarks/rollout_throughput.py --policy-only --suites metaworld --out docs/bench/rollout_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from vlaforge.envs import env_factory, make_vec_env
from vlaforge.envs.vector import SubprocVecEnv, available_cores, thread_plan
from vlaforge.policies import build_policy
from vlaforge.policies.tiny.fast import ActPath
from vlaforge.rollout.collect import collect
from vlaforge.types import Observation

SUITES = {
    "pointreach": {"tasks": None},
    "metaworld": {"tasks": "reach-v3,button-press-topdown-v3"},
    "kitchen": {"tasks": None, "env_kwargs": {"max_steps": 64}},
    # LIBERO: one simulator per env (~10-15 s to build each), two cameras; ManiSkill: CPU PhysX + lavapipe
    "libero": {"tasks": "object-0", "num_envs": 2},
    "maniskill": {"tasks": "pick-cube,stack-cube", "num_envs": 4},
}
MODES = ("raw", "plain", "pipelined")


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes (reads Linux's /proc: the benchmark needs Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def measure(mode: str, venv, policy, spec, num_envs: int, chunk: int, seconds: float, rng, pids) -> dict:
    """Env steps/s of one mode for about ``seconds`` (whole batches for the policy modes)."""
    ids = np.arange(num_envs) % len(spec.tasks)
    steps, sim_t, pol_t, ep = 0, 0.0, 0.0, 0
    w0, d0, t_start = _cpu_s(pids), time.process_time(), time.perf_counter()
    while time.perf_counter() - t_start < seconds:
        seeds = np.arange(num_envs) + 1000 * ep
        ep += 1
        if mode == "raw":
            venv.reset(ids, seeds)
            while time.perf_counter() - t_start < seconds:
                t0 = time.perf_counter()
                a = rng.uniform(-1, 1, (num_envs, chunk, spec.action_dim)).astype(np.float32)
                t1 = time.perf_counter()
                st = venv.step(a)
                sim_t += time.perf_counter() - t1
                pol_t += t1 - t0
                steps += int(st.steps.sum())
                if st.done.all():
                    break
        else:
            _, stats = collect(policy, venv, ids, seeds, pipeline=mode == "pipelined")
            steps += stats.env_steps
            sim_t += stats.sim_time
            pol_t += stats.policy_time
    wall = time.perf_counter() - t_start
    n = max(steps, 1)
    return {"env_steps": steps, "wall_s": wall, "steps_per_s": steps / wall, "policy_ms_per_env_step": 1000 * pol_t / n,
            "sim_ms_per_env_step": 1000 * sim_t / n, "cpu_ms_per_env_step": {
                "workers": 1000 * (_cpu_s(pids) - w0) / n, "driver": 1000 * (time.process_time() - d0) / n}}


def cpu_bound_ceiling(cpu_raw: dict, cpu_pol: dict, workers: int, cores: int, driver_threads: int) -> float:
    """The ratio a quiet machine allows at best, from CPU ms per env step (nearly independent of load).

    Raw speed: each of min(W, cores) workers busy on its own core, ``min(W, cores) / w_raw``. With the
    policy: at most ``cores / (w + d)`` (every core busy) and ``threads / d`` (the driver busy); W = 0
    (envs in the driver): ``min(threads, cores) / (w + d)``.
    """
    w_raw, w, d = cpu_raw["workers"], cpu_pol["workers"], cpu_pol["driver"]
    if workers == 0:
        return min(1.0, (cpu_raw["driver"]) / (w + d))
    raw = min(workers, cores) / max(w_raw, 1e-9)
    return min(1.0, min(cores / max(w + d, 1e-9), driver_threads / max(d, 1e-9)) / raw)


def run(suite: str, tasks, num_envs: int, workers: int, chunk: int, seconds: float, head: str, runs: int,
        groups_per_worker: int = 1, backbone: str = "vision", env_kw: dict | None = None,
        reference_act: bool = False) -> list[dict]:
    env_kw = {**SUITES[suite].get("env_kwargs", {}), **(env_kw or {})}
    t0 = time.perf_counter()
    if workers > 0:
        venv = SubprocVecEnv(env_factory(suite, tasks, **env_kw), num_envs, workers=workers,
                             groups_per_worker=groups_per_worker, threads=thread_plan(workers))
        pids = [p.pid for p in venv.procs]
    else:
        venv, pids = make_vec_env(suite, num_envs, tasks=tasks, **env_kw), []
    spec = venv.spec
    create_s = time.perf_counter() - t0
    ids = np.arange(num_envs) % len(spec.tasks)
    t0 = time.perf_counter()
    venv.reset(ids, np.arange(num_envs))  # the first reset may build simulators / compile shaders
    first_reset_s = time.perf_counter() - t0
    reset_s = []
    for k in range(3):  # later resets: new seeds (initial states), same tasks
        t0 = time.perf_counter()
        venv.reset(ids, np.arange(num_envs) + 100 * (k + 1))
        reset_s.append(time.perf_counter() - t0)
    policy = build_policy(head=head, backbone=backbone, state_dim=spec.state_dim, action_dim=spec.action_dim, chunk_size=chunk,
                          views=spec.image_shape[0], image_size=spec.image_shape[1])
    if reference_act:  # the tiny VLA's act as before policies/tiny/fast.py
        policy.act_path = ActPath.reference()
    rng = np.random.default_rng(0)
    res: dict[str, list[dict]] = {m: [] for m in MODES}
    loads = []
    for r in range(runs):
        for mode in MODES[r % 3:] + MODES[:r % 3]:  # rotate the order from run to run
            res[mode].append(measure(mode, venv, policy, spec, num_envs, chunk, seconds, rng, pids))
        loads.append(os.getloadavg()[0])
    venv.close()
    base = {"suite": suite, "act_path": "reference" if reference_act else "fast", "num_envs": num_envs, "workers": workers, "groups_per_worker": groups_per_worker,
            "chunk": chunk, "head": head, "backbone": backbone, "env_kwargs": env_kw, "image": list(spec.image_shape),
            "renderer": spec.renderer, "create_s": create_s, "first_reset_s": first_reset_s,
            "reset_s": float(np.median(reset_s))}
    rows = []
    for mode in ("plain", "pipelined"):
        ratios = [p["steps_per_s"] / w["steps_per_s"] for p, w in zip(res[mode], res["raw"])]
        mid = int(np.argsort(ratios)[len(ratios) // 2])  # the median run (runs is odd)
        raw, pol = res["raw"][mid], res[mode][mid]
        ceiling = cpu_bound_ceiling(raw["cpu_ms_per_env_step"], pol["cpu_ms_per_env_step"], workers,
                                    available_cores(), torch.get_num_threads())
        rows.append({**base, "pipelined": mode == "pipelined", "raw": raw, "policy": pol, "ratio": float(np.median(ratios)),
                     "cpu_bound_ceiling": ceiling, "load_avg": list(os.getloadavg()),
                     "runs": [{"raw_steps_per_s": w["steps_per_s"], "policy_steps_per_s": p["steps_per_s"],
                               "ratio": x, "load_avg_1min": lo}
                              for w, p, x, lo in zip(res["raw"], res[mode], ratios, loads)]})
    return rows


POLICY_ROWS = [  # cumulative: each row adds one optimisation to the row above (policies/tiny/fast.py)
    ("baseline (no_grad, nn modules)", ActPath.reference()),
    ("+ torch.inference_mode", ActPath(layout=False, cache_instructions=False, fused=False, jit_after=0)),
    ("+ uint8 frames to a channels-last conv input once", ActPath(cache_instructions=False, fused=False, jit_after=0)),
    ("+ instruction constants cached", ActPath(fused=False, jit_after=0)),
    ("+ fused: conv1 folded, fusion by bmm, no masked-softmax path", ActPath(jit_after=0)),
    ("+ torch.jit.trace of the fused features (the default after 32 acts)", ActPath(jit_after=1)),
]


def _act_stats(policy, obs, rounds: int, acts: int, rows: list, warmup: int = 10) -> dict[str, dict]:
    """Thread CPU ms per act of each (name, ActPath) row, interleaved over rounds; page faults per act."""
    import resource

    times: dict[str, list[float]] = {name: [] for name, _ in rows}
    faults: dict[str, int] = {name: 0 for name, _ in rows}
    for _, path in rows:  # warm up every path first (caches, compilation, the allocator's thresholds)
        policy.act_path = path
        for _ in range(warmup):
            policy.act(obs)
    for _ in range(rounds):
        for name, path in rows:
            policy.act_path = path
            for _ in range(2):  # warm: caches filled, allocator settled
                policy.act(obs)
            f0, t0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt, time.thread_time()
            for _ in range(acts):
                policy.act(obs)
            times[name].append(1000 * (time.thread_time() - t0) / acts)
            faults[name] += resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0
    base = np.array(times[rows[0][0]])
    return {name: {"median_ms": float(np.median(v)), "min_ms": float(np.min(v)), "faults": faults[name] / (rounds * acts),
                   "vs_first": float(np.median(np.array(v) / base))}  # same-round ratios: drifting load cancels
            for name, v in times.items()}


def policy_only(suite: str, tasks, batches: list[int], chunk: int, head: str, rounds: int, acts: int,
                with_compile: bool, warmup: int = 10) -> dict:
    """The tiny VLA's CPU cost per env step, one row per cumulative optimisation (module docstring)."""
    from vlaforge.envs import suite_spec

    spec = suite_spec(suite, tasks)
    torch.manual_seed(0)
    policy = build_policy(head=head, state_dim=spec.state_dim, action_dim=spec.action_dim, chunk_size=chunk,
                          views=spec.image_shape[0], image_size=spec.image_shape[1]).eval()
    rows = list(POLICY_ROWS)
    if with_compile:
        rows.append(("fused + torch.compile instead of the trace", ActPath(jit_after=0, compile=True)))
    out = {"suite": suite, "tasks": [t.name for t in spec.tasks], "head": head, "chunk": chunk,
           "image": list(spec.image_shape), "state_dim": spec.state_dim, "rounds": rounds, "acts_per_round": acts,
           "load_avg_before": list(os.getloadavg()), "batches": []}
    for n in batches:
        rng = np.random.default_rng(n)
        obs = Observation(images=rng.integers(0, 256, (n, *spec.image_shape), dtype=np.uint8),
                          state=rng.standard_normal((n, spec.state_dim)).astype(np.float32),
                          instructions=[spec.tasks[i % len(spec.tasks)].instruction for i in range(n)],
                          task_ids=np.arange(n) % len(spec.tasks))
        policy.act_path = ActPath.reference()
        torch.manual_seed(1)
        ref = policy.act(obs)
        err = {}
        for name, path in rows:
            policy.act_path = path
            torch.manual_seed(1)
            o = policy.act(obs)
            err[name] = max(float((o.actions - ref.actions).abs().max()), float((o.log_prob - ref.log_prob).abs().max()),
                            float((o.value - ref.value).abs().max()))
        stats = _act_stats(policy, obs, rounds, acts, rows, warmup)
        out["batches"].append({"batch": n, "rows": [
            {"step": name, "ms_per_act": stats[name]["median_ms"], "ms_per_act_min": stats[name]["min_ms"],
             "ms_per_env_step": stats[name]["median_ms"] / (n * chunk), "page_faults_per_act": stats[name]["faults"],
             "time_vs_baseline": stats[name]["vs_first"],
             "max_abs_diff_vs_baseline": err[name]} for name, _ in rows]})
    out["load_avg_after"] = list(os.getloadavg())
    return out


def keep_freed_memory() -> None:
    """glibc only: allocate blocks up to 32 MiB from the heap and keep up to 256 MiB of freed heap. By default a
    tensor of a few hundred KiB is mmap'ed and its pages returned on free, so every act touches fresh pages (page
    faults, ``page_faults_per_act``); a measured option, not a default of vlaforge."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 256 << 20)):
        raise RuntimeError("mallopt refused the thresholds")


def _write_merged(path: str, update: dict) -> None:
    """Write ``update`` over the JSON at ``path``, keeping its other keys (atomic)."""
    from vlaforge.fsutil import atomic_write_text

    old = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    atomic_write_text(path, json.dumps({**old, **update}, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default="pointreach,metaworld,kitchen")
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="env subprocesses (0: in process, nothing to pipeline)")
    ap.add_argument("--groups-per-worker", type=int, default=1, help="pipelining groups per worker")
    ap.add_argument("--chunk", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0, help="per mode and run")
    ap.add_argument("--runs", type=int, default=3, help="runs per suite (odd: the median run is reported)")
    ap.add_argument("--head", default="gaussian")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for the policy (0: the thread plan's)")
    ap.add_argument("--backbone", default="vision", help="tiny policy backbone (state: ignores the images)")
    ap.add_argument("--env-kwargs", default="", help="name=value pairs for the suites' envs, e.g. privileged=1,render=0")
    ap.add_argument("--out", default=None)
    ap.add_argument("--policy-only", action="store_true", help="measure the tiny VLA's CPU ms per env step alone")
    ap.add_argument("--batch", default="4,8", help="--policy-only: envs per act call, comma-separated")
    ap.add_argument("--rounds", type=int, default=15, help="--policy-only: interleaved rounds")
    ap.add_argument("--acts", type=int, default=20, help="--policy-only: act calls per row and round")
    ap.add_argument("--compile", action="store_true", help="--policy-only: add a torch.compile row")
    ap.add_argument("--reference-act", action="store_true",
                    help="the tiny VLA acts as before policies/tiny/fast.py (ActPath.reference()), for comparison")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc mallopt: serve large tensors from the heap and keep freed memory (no page faults per call)")
    a = ap.parse_args()
    suites = [s for s in a.suites.split(",") if s]
    bad = [s for s in suites if s not in SUITES]
    if bad or a.runs < 1 or a.runs % 2 == 0 or a.seconds <= 0 or a.workers < 0 or a.groups_per_worker < 1:
        ap.error(f"unknown suites {bad} (choose from {', '.join(SUITES)})" if bad else
                 "--runs must be odd and >= 1, --seconds > 0, --workers >= 0, --groups-per-worker >= 1")
    try:
        env_kw = {k: float(v) for k, v in (p.split("=") for p in a.env_kwargs.split(",") if p)}
    except ValueError:
        ap.error("--env-kwargs takes name=value pairs with numeric values, e.g. privileged=1,render=0")
    if a.keep_freed_memory:
        keep_freed_memory()
    if a.policy_only:
        try:
            batches = [int(b) for b in a.batch.split(",") if b]
        except ValueError:
            batches = []
        if not batches or min(batches) < 1 or a.rounds < 1 or a.acts < 1 or a.chunk < 1:
            ap.error("--batch takes positive integers (e.g. 4,8); --rounds, --acts and --chunk must be >= 1")
        torch.set_num_threads(a.threads or 1)
        res = policy_only(suites[0], SUITES[suites[0]]["tasks"], batches, a.chunk, a.head, a.rounds, a.acts, a.compile)
        res.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), torch_threads=torch.get_num_threads(),
                   keep_freed_memory=a.keep_freed_memory,
                   machine=f"{platform.machine()}, {os.cpu_count()} cores", args=vars(a))
        for b in res["batches"]:
            for r in b["rows"]:
                print(f"N={b['batch']} {r['step']:<62} {r['ms_per_act']:6.2f} ms/act (min {r['ms_per_act_min']:5.2f}) "
                      f"{r['ms_per_env_step']:.3f} ms/env step  ×{r['time_vs_baseline']:.2f} of baseline  "
                      f"faults/act {r['page_faults_per_act']:4.0f}  "
                      f"max|diff| {r['max_abs_diff_vs_baseline']:.1e}", flush=True)
        print(f"load average before {res['load_avg_before'][0]:.1f}, after {res['load_avg_after'][0]:.1f}")
        if a.out:
            _write_merged(a.out, {"policy_cpu": res})
        return
    plan = thread_plan(a.workers)
    torch.set_num_threads(a.threads or plan.driver)
    threads = {"plan": plan.describe(), "driver_torch_threads": torch.get_num_threads(), "worker_env": plan.worker_env()}
    print(f"threads: {plan.describe()}; driver torch threads used: {torch.get_num_threads()}", flush=True)
    rows = []
    for s in suites:
        for r in run(s, SUITES[s]["tasks"], SUITES[s].get("num_envs", a.num_envs), a.workers, a.chunk, a.seconds, a.head,
                     a.runs, a.groups_per_worker, a.backbone, env_kw, a.reference_act):
            rows.append(r)
            print(f"{s:<11} {'pipelined' if r['pipelined'] else 'plain':<9} raw {r['raw']['steps_per_s']:7.0f} | policy "
                  f"{r['policy']['steps_per_s']:7.0f} steps/s | ratio {r['ratio']:.2f} (runs "
                  f"{', '.join(format(x['ratio'], '.2f') for x in r['runs'])}; CPU-bound ceiling {r['cpu_bound_ceiling']:.2f}) | "
                  f"policy {r['policy']['policy_ms_per_env_step']:.3f} ms/step | load {r['load_avg'][0]:.1f}", flush=True)
    result = {"benchmark": "rollout_throughput", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores",
              "threads": threads, "args": vars(a), "rows": rows}
    if a.out:  # an earlier --policy-only section (policy_cpu) stays
        _write_merged(a.out, result)


if __name__ == "__main__":
    main()
