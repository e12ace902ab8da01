"""LeRobot datasets v2.0, v2.1 and v3.0 in (``vlaforge sft --demos DIR``), and v3.0 out (``collect --format v3``).

Layouts (``meta/info.json``'s ``codebase_version`` says which):

- v2.0 / v2.1: one parquet per episode (``data/chunk-XXX/episode_XXXXXX.parquet``), ``meta/tasks.jsonl``,
  ``meta/episodes.jsonl`` (v2.1 adds ``episodes_stats.jsonl``); cameras either as PNG-in-parquet ``image``
  features or as one MP4 per episode and camera (``videos/chunk-XXX/<camera>/episode_XXXXXX.mp4``, ``video``).
  vlaforge's own demos are v2.0 with PNG frames (data/demos.py).
- v3.0: many episodes per file — ``data/chunk-XXX/file-XXX.parquet``, cameras concatenated in
  ``videos/<camera>/chunk-XXX/file-XXX.mp4`` (AV1 by default), ``meta/tasks.parquet`` (task string → index),
  ``meta/episodes/chunk-XXX/file-XXX.parquet`` (per episode: length, ``dataset_from_index``/``to_index``,
  ``data/chunk_index``/``file_index``, ``videos/<camera>/{chunk_index,file_index,from_timestamp,to_timestamp}``),
  ``meta/stats.json``.

A dataset's features reach the policy through an explicit mapping (``--demos-map``): camera features become views
``image0, image1, ...`` (all the same size), one feature is ``state`` and one ``action``:

    --demos-map observation.images.top=image0,observation.images.wrist=image1,observation.state=state,action=action

Without one: every ``image``/``video`` feature in the order info.json lists them, ``observation.state`` and
``action``. Names the dataset lacks, cameras of different sizes and non-finite actions are refused in one line.
Video is decoded with PyAV (bundled FFmpeg; ~1,500–2,400 frames/s for 64×64 AV1/H.264 on one core here; torchcodec
needs a system FFmpeg this machine lacks). Codecs lose detail: a round trip is exact for state and action, and
images come back within the codec's error (tests/test_lerobot_data.py).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlaforge.envs import require
from vlaforge.envs.base import EnvError
from vlaforge.errors import UsageError
from vlaforge.fsutil import atomic_dir

VERSIONS = ("v2.0", "v2.1", "v3.0")
V3_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


@dataclass
class FeatureMap:
    """Which dataset features are the policy's views (in order), state and action."""

    images: list[str]
    state: str
    action: str


def read_info(path: Path) -> dict:
    f = path / "meta" / "info.json"
    if not f.is_file():
        raise EnvError(f"no demo dataset at '{path}' (meta/info.json missing); create one with `vlaforge collect`")
    try:
        info = json.loads(f.read_text())
    except ValueError:
        raise EnvError(f"'{f}' is not JSON; re-create the dataset") from None
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise EnvError(f"'{f}' has no 'features' table; it is not a LeRobot dataset")
    version = info.get("codebase_version")
    if version not in VERSIONS:
        raise EnvError(f"'{f}': codebase_version '{version}' is not one of {', '.join(VERSIONS)}")
    fps, chunks = info.get("fps", 10), info.get("chunks_size", 1000)
    if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and -1e300 < fps < 1e300 and fps > 0):
        raise EnvError(f"'{f}': fps {json.dumps(fps)[:20]} is not a positive number; fix the dataset")
    if not (isinstance(chunks, int) and not isinstance(chunks, bool) and chunks >= 1):
        raise EnvError(f"'{f}': chunks_size {json.dumps(chunks)[:20]} is not a whole number >= 1; fix the dataset")
    for k in ("data_path", "video_path"):
        if info.get(k) is not None and not isinstance(info[k], str):
            raise EnvError(f"'{f}': {k} is not a path pattern; fix the dataset")
    if not isinstance(info.get("data_path"), str):
        raise EnvError(f"'{f}' has no data_path pattern; fix the dataset")
    return info


def is_vlaforge(info: dict) -> bool:
    """vlaforge's own v2.0 layout (``vlaforge collect``): one camera feature with the views side by side."""
    return info.get("codebase_version") == "v2.0" and isinstance(info.get("camera"), str)


def camera_features(info: dict) -> list[str]:
    return [k for k, v in info["features"].items() if isinstance(v, dict) and v.get("dtype") in ("image", "video")]


