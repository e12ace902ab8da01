"""Scripted-expert demonstrations, written in the LeRobot v2 on-disk layout.

Layout of a demo directory (readable with pandas / pyarrow / LeRobot tooling)::

    meta/info.json        suite, fps, feature names/shapes/dtypes, counts, camera, image size
    meta/tasks.jsonl      {"task_index", "task" (instruction), "name"}
    meta/episodes.jsonl   {"episode_index", "tasks", "length", "success", "seed", "task_name"}
    data/chunk-000/episode_000000.parquet   one row per simulator step:
        observation.images.<camera>  struct{bytes: PNG, path: null}   (LeRobot's image feature)
        observation.state            list<float32>[S]
        action                       list<float32>[A]   the expert's (noise-free) action
        timestamp, frame_index, episode_index, index, task_index, next.done, next.success

Why parquet with PNG frames: it is LeRobot's own convention for image datasets, opens with
standard tools (``pd.read_parquet``), and is lossless (mp4 would blur 64x64 frames).
Expert actions are labelled noise-free while the executed action may carry Gaussian noise
(``noise``): the demos then visit states off the expert's path and show how to recover.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlaforge.data.lerobot import is_vlaforge, load_lerobot, read_info
from vlaforge.envs.base import EnvError, VecEnv
from vlaforge.fsutil import atomic_dir

CHUNK_FILES = 1000


def _png(img: np.ndarray) -> bytes:
    import imageio.v3 as iio

    buf = io.BytesIO()
    iio.imwrite(buf, img, extension=".png")
    return buf.getvalue()


def _unpng(b: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(io.BytesIO(b), extension=".png")


def run_expert_episodes(venv: VecEnv, task_ids: np.ndarray, seeds: np.ndarray, noise: float, rng: np.random.Generator):
    """Roll the scripted expert in a batch of envs; returns per-env lists of frames."""
    n = venv.num_envs
    obs = venv.reset(task_ids, seeds).to_numpy()  # demos go to disk: a batched simulator's frames come to the host
    frames = [[] for _ in range(n)]
    success = np.zeros(n, bool)
    done = np.zeros(n, bool)
    valid = np.ones(n, bool)
    while not done.all():
        expert = venv.expert_actions()
        executed = np.clip(expert + noise * rng.standard_normal(expert.shape).astype(np.float32), -1, 1)
        st = venv.step(executed[:, None, :])
        for i in np.nonzero(~done)[0]:
            sim = None if obs.sim_state is None else np.asarray(obs.sim_state[i], np.float32)
            frames[i].append((obs.images[i], obs.state[i], expert[i], bool(st.done[i]), bool(st.success[i]), sim))
        success |= st.success & ~done
        valid &= st.valid
        done |= st.done
        obs = st.obs.to_numpy()
    return frames, success, valid


@dataclass
class DemoInfo:
    path: Path
    episodes: int
    frames: int
    successes: int


def collect_demos(venv: VecEnv, out: str | Path, task_names: list[str], episodes_per_task: int, seed: int = 0,
                  noise: float = 0.0, progress=None) -> DemoInfo:
    """Run the scripted expert ``episodes_per_task`` times on each task and write a demo directory."""
    spec = venv.spec
    task_ids = [spec.task_index(t) for t in task_names]
    rng = np.random.default_rng(seed)
    jobs = [(tid, seed * 100_003 + 1_000_000 + k) for tid in task_ids for k in range(episodes_per_task)]
    n = venv.num_envs
    cam = spec.cameras[0]
    ep_meta, total, succ = [], 0, 0
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "meta").mkdir()
        import pyarrow as pa
        import pyarrow.parquet as pq

        for start in range(0, len(jobs), n):
            batch = jobs[start:start + n]
            pad = batch + [batch[-1]] * (n - len(batch))
            frames, success, valid = run_expert_episodes(venv, np.array([j[0] for j in pad]),
                                                         np.array([j[1] for j in pad]), noise, rng)
            for i, (tid, s) in enumerate(batch):
                if not valid[i]:
                    continue  # a crashed worker's episode is dropped, never counted
                ep = len(ep_meta)
                fr = frames[i]
                L = len(fr)
                chunk_dir = tmp / "data" / f"chunk-{ep // CHUNK_FILES:03d}"
                chunk_dir.mkdir(parents=True, exist_ok=True)
                columns = {
                    f"observation.images.{cam}": [{"bytes": _png(f[0][0] if f[0].shape[0] == 1 else
                                                                  np.concatenate(list(f[0]), 1)), "path": None}
                                                   for f in fr],
                    "observation.state": [f[1].tolist() for f in fr],
                    "action": [f[2].tolist() for f in fr],
                    "timestamp": np.arange(L, dtype=np.float32) / 10.0,
                    "frame_index": np.arange(L, dtype=np.int64),
                    "episode_index": np.full(L, ep, np.int64),
                    "index": np.arange(total, total + L, dtype=np.int64),
                    "task_index": np.full(L, tid, np.int64),
                    "next.done": [f[3] for f in fr],
                    "next.success": [f[4] for f in fr],
                }
                if spec.sim_state_names and fr[0][5] is not None:  # privileged state, for readouts and critics
                    columns["observation.sim_state"] = [f[5].tolist() for f in fr]
                pq.write_table(pa.table(columns), chunk_dir / f"episode_{ep:06d}.parquet")
                ep_meta.append({"episode_index": ep, "tasks": [spec.tasks[tid].instruction], "length": L,
                                "success": bool(success[i]), "seed": int(s), "task_name": spec.tasks[tid].name})
                total += L
                succ += bool(success[i])
            if progress:
                progress(min(start + n, len(jobs)), len(jobs))
        V, H, W, _ = spec.image_shape
        info = {
            "codebase_version": "v2.0", "producer": "vlaforge", "robot_type": spec.suite, "fps": 10,
            "suite": spec.suite, "total_episodes": len(ep_meta), "total_frames": total, "total_tasks": len(spec.tasks),
            "chunks_size": CHUNK_FILES, "expert_noise": noise, "seed": seed,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "features": {
                f"observation.images.{cam}": {"dtype": "image", "shape": [H, W * V, 3], "names": ["height", "width", "channel"]},
                "observation.state": {"dtype": "float32", "shape": [spec.state_dim]},
                "action": {"dtype": "float32", "shape": [spec.action_dim]},
                **({"observation.sim_state": {"dtype": "float32", "shape": [len(spec.sim_state_names)],
                                              "names": list(spec.sim_state_names)}} if spec.sim_state_names else {}),
            },
            "camera": cam, "views": V, "image_size": H, "renderer": spec.renderer,
        }
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
        with open(tmp / "meta" / "tasks.jsonl", "w") as f:
            for i, t in enumerate(spec.tasks):
                f.write(json.dumps({"task_index": i, "task": t.instruction, "name": t.name}) + "\n")
        with open(tmp / "meta" / "episodes.jsonl", "w") as f:
            for m in ep_meta:
                f.write(json.dumps(m) + "\n")
    return DemoInfo(out, len(ep_meta), total, succ)


@dataclass
class DemoData:
    """Demo frames in memory, ready for chunked SFT sampling."""

    images: np.ndarray  # uint8 (M, V, H, W, 3)
    state: np.ndarray  # float32 (M, S)
    actions: np.ndarray  # float32 (M, A)
    task_names: list[str]  # per frame
    instructions: list[str]  # per frame
    episode: np.ndarray  # int64 (M,)
    frame: np.ndarray  # int64 (M,)
    episode_end: np.ndarray  # int64 (M,) index one past the episode's last frame
    info: dict
    sim_state: np.ndarray | None = None  # float32 (M, P) privileged state when the demos recorded it
    task_index: dict[str, int] | None = None  # task name -> index (the policy's task ids; names as in task_names)

    @property
    def sim_state_names(self) -> list[str]:
        return list(self.info.get("features", {}).get("observation.sim_state", {}).get("names", []))

    def __len__(self) -> int:
        return len(self.actions)

    def chunk_targets(self, idx: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """Action chunks (B, C, A) starting at frames ``idx`` and their masks (B, C) (0 past the episode end)."""
        offs = idx[:, None] + np.arange(chunk)[None]
        mask = offs < self.episode_end[idx][:, None]
        offs = np.minimum(offs, self.episode_end[idx][:, None] - 1)
        return self.actions[offs], mask.astype(np.float32)


def load_demos(path: str | Path, success_only: bool = True, tasks: list[str] | None = None,
               demos_map: str | None = None) -> DemoData:
    """Read a demo directory written by ``collect_demos``, or a LeRobot dataset v2.0/v2.1/v3.0 through
    ``demos_map`` (``data.lerobot``: which features are the views, the state and the action)."""
    import pyarrow.parquet as pq

    path = Path(path)
    info = read_info(path)
    if not is_vlaforge(info) or demos_map:
        return _from_lerobot(*load_lerobot(path, demos_map, success_only, tasks))
    tasks_meta = [json.loads(line) for line in (path / "meta" / "tasks.jsonl").read_text().splitlines() if line]
    episodes = [json.loads(line) for line in (path / "meta" / "episodes.jsonl").read_text().splitlines() if line]
    by_index = {t["task_index"]: t for t in tasks_meta}
    cam_col = f"observation.images.{info['camera']}"
    V = info.get("views", 1)
    imgs, states, acts, names, instr, ep_ids, frame_ids, ends, sims = [], [], [], [], [], [], [], [], []
    has_sim = "observation.sim_state" in info.get("features", {})
    count = 0
    for ep in episodes:
        if success_only and not ep["success"]:
            continue
        if tasks is not None and ep["task_name"] not in tasks:
            continue
        e = ep["episode_index"]
        f = path / info["data_path"].format(episode_chunk=e // info.get("chunks_size", CHUNK_FILES), episode_index=e)
        try:
            t = pq.read_table(f).to_pydict()
        except (OSError, ValueError) as e:  # missing file, or not parquet (pyarrow.ArrowInvalid is a ValueError)
            raise EnvError(f"demo episode file '{f}' is missing or unreadable ({type(e).__name__}); "
                           "re-collect the demos with `vlaforge collect`") from None
        L = len(t["action"])
        for b in t[cam_col]:
            img = _unpng(b["bytes"])
            imgs.append(np.stack(np.split(img, V, axis=1)) if V > 1 else img[None])
        states.append(np.asarray(t["observation.state"], np.float32))
        acts.append(np.asarray(t["action"], np.float32))
        if has_sim:
            sims.append(np.asarray(t["observation.sim_state"], np.float32))
        tm = by_index[t["task_index"][0]]
        names += [tm["name"]] * L
        instr += [tm["task"]] * L
        ep_ids.append(np.full(L, e))
        frame_ids.append(np.arange(L))
        ends.append(np.full(L, count + L))
        count += L
    if count == 0:
        raise EnvError(f"no {'successful ' if success_only else ''}episodes in '{path}' for the chosen tasks")
    return DemoData(np.stack(imgs), np.concatenate(states), np.concatenate(acts), names, instr,
                    np.concatenate(ep_ids), np.concatenate(frame_ids), np.concatenate(ends), info,
                    np.concatenate(sims) if has_sim else None, {t["name"]: t["task_index"] for t in tasks_meta})


def _from_lerobot(info: dict, eps: list[dict], task_index: dict[str, int]) -> DemoData:
    lengths = [len(e["action"]) for e in eps]
    ends = np.concatenate([np.full(L, end) for L, end in zip(lengths, np.cumsum(lengths))])
    sims = [e["sim_state"] for e in eps]
    return DemoData(np.concatenate([e["images"] for e in eps]), np.concatenate([e["state"] for e in eps]),
                    np.concatenate([e["action"] for e in eps]), [e["name"] for e in eps for _ in range(len(e["action"]))],
                    [e["instruction"] for e in eps for _ in range(len(e["action"]))],
                    np.concatenate([np.full(L, e["index"]) for L, e in zip(lengths, eps)]),
                    np.concatenate([np.arange(L) for L in lengths]), ends.astype(np.int64), info,
                    None if any(s is None for s in sims) else np.concatenate(sims), task_index)
