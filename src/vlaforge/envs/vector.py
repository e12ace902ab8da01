"""Batching single envs: in process (``SyncVecEnv``) or in subprocess workers (``SubprocVecEnv``).

Both take a zero-argument env constructor and N, and expose the ``VecEnv`` interface:
``reset(task_ids, seeds)``, ``step(actions (N, C, A))``, ``expert_actions()``, ``close()``.
Grouped resets are just equal (task_id, seed) pairs: the initial state is a function of them.

``SubprocVecEnv`` spreads the N envs over W worker processes, one message per action chunk
(C physics steps and one render per env), so IPC is paid once per chunk, not per step. A
worker that dies (segfault, OOM kill) is restarted: its envs are rebuilt and reset to their
episode's (task, seed), and their episodes are marked ``valid=False`` and ``done`` so that
rollout code drops them instead of counting them.

For pipelined rollouts (``collect(..., pipeline=True)``) the envs also form ``groups``: one slice
of the batch per worker (``groups_per_worker`` > 1 splits each worker's envs further).
``step_async(g, actions)`` sends group g's chunk and returns at once; ``step_wait(g)`` returns its
``VecStep`` (rows of that group only), so the policy can act for one group while the others
simulate. Several groups of one worker may be in flight; the worker answers them in order.

Both address their envs through ``EnvSlots``: at each reset, a batch position may run on another env of its group
(``affinity_order``) when the suite keeps a bounded cache of task simulators (Meta-World's ``cache``), so that an
episode lands on an env that still holds its task's simulator instead of building one. Episodes depend on (task,
seed) and actions only, so the results are the same; without a bounded cache every env runs its own position.

``thread_plan(workers)`` sizes the threads of a rollout so that W workers and the policy process
fit the machine's cores; each worker applies its share (OpenMP/BLAS/torch, llvmpipe render threads)
before building its envs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vlaforge.envs.base import ChunkResult, EnvError, EnvSpec, TaskEnv, VecStep, validate_actions
from vlaforge.types import Observation


def _stack(spec: EnvSpec, task_ids: np.ndarray, images: list, states: list, sims: list | None = None) -> Observation:
    has_sim = bool(spec.sim_state_names) and sims is not None and all(x is not None for x in sims)
    return Observation(
        images=np.stack(images).astype(np.uint8, copy=False),
        state=np.stack(states).astype(np.float32, copy=False),
        instructions=[spec.tasks[int(t)].instruction for t in task_ids],
        task_ids=np.asarray(task_ids, dtype=np.int64).copy(),
        sim_state=np.stack(sims).astype(np.float32, copy=False) if has_sim else None,
    )


def _sim_state(env) -> np.ndarray | None:
    """The env's privileged state (P,) if it has that channel, else None."""
    fn = getattr(env, "sim_state", None)
    return None if fn is None or not env.spec.sim_state_names else np.asarray(fn(), np.float32)


def _reset_one(env, task_id: int, seed: int) -> tuple:
    image, state = env.reset(task_id, seed)
    return image, state, _sim_state(env)


def _step_one(env, actions: np.ndarray) -> ChunkResult:
    res = env.step_chunk(actions)
    if res.sim_state is None:
        res.sim_state = _sim_state(env)
    return res


def affinity_order(names: Sequence[str], held: Sequence[frozenset[str] | None],
                   bounds: Sequence[tuple[int, int]]) -> list[int]:
    """Which env runs each batch position: position i -> env ``order[i]``, a permutation inside every ``(lo, hi)``
    bound (a group of envs stepped together).

    ``names[i]``: position i's task; ``held[j]``: the tasks env j holds a simulator for (``TaskEnv.cached_tasks``;
    None: it keeps every task's). Positions are taken in order; each gets the lowest free env of its bound that
    holds its task, and the positions left get the envs left, in index order. Without a bounded cache (every
    ``held`` None) it is the identity: the envs run the positions they always did. Greedy, not a maximum matching:
    in a simulation of MT50 batches a matching kept 0.5–5 points more episodes on a holding env.
    """
    order = list(range(len(names)))
    if all(h is None for h in held):
        return order
    for lo, hi in bounds:
        free, todo = list(range(lo, hi)), []
        for i in range(lo, hi):
            j = next((j for j in free if held[j] is not None and names[i] in held[j]), None)
            if j is None:
                todo.append(i)
            else:
                order[i] = j
                free.remove(j)
        for i, j in zip(todo, free):
            order[i] = j
    return order


