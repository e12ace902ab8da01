"""A demo dataset's files checked before any work: ``check_demos(path)`` reads its metadata (meta/info.json,
tasks.jsonl, episodes.jsonl, a LeRobot dataset's features through ``--demos-map``) and one episode file, and
raises a one-line ``UsageError`` naming the file and what to do. ``vlaforge sft``'s check and the recipes that
read demos (ire-vla, vla-rl) call it; ``load_demos`` then reads what it checked.

    python -c "from vlaforge.data.demo_files import check_demos; print(check_demos('runs/demos')['image_size'])"
"""

from __future__ import annotations

import json
from pathlib import Path

from vlaforge.checks import MAX_DIM, MAX_IMAGE, MAX_VIEWS, MIN_IMAGE, is_finite, need
from vlaforge.data.lerobot import hwc as lerobot_hwc
from vlaforge.data.lerobot import is_vlaforge, parse_map, read_info
from vlaforge.envs.base import EnvError
from vlaforge.errors import UsageError


def read_json(path: Path, what: str):
    """Parse a JSON file; a UsageError naming the file and the line on failure."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {what} '{path}' ({type(e).__name__}); re-create it") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} '{path}' is not valid JSON (line {e.lineno}: {e.msg}); re-create it") from None


def read_jsonl(path: Path, what: str) -> list:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {what} '{path}' ({type(e).__name__}); re-create it") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise UsageError(f"{what} '{path}' line {i} is not valid JSON ({e.msg}); re-create the demos") from None
    return rows


def check_demos(path: str, name: str = "--demos", demos_map: str | None = None) -> dict:
    """A demo directory's metadata (meta/info.json, tasks.jsonl, episodes.jsonl) parses and has the keys
    ``load_demos`` reads; returns info.json's content."""
    d = Path(path).expanduser()
    info_f = d / "meta" / "info.json"
    if not info_f.exists():
        raise UsageError(f"{name}: no demo dataset at '{path}' (meta/info.json missing); create one with `vlaforge collect`")
    info = read_json(info_f, "demo metadata")
    if isinstance(info, dict) and (not is_vlaforge(info) or demos_map):  # a LeRobot dataset: version and mapping
        try:
            raw = read_info(d)
        except EnvError as e:
            raise UsageError(f"{name}: {e}") from None
        fm = parse_map(demos_map, raw, "--demos-map")  # UsageError naming the missing feature or bad role
        try:
            (H, W, _), S, A = lerobot_hwc(raw["features"][fm.images[0]]), *(
                int(raw["features"][k]["shape"][0]) for k in (fm.state, fm.action))
        except (EnvError, KeyError, IndexError, TypeError, ValueError):
            raise UsageError(f"{name}: '{info_f}' lacks the shapes of the mapped features; fix the dataset") from None
        need(H == W, f"{name}: the mapped cameras give {H}x{W} frames; the policies read square images")
        need(S > 0 and A > 0, f"{name}: the mapped state/action features have no dimensions")
        return {"features": {"observation.state": {"shape": [S]}, "action": {"shape": [A]}}, "image_size": H,
                "views": len(fm.images), "codebase_version": raw["codebase_version"]}
    try:
        shape = info["features"]["observation.state"]["shape"][0], info["features"]["action"]["shape"][0]
        whole = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731 - JSON true is no count
        ok = (all(whole(x) and 0 < x <= MAX_DIM for x in shape) and whole(info["image_size"])
              and isinstance(info["camera"], str) and isinstance(info["data_path"], str)
              and whole(info.get("views", 1)))
    except (KeyError, IndexError, TypeError):
        ok = False
    need(ok, f"demo metadata '{info_f}' lacks the features/state/action shapes, image_size, camera or data_path "
             "of a `vlaforge collect` dataset; re-create it")
    need(MIN_IMAGE <= info["image_size"] <= MAX_IMAGE and 1 <= info.get("views", 1) <= MAX_VIEWS,
         f"demo metadata '{info_f}' gives image_size {info['image_size']} and views {info.get('views', 1)}; a "
         f"`vlaforge collect` dataset has {MIN_IMAGE}..{MAX_IMAGE} px and 1..{MAX_VIEWS} views: re-create it")
    chunks, fps = info.get("chunks_size", 1000), info.get("fps", 10)
    need(isinstance(chunks, int) and not isinstance(chunks, bool) and chunks >= 1,
         f"demo metadata '{info_f}': chunks_size {json.dumps(chunks)[:20]} is not a whole number >= 1; re-create it")
    need(is_finite(fps) and fps > 0,
         f"demo metadata '{info_f}': fps {json.dumps(fps)[:20]} is not a positive number; re-create it")
    try:
        info["data_path"].format(episode_chunk=0, episode_index=0)
    except (KeyError, IndexError, ValueError, AttributeError):
        raise UsageError(f"demo metadata '{info_f}': data_path '{info['data_path'][:60]}' does not name episode "
                         "files with {episode_chunk} and {episode_index}; re-create it") from None
    tasks = read_jsonl(d / "meta" / "tasks.jsonl", "demo task list") if (d / "meta" / "tasks.jsonl").exists() else None
    need(tasks is not None and all(isinstance(t, dict) and {"task_index", "name", "task"} <= set(t) for t in tasks),
         f"demo task list '{d / 'meta' / 'tasks.jsonl'}' is missing or lacks task_index/name/task; re-create the demos")
    eps_f = d / "meta" / "episodes.jsonl"
    eps = read_jsonl(eps_f, "demo episode list") if eps_f.exists() else None
    need(eps is not None and all(isinstance(e, dict) and {"episode_index", "success", "task_name"} <= set(e)
                                 for e in eps),
         f"demo episode list '{eps_f}' is missing or lacks episode_index/success/task_name; re-create the demos")
    need(any(e["success"] for e in eps), f"{name} '{path}' holds no successful episode; collect more demos")
    first = None
    for e in eps:  # the files load_demos reads (their content is checked as it reads them)
        if e["success"] and isinstance(e["episode_index"], int):
            f = d / info["data_path"].format(episode_chunk=e["episode_index"] // info.get("chunks_size", 1000),
                                             episode_index=e["episode_index"])
            need(f.is_file(), f"{name}: demo episode file '{f}' is missing; re-collect the demos with `vlaforge collect`")
            first = first or f
    if first is not None:
        check_demo_episode(first, info, info_f)
    return info