def parse_map(spec: str | None, info: dict, where: str = "--demos-map") -> FeatureMap:
    """``spec`` ("feature=image0,...,feature=state,feature=action") or the default mapping, checked against the
    dataset's features."""
    feats = info["features"]
    if not spec:
        fm = FeatureMap(camera_features(info), "observation.state", "action")
    else:
        roles: dict[str, str] = {}
        for part in spec.split(","):
            if "=" not in part:
                raise UsageError(f"{where}: '{part}' is not FEATURE=ROLE (roles: image0, image1, ..., state, action)")
            k, role = (x.strip() for x in part.split("=", 1))
            if role in roles:
                raise UsageError(f"{where}: role '{role}' is given twice")
            roles[role] = k
        bad = [r for r in roles if r not in ("state", "action") and not (r.startswith("image") and r[5:].isdigit())]
        if bad:
            raise UsageError(f"{where}: unknown role(s) {bad}; use image0, image1, ..., state, action")
        views = sorted((int(r[5:]), k) for r, k in roles.items() if r.startswith("image"))
        if [i for i, _ in views] != list(range(len(views))):
            raise UsageError(f"{where}: image roles must be image0..image{len(views) - 1} without gaps")
        if "state" not in roles or "action" not in roles:
            raise UsageError(f"{where}: name the state and the action features (…=state, …=action)")
        fm = FeatureMap([k for _, k in views], roles["state"], roles["action"])
    missing = [k for k in fm.images + [fm.state, fm.action] if k not in feats]
    if missing:
        raise UsageError(f"{where}: the dataset has no feature(s) {missing}; it has {sorted(feats)}")
    if not fm.images:
        raise UsageError(f"{where}: the dataset has no camera feature (image/video); map one with FEATURE=image0")
    shapes = {tuple(hwc(feats[k])) for k in fm.images}
    if len(shapes) != 1:
        raise UsageError(f"{where}: the mapped cameras differ in size {sorted(shapes)}; map cameras of one size")
    return fm


def hwc(feature: dict) -> tuple[int, int, int]:
    """(H, W, C) of a camera feature whose shape is (H, W, C) or (C, H, W)."""
    shape = feature.get("shape") if isinstance(feature, dict) else None
    names = feature.get("names") if isinstance(feature, dict) else None
    names = names if isinstance(names, list) else []
    if not (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in shape)):
        raise EnvError(f"camera feature shape {json.dumps(shape)[:40]} is not (H, W, C) or (C, H, W) of positive whole "
                       "numbers")
    if names and list(names)[:1] == ["channels"] or shape[0] == 3 and shape[2] != 3:
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


# -- reading ------------------------------------------------------------------------------------------

class _Videos:
    """Decoded MP4 files, cached per path (a v3 file holds many episodes)."""

    def __init__(self):
        self.cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    def frames(self, f: Path) -> tuple[np.ndarray, np.ndarray]:
        """(frames uint8 (F, H, W, 3), presentation times in seconds (F,))."""
        if f not in self.cache:
            av = require("av", "lerobot")
            try:
                with av.open(str(f)) as c:
                    stream = c.streams.video[0]
                    frames, times = [], []
                    for fr in c.decode(stream):
                        frames.append(fr.to_ndarray(format="rgb24"))
                        times.append(float(fr.pts * stream.time_base) if fr.pts is not None else len(times))
            except (OSError, av.error.FFmpegError) as e:
                raise EnvError(f"video '{f}' is missing or unreadable ({type(e).__name__}); re-create the dataset") from None
            if not frames:
                raise EnvError(f"video '{f}' holds no frames; re-create the dataset")
            self.cache = {f: (np.stack(frames), np.asarray(times))}  # keep one file: episodes come in file order
        return self.cache[f]

    def at(self, f: Path, ts: np.ndarray, fps: float) -> np.ndarray:
        frames, times = self.frames(f)
        idx = np.searchsorted(times, np.asarray(ts) - 0.5 / fps)
        if (idx >= len(times)).any() or (np.abs(times[np.minimum(idx, len(times) - 1)] - ts) > 0.5 / fps).any():
            raise EnvError(f"video '{f}' has no frames at some of the episode's timestamps; re-create the dataset")
        return frames[idx]


def _png(b: bytes) -> np.ndarray:
    import imageio.v3 as iio

    return iio.imread(io.BytesIO(b), extension=".png")