class EnvSlots:
    """Envs addressed by batch position (``SyncVecEnv``'s, and each ``SubprocVecEnv`` worker's).

    ``reset`` lets each position run on an env that still holds its task's simulator (``affinity_order``, inside
    each bound); ``step`` and ``expert`` then address positions. An episode is a function of its (task, seed) and
    actions, not of the env instance that runs it, so the results are the same whichever env runs a position;
    only the simulators built anew (with a bounded ``cache``) are fewer.
    """

    def __init__(self, envs: list, bounds: Sequence[tuple[int, int]] | None = None):
        self.envs = envs
        self.bounds = list(bounds) if bounds else [(0, len(envs))]
        self.order = list(range(len(envs)))
        self.affinity = True
        """False: every env runs its own position whatever it holds (``benchmarks/env_cache.py``'s ablation)"""

    def reset(self, pairs: Sequence[tuple[int, int]]) -> list[tuple]:
        tasks = self.envs[0].spec.tasks
        names = [tasks[int(t)].name if 0 <= int(t) < len(tasks) else "" for t, _ in pairs]
        held = [e.cached_tasks() for e in self.envs] if self.affinity else [None] * len(self.envs)
        self.order = affinity_order(names, held, self.bounds)
        return [_reset_one(self.envs[j], int(t), int(s)) for j, (t, s) in zip(self.order, pairs)]

    def step(self, actions: Sequence[np.ndarray], lo: int = 0) -> list[ChunkResult]:
        """Step positions ``lo, lo + 1, …`` with one action chunk each."""
        return [_step_one(self.envs[self.order[lo + i]], a) for i, a in enumerate(actions)]

    def expert(self) -> list[np.ndarray]:
        return [self.envs[j].expert_action() for j in self.order]

    def close(self) -> None:
        for e in self.envs:
            e.close()


def _check_reset_args(spec: EnvSpec, n: int, task_ids, seeds) -> tuple[np.ndarray, np.ndarray]:
    task_ids = np.broadcast_to(np.asarray(task_ids, dtype=np.int64), (n,)).copy()
    seeds = np.broadcast_to(np.asarray(seeds, dtype=np.int64), (n,)).copy()
    if task_ids.min() < 0 or task_ids.max() >= len(spec.tasks):
        raise EnvError(f"task ids must be in [0, {len(spec.tasks)}); got {task_ids.tolist()}")
    return task_ids, seeds


class SyncVecEnv:
    """N envs stepped one after another in this process (no IPC; best for cheap suites)."""

    device = None  # observations are numpy on the host

    def __init__(self, env_fn: Callable[[], TaskEnv], num_envs: int):
        self.envs = [env_fn() for _ in range(num_envs)]
        self.slots = EnvSlots(self.envs)
        self.spec: EnvSpec = self.envs[0].spec
        self.num_envs = num_envs
        self.groups = [slice(0, num_envs)]  # one group: nothing to overlap in process
        self._task_ids = np.zeros(num_envs, np.int64)

    def reset(self, task_ids, seeds) -> Observation:
        self._task_ids, seeds = _check_reset_args(self.spec, self.num_envs, task_ids, seeds)
        out = self.slots.reset(list(zip(self._task_ids, seeds)))
        return _stack(self.spec, self._task_ids, [o[0] for o in out], [o[1] for o in out], [o[2] for o in out])

    def step(self, actions: np.ndarray) -> VecStep:
        a = validate_actions(actions, self.num_envs, self.spec.action_dim)
        return _vec_step(self.spec, self._task_ids, self.slots.step(a), np.ones(self.num_envs, bool))

    def expert_actions(self) -> np.ndarray:
        return np.stack(self.slots.expert()).astype(np.float32)

    def close(self) -> None:
        self.slots.close()