def check_demo_episode(f: Path, info: dict, info_f: Path) -> None:
    """One episode file agrees with info.json: the camera column holds PNG frames of image_size x (views *
    image_size), the state and action rows have the declared lengths (a hand-edited info.json is refused here,
    not as a shape error inside training)."""
    import pyarrow.parquet as pq

    from vlaforge.data.demos import _unpng

    cam = f"observation.images.{info['camera']}"
    try:
        t = pq.read_table(f).slice(0, 1).to_pydict()
    except (OSError, ValueError):
        return  # an unreadable file: load_demos' own one-line error names it
    S, A = info["features"]["observation.state"]["shape"][0], info["features"]["action"]["shape"][0]
    V, H = info.get("views", 1), info["image_size"]
    need(cam in t, f"demo metadata '{info_f}': camera '{info['camera']}' names no column of '{f}'; re-create it")
    try:
        img = _unpng(t[cam][0]["bytes"])
        shape = tuple(img.shape)
        dims = len(t["observation.state"][0]), len(t["action"][0])
    except (KeyError, IndexError, TypeError, ValueError, OSError):
        raise UsageError(f"demo episode file '{f}' lacks readable frames, state or action; re-collect the demos") \
            from None
    need(shape[:2] == (H, H * V), f"demo metadata '{info_f}' says {V} view(s) of {H}px but '{f}' holds "
                                  f"{shape[0]}x{shape[1]} frames; re-create the dataset")
    need(dims == (S, A), f"demo metadata '{info_f}' says state/action dims {S}/{A} but '{f}' holds "
                         f"{dims[0]}/{dims[1]}; re-create the dataset")