def _image_column(values, path: Path) -> list[np.ndarray]:
    out = []
    for v in values:
        if isinstance(v, dict) and v.get("bytes") is not None:
            out.append(_png(v["bytes"]))
        elif isinstance(v, dict) and v.get("path"):
            out.append(_png((path / v["path"]).read_bytes()))
        else:
            raise EnvError("an image cell is neither PNG bytes nor a path; re-create the dataset")
    return out


def _episodes_v2(path: Path, info: dict) -> list[dict]:
    rows = [json.loads(x) for x in (path / "meta" / "episodes.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        e = int(r["episode_index"])
        r["_file"] = info["data_path"].format(episode_chunk=e // int(info.get("chunks_size", 1000)), episode_index=e)
    return rows


def _episodes_v3(path: Path, info: dict) -> list[dict]:
    import pyarrow.parquet as pq

    files = sorted((path / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise EnvError(f"'{path}' has no meta/episodes/chunk-*/file-*.parquet; it is not a v3.0 dataset")
    rows = []
    for f in files:
        rows += pq.read_table(f).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


def _tasks(path: Path, version: str) -> dict[int, str]:
    if version != "v3.0":
        rows = [json.loads(x) for x in (path / "meta" / "tasks.jsonl").read_text().splitlines() if x.strip()]
        return {int(r["task_index"]): r["task"] for r in rows}
    import pyarrow.parquet as pq

    t = pq.read_table(path / "meta" / "tasks.parquet").to_pandas()
    names = t["task"] if "task" in t.columns else t.index
    return {int(i): str(n) for i, n in zip(t["task_index"], names)}


def load_lerobot(path: str | Path, demos_map: str | None = None, success_only: bool = True,
                 tasks: list[str] | None = None) -> tuple[dict, list[dict], dict[str, int]]:
    """(vlaforge-style info, episodes, task name -> index) of a LeRobot dataset under ``demos_map``: what
    ``data.demos.load_demos`` turns into ``DemoData``. Square frames only (the policies take one image size)."""
    info = read_info(Path(path))
    fm = parse_map(demos_map, info)
    src, eps = read_episodes(path, fm, success_only, tasks)
    if not eps:
        raise EnvError(f"no {'successful ' if success_only else ''}episodes in '{path}' for the chosen tasks")
    V, H, W = eps[0]["images"].shape[1:4]
    if H != W:
        raise UsageError(f"--demos '{path}': frames are {H}x{W}; the policies read square images (resize them first)")
    names = sorted({e["name"] for e in eps})
    feats = {"observation.state": {"dtype": "float32", "shape": [int(eps[0]["state"].shape[1])]},
             "action": {"dtype": "float32", "shape": [int(eps[0]["action"].shape[1])]}}
    if eps[0]["sim_state"] is not None and "observation.sim_state" in src["features"]:
        feats["observation.sim_state"] = src["features"]["observation.sim_state"]
    info = {"codebase_version": src["codebase_version"], "suite": src.get("suite") or src.get("robot_type"),
            "fps": src.get("fps"), "views": int(V), "image_size": int(H), "features": feats,
            "feature_map": {"images": fm.images, "state": fm.state, "action": fm.action}}
    return info, eps, {n: i for i, n in enumerate(names)}


def read_episodes(path: str | Path, fm: FeatureMap | None = None, success_only: bool = True,
                  tasks: list[str] | None = None) -> tuple[dict, list[dict]]:
    """(info, episodes) of any supported version: each episode a dict of ``images (L, V, H, W, 3)``, ``state``,
    ``action``, ``sim_state`` (or None), ``instruction``, ``name`` (the suite task name when the dataset records one,
    else the instruction), ``index``."""
    import pyarrow.parquet as pq

    path = Path(path)
    info = read_info(path)
    version = info["codebase_version"]
    own = is_vlaforge(info)
    fm = fm or (FeatureMap([f"observation.images.{info['camera']}"], "observation.state", "action") if own
                else parse_map(None, info))
    task_text = _tasks(path, version)
    names = {}
    if own and version != "v3.0":
        names = {int(r["task_index"]): r.get("name", r["task"]) for r in
                 (json.loads(x) for x in (path / "meta" / "tasks.jsonl").read_text().splitlines() if x.strip())}
    eps = _episodes_v3(path, info) if version == "v3.0" else _episodes_v2(path, info)
    fps = float(info.get("fps", 10))
    videos = _Videos()
    own_views = int(info.get("views", 1)) if own else 1
    tables: dict[str, dict] = {}
    out = []
    for ep in eps:
        if success_only and ep.get("success") is False:
            continue
        e = int(ep["episode_index"])
        if version == "v3.0":
            f = path / info["data_path"].format(chunk_index=int(ep["data/chunk_index"]),
                                                file_index=int(ep["data/file_index"]))
        else:
            f = path / ep["_file"]
        key = str(f)
        if key not in tables:
            try:
                tables = {key: pq.read_table(f).to_pydict()}
            except (OSError, ValueError) as err:
                raise EnvError(f"demo data file '{f}' is missing or unreadable ({type(err).__name__}); re-create the "
                               "dataset") from None
        t = tables[key]
        rows = np.nonzero(np.asarray(t["episode_index"]) == e)[0]
        if len(rows) == 0:
            raise EnvError(f"'{f}' holds no rows of episode {e}; re-create the dataset")
        for col in (fm.state, fm.action):
            if col not in t:
                raise EnvError(f"'{f}' has no column '{col}'; re-create the dataset or fix --demos-map")
        tid = int(t["task_index"][rows[0]])
        instruction = task_text.get(tid)
        if instruction is None:
            raise EnvError(f"'{f}': task_index {tid} is not in the dataset's task table")
        name = ep.get("task_name") or names.get(tid, instruction)
        if tasks is not None and name not in tasks:
            continue
        views = []
        for cam in fm.images:
            if info["features"][cam]["dtype"] == "video":
                if version == "v3.0":
                    vf = path / info["video_path"].format(video_key=cam, chunk_index=int(ep[f"videos/{cam}/chunk_index"]),
                                                          file_index=int(ep[f"videos/{cam}/file_index"]))
                    ts = float(ep[f"videos/{cam}/from_timestamp"]) + np.asarray(t["timestamp"])[rows] - \
                        float(np.asarray(t["timestamp"])[rows[0]])
                else:
                    vf = path / info["video_path"].format(episode_chunk=e // int(info.get("chunks_size", 1000)),
                                                          video_key=cam, episode_index=e)
                    ts = np.asarray(t["timestamp"])[rows]
                views.append(videos.at(vf, ts, fps))
            else:
                if cam not in t:
                    raise EnvError(f"'{f}' has no column '{cam}'; re-create the dataset or fix --demos-map")
                imgs = np.stack(_image_column([t[cam][i] for i in rows], path))
                if own_views > 1:  # vlaforge's own: views side by side in one frame
                    views += list(np.stack(np.split(imgs, own_views, axis=2), 0))
                else:
                    views.append(imgs)
        shapes = {v.shape[1:] for v in views}
        if len(shapes) != 1:
            raise EnvError(f"episode {e}: the cameras' frames differ in size {sorted(shapes)}")
        try:
            state = np.asarray([t[fm.state][i] for i in rows], np.float32)
            action = np.asarray([t[fm.action][i] for i in rows], np.float32)
        except (TypeError, ValueError):
            raise EnvError(f"'{f}': episode {e}'s state or action rows are ragged or not numbers") from None
        if state.ndim != 2 or action.ndim != 2:
            raise EnvError(f"'{f}': state and action must be vectors per frame")
        if not (np.isfinite(action).all() and np.isfinite(state).all()):
            raise EnvError(f"'{f}': episode {e} holds NaN/inf actions or states; clean the dataset")
        sim = None
        if "observation.sim_state" in t:
            sim = np.asarray([t["observation.sim_state"][i] for i in rows], np.float32)
        out.append({"images": np.stack(views, 1), "state": state, "action": action, "sim_state": sim,
                    "instruction": instruction, "name": name, "index": e})
    return info, out


# -- writing v3.0 ---------------------------------------------------------------------------------------

def _encode(frames: np.ndarray, f: Path, fps: int, codec: str) -> None:
    av = require("av", "lerobot")
    f.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(f), "w", format="mp4") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "15", "preset": "8"} if codec == "libsvtav1" else {"crf": "12"}
        for fr in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def write_v3(src: str | Path, out: str | Path, codec: str = "libsvtav1", quiet: bool = True) -> Path:
    """Write the dataset at ``src`` (any supported version) as LeRobot v3.0 with MP4 video at ``out`` (atomic): one
    data file, one video file per camera, the episode and task tables as parquet, ``stats.json``. State, action
    and sim_state are exact; frames go through ``codec`` (AV1 by default, as LeRobot)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    info_src, eps = read_episodes(src, success_only=False)
    if not eps:
        raise EnvError(f"'{src}' holds no episodes to write")
    fps = int(info_src.get("fps", 10))
    own = is_vlaforge(info_src)
    V, H, W = eps[0]["images"].shape[1:4]
    cams = [f"observation.images.{info_src.get('camera', 'cam')}" + (f"_{v}" if V > 1 else "") for v in range(V)]
    tasks = sorted({e["instruction"] for e in eps})
    tid = {t: i for i, t in enumerate(tasks)}
    names = {e["instruction"]: e["name"] for e in eps}
    out = Path(out)
    with atomic_dir(out) as tmp:
        cols: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index",
                                                 "episode_index", "index", "task_index", "next.done")}
        has_sim = eps[0]["sim_state"] is not None
        if has_sim:
            cols["observation.sim_state"] = []
        ep_rows, total = [], 0
        for new, e in enumerate(eps):
            L = len(e["action"])
            cols["observation.state"] += e["state"].tolist()
            cols["action"] += e["action"].tolist()
            cols["timestamp"] += (np.arange(L) / fps).astype(np.float32).tolist()
            cols["frame_index"] += list(range(L))
            cols["episode_index"] += [new] * L
            cols["index"] += list(range(total, total + L))
            cols["task_index"] += [tid[e["instruction"]]] * L
            cols["next.done"] += [False] * (L - 1) + [True]
            if has_sim:
                cols["observation.sim_state"] += e["sim_state"].tolist()
            row = {"episode_index": new, "tasks": [e["instruction"]], "length": L, "dataset_from_index": total,
                   "dataset_to_index": total + L, "data/chunk_index": 0, "data/file_index": 0,
                   "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0, "task_name": e["name"]}
            for cam in cams:
                row.update({f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": 0,
                            f"videos/{cam}/from_timestamp": total / fps, f"videos/{cam}/to_timestamp": (total + L) / fps})
            ep_rows.append(row)
            total += L
        (tmp / "data" / "chunk-000").mkdir(parents=True)
        pq.write_table(pa.table(cols), tmp / V3_DATA.format(chunk_index=0, file_index=0))
        for v, cam in enumerate(cams):
            _encode(np.concatenate([e["images"][:, v] for e in eps]), tmp / V3_VIDEO.format(
                video_key=cam, chunk_index=0, file_index=0), fps, codec)
        (tmp / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(ep_rows), tmp / V3_EPISODES.format(chunk_index=0, file_index=0))
        pq.write_table(pa.table({"task_index": list(range(len(tasks))), "task": tasks,
                                 "name": [names[t] for t in tasks]}), tmp / "meta" / "tasks.parquet")
        state, action = np.concatenate([e["state"] for e in eps]), np.concatenate([e["action"] for e in eps])
        stats = {k: {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
                     "max": x.max(0).tolist(), "count": [len(x)]} for k, x in (("observation.state", state),
                                                                            ("action", action))}
        (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
        feats = {cam: {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"],
                       "info": {"video.fps": fps, "video.codec": "av1" if codec == "libsvtav1" else codec,
                                "video.pix_fmt": "yuv420p", "video.height": H, "video.width": W}} for cam in cams}
        feats["observation.state"] = {"dtype": "float32", "shape": [state.shape[1]]}
        feats["action"] = {"dtype": "float32", "shape": [action.shape[1]]}
        if has_sim:
            feats["observation.sim_state"] = info_src["features"]["observation.sim_state"]
        for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                      ("index", "int64"), ("task_index", "int64"), ("next.done", "bool")):
            feats[k] = {"dtype": dt, "shape": [1]}
        info = {"codebase_version": "v3.0", "robot_type": info_src.get("robot_type", info_src.get("suite")),
                "fps": fps, "total_episodes": len(eps), "total_frames": total, "total_tasks": len(tasks),
                "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
                "data_path": V3_DATA, "video_path": V3_VIDEO, "features": feats,
                "suite": info_src.get("suite"), "source": "vlaforge collect --format v3" if own else str(src)}
        (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return out