def _vec_step(spec, task_ids, results: Sequence[ChunkResult], valid: np.ndarray) -> VecStep:
    return VecStep(
        obs=_stack(spec, task_ids, [r.image for r in results], [r.state for r in results],
                   [r.sim_state for r in results]),
        reward=np.array([r.reward for r in results], np.float32),
        success=np.array([r.success for r in results], bool),
        done=np.array([r.done for r in results], bool),
        truncated=np.array([r.truncated for r in results], bool),
        steps=np.array([r.steps for r in results], np.int64),
        valid=valid.copy(),
    )


@dataclass(frozen=True)
class ThreadPlan:
    """Threads per process for a rollout with W env workers, so that 2 cores are not oversubscribed."""

    cores: int
    """CPU cores this process may run on (``available_cores()``)"""
    workers: int
    """env worker processes (0: the envs step inside the driver)"""
    driver: int
    """torch intra-op threads for the policy in the driver: the cores the workers leave, at least 1"""
    worker: int
    """OpenMP / BLAS / torch threads per env worker (MuJoCo steps on one thread)"""
    render: int
    """llvmpipe rasteriser threads per worker (``LP_NUM_THREADS``; 0 rasterises on the calling thread)"""

    def worker_env(self) -> dict[str, str]:
        """Environment variables a worker sets before it builds its envs."""
        n = str(self.worker)
        return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n, "LP_NUM_THREADS": str(self.render)}

    def describe(self) -> str:
        return (f"{self.cores} cores, {self.workers} env workers: driver {self.driver} torch threads; per worker "
                f"{self.worker} OMP/BLAS/torch thread(s), LP_NUM_THREADS={self.render}")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_plan(workers: int, cores: int | None = None) -> ThreadPlan:
    """Default threads for a driver and ``workers`` env workers on ``cores`` cores (default: this process's).

    Every worker simulates on one core, so the policy gets the cores left over (at least one: with as
    many workers as cores, the policy shares a core with a worker, which is what pipelining overlaps).
    ``LP_NUM_THREADS`` in the environment overrides the render threads (default 1, measured best).
    """
    cores = cores or available_cores()
    render = int(os.environ.get("LP_NUM_THREADS", "1"))
    driver = max(1, cores - workers) if workers > 0 else cores
    return ThreadPlan(cores=cores, workers=workers, driver=driver, worker=1, render=render)


def _limit_threads(env: dict[str, str], torch_threads: int) -> None:
    """Apply a worker's thread limits: env vars for libraries that start later (llvmpipe, BLAS in a spawned
    process), and torch's pool directly when torch came in with the fork (its OpenMP pool is already built)."""
    os.environ.update(env)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(torch_threads)


def _worker(conn, env_fn, n_local: int, threads: ThreadPlan, bounds: list[tuple[int, int]] | None = None) -> None:
    """One env worker: ``n_local`` envs as ``EnvSlots`` whose positions move only inside ``bounds`` (its groups)."""
    _limit_threads(threads.worker_env(), threads.worker)
    try:
        slots = EnvSlots([env_fn() for _ in range(n_local)], bounds)
        conn.send(("ok", slots.envs[0].spec))
        while True:
            cmd, arg = conn.recv()
            if cmd == "reset":
                conn.send(("ok", slots.reset(arg)))
            elif cmd == "step":
                conn.send(("ok", slots.step(arg)))
            elif cmd == "step_part":  # one group of this worker's envs: (first local position, actions (n_g, C, A))
                lo, acts = arg
                conn.send(("ok", slots.step(acts, lo)))
            elif cmd == "expert":
                conn.send(("ok", slots.expert()))
            elif cmd == "crash":  # for tests: die like a segfaulting simulator would
                os._exit(1)
            elif cmd == "close":
                slots.close()
                conn.send(("ok", None))
                return
    except (EOFError, KeyboardInterrupt):
        return
    except Exception as e:  # report the error to the parent instead of dying silently
        try:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        except Exception:
            pass


class WorkerCrash(RuntimeError):
    pass


