"""Batching single envs: in process (``SyncVecEnv``) or in subprocess workers (``SubprocVecEnv``).

Both take a zero-argument env constructor and N, and expose the ``VecEnv`` interface:
``reset(task_ids, seeds)``, ``step(actions (N, C, A))``, ``expert_actions()``, ``close()``.
Grouped resets are just equal (task_id, seed) pairs: the initial state is a function of them.

``SubprocVecEnv`` spreads the N envs over W worker processes, one message per action chunk
(C physics steps and one render per env), so IPC is paid once per chunk, not per step. A
worker that dies (segfault, OOM kill) is restarted: its envs are rebuilt and reset to their
episode's (task, seed), and their episodes are marked ``valid=False`` and ``done`` so that
rollout code drops them instead of counting them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from collections.abc import Callable, Sequence

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


def _check_reset_args(spec: EnvSpec, n: int, task_ids, seeds) -> tuple[np.ndarray, np.ndarray]:
    task_ids = np.broadcast_to(np.asarray(task_ids, dtype=np.int64), (n,)).copy()
    seeds = np.broadcast_to(np.asarray(seeds, dtype=np.int64), (n,)).copy()
    if task_ids.min() < 0 or task_ids.max() >= len(spec.tasks):
        raise EnvError(f"task ids must be in [0, {len(spec.tasks)}); got {task_ids.tolist()}")
    return task_ids, seeds


class SyncVecEnv:
    """N envs stepped one after another in this process (no IPC; best for cheap suites)."""

    def __init__(self, env_fn: Callable[[], TaskEnv], num_envs: int):
        self.envs = [env_fn() for _ in range(num_envs)]
        self.spec: EnvSpec = self.envs[0].spec
        self.num_envs = num_envs
        self._task_ids = np.zeros(num_envs, np.int64)

    def reset(self, task_ids, seeds) -> Observation:
        self._task_ids, seeds = _check_reset_args(self.spec, self.num_envs, task_ids, seeds)
        out = [_reset_one(e, int(t), int(s)) for e, t, s in zip(self.envs, self._task_ids, seeds)]
        return _stack(self.spec, self._task_ids, [o[0] for o in out], [o[1] for o in out], [o[2] for o in out])

    def step(self, actions: np.ndarray) -> VecStep:
        a = validate_actions(actions, self.num_envs, self.spec.action_dim)
        return _vec_step(self.spec, self._task_ids, [_step_one(e, x) for e, x in zip(self.envs, a)],
                         np.ones(self.num_envs, bool))

    def expert_actions(self) -> np.ndarray:
        return np.stack([e.expert_action() for e in self.envs]).astype(np.float32)

    def close(self) -> None:
        for e in self.envs:
            e.close()


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


def _worker(conn, env_fn, n_local: int) -> None:
    os.environ.setdefault("LP_NUM_THREADS", "1")  # llvmpipe: one thread per worker
    try:
        envs = [env_fn() for _ in range(n_local)]
        conn.send(("ok", envs[0].spec))
        while True:
            cmd, arg = conn.recv()
            if cmd == "reset":
                conn.send(("ok", [_reset_one(e, int(t), int(s)) for e, (t, s) in zip(envs, arg)]))
            elif cmd == "step":
                conn.send(("ok", [_step_one(e, a) for e, a in zip(envs, arg)]))
            elif cmd == "expert":
                conn.send(("ok", [e.expert_action() for e in envs]))
            elif cmd == "crash":  # for tests: die like a segfaulting simulator would
                os._exit(1)
            elif cmd == "close":
                for e in envs:
                    e.close()
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
    """N envs spread over ``workers`` subprocesses; crashed workers are restarted (see module doc)."""

    def __init__(self, env_fn: Callable[[], TaskEnv], num_envs: int, workers: int = 2, context: str = "fork"):
        if workers < 1:
            raise EnvError("workers must be >= 1")
        workers = min(workers, num_envs)
        self.env_fn, self.num_envs = env_fn, num_envs
        self._ctx = mp.get_context(context)
        bounds = np.linspace(0, num_envs, workers + 1).astype(int)
        self.slices = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.procs: list = [None] * workers
        self.conns: list = [None] * workers
        self.restarts = 0
        for w in range(workers):
            self._start(w)
        self._task_ids = np.zeros(num_envs, np.int64)
        self._seeds = np.zeros(num_envs, np.int64)
        self._valid = np.ones(num_envs, bool)

    def _start(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        n_local = self.slices[w].stop - self.slices[w].start
        p = self._ctx.Process(target=_worker, args=(child, self.env_fn, n_local), daemon=True)
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

    def reset(self, task_ids, seeds) -> Observation:
        self._task_ids, self._seeds = _check_reset_args(self.spec, self.num_envs, task_ids, seeds)
        self._valid[:] = True
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
                resets = self._restart(w)
                res = [ChunkResult(img, st, 0.0, False, True, False, 0, sim) for img, st, sim in resets]
            results.extend(res)
        return _vec_step(self.spec, self._task_ids, results, self._valid)

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
        for w, c in enumerate(self.conns):
            try:
                c.send(("close", None))
                c.recv()
            except Exception:
                pass
            self.procs[w].join(timeout=5)
            if self.procs[w].is_alive():
                self.procs[w].kill()

    def __del__(self):
        try:
            for p in self.procs:
                if p is not None and p.is_alive():
                    p.kill()
        except Exception:
            pass