class SubprocVecEnv:
    """N envs spread over ``workers`` subprocesses; crashed workers are restarted (see module doc).

    ``groups_per_worker`` splits each worker's envs into that many groups for ``step_async`` /
    ``step_wait``; ``threads`` (default ``thread_plan(workers)``) limits each worker's threads.
    """

    device = None  # observations are numpy on the host

    def __init__(self, env_fn: Callable[[], TaskEnv], num_envs: int, workers: int = 2, context: str = "fork",
                 groups_per_worker: int = 1, threads: ThreadPlan | None = None):
        if workers < 1:
            raise EnvError("workers must be >= 1")
        if groups_per_worker < 1:
            raise EnvError("groups_per_worker must be >= 1")
        workers = min(workers, num_envs)
        self.env_fn, self.num_envs = env_fn, num_envs
        self.threads = threads or thread_plan(workers)
        self._ctx = mp.get_context(context)
        bounds = np.linspace(0, num_envs, workers + 1).astype(int)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.groups: list[slice] = []  # step_async / step_wait units, each inside one worker's slice
        self._group_worker: list[int] = []
        for w, sl in enumerate(self.slices):
            k = min(groups_per_worker, sl.stop - sl.start)
            cuts = np.linspace(sl.start, sl.stop, k + 1).astype(int)
            self.groups += [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
            self._group_worker += [w] * k
        self.procs: list = [None] * workers
        self.conns: list = [None] * workers
        self.restarts = 0
        for w in range(workers):
            self._start(w)
        self._task_ids = np.zeros(num_envs, np.int64)
        self._seeds = np.zeros(num_envs, np.int64)
        self._valid = np.ones(num_envs, bool)
        self._crashed = np.zeros(num_envs, bool)  # worker died this episode: report done, steps 0 until reset
        self._queue: list[deque] = [deque() for _ in range(workers)]  # groups in flight per worker, in send order
        self._inbox: dict[int, list] = {}  # group -> ChunkResults received ahead of its step_wait

    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        sl = self.slices[w]
        bounds = [(g.start - sl.start, g.stop - sl.start) for g, gw in zip(self.groups, self._group_worker) if gw == w]
        p = self._ctx.Process(target=_worker, args=(child, self.env_fn, sl.stop - sl.start, self.threads, bounds),
                              daemon=True)
        p.start()
        child.close()
        self.procs[w], self.conns[w] = p, parent
        self.spec: EnvSpec = self._recv(w)

    def _recv(self, w: int):
        try:
            status, payload = self.conns[w].recv()
        except (EOFError, ConnectionResetError, BrokenPipeError, OSError):
            raise WorkerCrash(f"env worker {w} died") from None
        if status == "error":
            raise RuntimeError(f"env worker {w} failed: {payload}")
        return payload

    def _call(self, cmd: str, args: list) -> list:
        """Send one command to every worker; returns per-worker payloads (None for crashed ones)."""
        if self.in_flight:
            raise RuntimeError(f"SubprocVecEnv.{cmd} while group steps are in flight: step_wait them first")
        for w, c in enumerate(self.conns):
            try:
                c.send((cmd, args[w]))
            except (BrokenPipeError, OSError):
                pass  # noticed at recv
        out = []
        for w in range(len(self.conns)):
            try:
                out.append(self._recv(w))
            except WorkerCrash:
                out.append(None)
        return out

    def _restart(self, w: int) -> list:
        """Replace a dead worker, reset its envs to their episodes' (task, seed); returns reset obs."""
        self.restarts += 1
        try:
            self.procs[w].kill()
        except Exception:
            pass
        self._start(w)
        sl = self.slices[w]
        self.conns[w].send(("reset", list(zip(self._task_ids[sl], self._seeds[sl]))))
        self._valid[sl] = False
        return self._recv(w)

    @staticmethod
    def _crash_results(resets: list) -> list[ChunkResult]:
        return [ChunkResult(img, st, 0.0, False, True, False, 0, sim) for img, st, sim in resets]

    def _mask_crashed(self, sl: slice, results: list[ChunkResult]) -> list[ChunkResult]:
        """Envs whose worker died earlier in this episode stay ended (their new envs are not the episode's)."""
        return [ChunkResult(r.image, r.state, 0.0, False, True, False, 0, r.sim_state) if c else r
                for r, c in zip(results, self._crashed[sl])]

    @property
    def in_flight(self) -> bool:
        """Whether some group's ``step_async`` has not been collected by ``step_wait`` yet."""
        return bool(self._inbox) or any(self._queue)

    def reset(self, task_ids, seeds) -> Observation:
        self.drain()
        self._task_ids, self._seeds = _check_reset_args(self.spec, self.num_envs, task_ids, seeds)
        self._valid[:] = True
        self._crashed[:] = False
        args = [list(zip(self._task_ids[s], self._seeds[s])) for s in self.slices]
        out = self._call("reset", args)
        for w, res in enumerate(out):
            if res is None:
                out[w] = self._restart(w)
                self._valid[self.slices[w]] = True  # nothing happened in this episode yet
        flat = [o for res in out for o in res]
        return _stack(self.spec, self._task_ids, [o[0] for o in flat], [o[1] for o in flat], [o[2] for o in flat])

    def step(self, actions: np.ndarray) -> VecStep:
        a = validate_actions(actions, self.num_envs, self.spec.action_dim)
        out = self._call("step", [a[s] for s in self.slices])
        results: list[ChunkResult] = []
        for w, res in enumerate(out):
            if res is None:  # crashed: episode is invalid and over
                res = self._crash_results(self._restart(w))
                self._crashed[self.slices[w]] = True
            results.extend(res)
        return _vec_step(self.spec, self._task_ids, self._mask_crashed(slice(0, self.num_envs), results), self._valid)

    def step_async(self, g: int, actions: np.ndarray) -> None:
        """Send group ``g``'s action chunk, float32 (n_g, C, A), to its worker and return at once."""
        sl, w = self.groups[g], self._group_worker[g]
        if g in self._inbox or g in self._queue[w]:
            raise RuntimeError(f"group {g} already has a step in flight: step_wait({g}) first")
        a = validate_actions(actions, sl.stop - sl.start, self.spec.action_dim)
        try:
            self.conns[w].send(("step_part", (sl.start - self.slices[w].start, a)))
        except (BrokenPipeError, OSError):
            pass  # noticed at step_wait
        self._queue[w].append(g)

    def step_wait(self, g: int) -> VecStep:
        """Block until group ``g``'s chunk is done; returns its ``VecStep`` (n_g rows).

        If the worker died, every group it had in flight comes back ended and invalid, as in ``step``.
        """
        w = self._group_worker[g]
        while g not in self._inbox:
            if not self._queue[w]:
                raise RuntimeError(f"step_wait({g}) without a step_async({g})")
            try:
                res = self._recv(w)
            except WorkerCrash:
                lost, lo = list(self._queue[w]), self.slices[w].start
                self._queue[w].clear()
                resets = self._restart(w)
                self._crashed[self.slices[w]] = True
                for h in lost:
                    self._inbox[h] = self._crash_results(resets[self.groups[h].start - lo:self.groups[h].stop - lo])
                continue
            self._inbox[self._queue[w].popleft()] = res
        sl = self.groups[g]
        return _vec_step(self.spec, self._task_ids[sl], self._mask_crashed(sl, self._inbox.pop(g)), self._valid[sl])

    def drain(self) -> None:
        """Collect and drop every group step still in flight (after an error in pipelined code)."""
        for q in self._queue:
            for g in list(q):
                self.step_wait(g)
        self._inbox.clear()

    def expert_actions(self) -> np.ndarray:
        out = self._call("expert", [None] * len(self.conns))
        if any(o is None for o in out):
            raise WorkerCrash("an env worker died while computing expert actions")
        return np.stack([a for o in out for a in o]).astype(np.float32)

    def kill_worker(self, w: int = 0) -> None:
        """Testing aid: make worker ``w`` exit abruptly, as a crashing simulator would."""
        self.conns[w].send(("crash", None))
        self.procs[w].join(timeout=10)

    def close(self) -> None:
        """Ask every worker to close its envs and exit, wait for it (bounded), kill it if it does not. Nothing is
        read back: after an interrupt (Ctrl-C, SIGTERM) landed inside a ``recv``, the stream may be cut mid-message,
        and a read would then wait forever for bytes no worker sends (a SIGTERM test hung so, both sides reading)."""
        for c in self.conns:
            try:
                c.send(("close", None))
            except Exception:
                pass
        for w, c in enumerate(self.conns):
            self.procs[w].join(timeout=15)
            if self.procs[w].is_alive():
                self.procs[w].kill()
                self.procs[w].join(timeout=5)
            try:
                c.close()
            except Exception:
                pass

    def __del__(self):
        try:
            for p in self.procs:
                if p is not None and p.is_alive():
                    p.kill()
        except Exception:
            pass
