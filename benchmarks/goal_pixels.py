"""How much of a Meta-World camera frame shows each task's goal marker: the pixels that change when the ``goal``
site is made transparent, per MT10 task and image size, over evaluation layouts (seeds from 10,000,000).

A pixel policy can only put the hand where the frame shows it should go. In reach, push and pick-place the goal is a
free point in space, drawn only by that marker; in the other MT10 tasks it is implied by the object itself (a door
handle, a drawer, a window, a button, the peg's box), so the marker matters little there.

    MUJOCO_GL=egl python benchmarks/goal_pixels.py --sizes 64,128 --layouts 20 --out docs/bench/goal_pixels.json

JSON: ``{"meta": {...}, "rows": [{"task", "image_size", "camera", "layouts", "goal_site", "mean_px", "min_px",
"max_px", "frame_px"}]}`` (the pixel counts are null for a task without a ``goal`` site).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import mujoco
import numpy as np

from vlaforge.envs.metaworld import _Sim  # the env's own simulator + fast renderer, one task each
from vlaforge.fsutil import atomic_write_text

MT10 = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3"]
EVAL_SEED_BASE = 10_000_000


def marker_pixels(task: str, size: int, layouts: int, camera: str) -> list[int] | None:
    """Per layout: the number of pixels of the ``camera`` frame that differ between the goal site drawn and hidden;
    None when the task has no ``goal`` site (button-press-topdown; peg-insert-side has one, hidden inside its box)."""
    sim = _Sim(task, size, size, 150)
    try:
        model = sim.env.model
        goal = [i for i in range(model.nsite) if mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_SITE, i) == "goal"]
        if not goal:
            return None
        alpha = model.site_rgba[goal, 3].copy()
        counts = []
        for k in range(layouts):
            sim.reset(EVAL_SEED_BASE + k)
            shown = sim.render(camera).astype(np.int16)
            model.site_rgba[goal, 3] = 0.0
            hidden = sim.render(camera).astype(np.int16)
            model.site_rgba[goal, 3] = alpha
            counts.append(int((np.abs(shown - hidden).sum(-1) > 0).sum()))
        return counts
    finally:
        sim.close()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="mt10", help="comma-separated Meta-World tasks, or mt10")
    ap.add_argument("--sizes", default="64,128", help="comma-separated square image sizes")
    ap.add_argument("--layouts", type=int, default=20, help="evaluation layouts per task")
    ap.add_argument("--camera", default="corner")
    ap.add_argument("--out", default="docs/bench/goal_pixels.json")
    a = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if a.layouts < 1 or not sizes or min(sizes) < 8:
        ap.exit(2, f"goal_pixels.py: error: --layouts must be >= 1 and --sizes comma-separated whole numbers >= 8; "
                   f"got --layouts {a.layouts} --sizes {a.sizes}\n")
    tasks = MT10 if a.tasks == "mt10" else [t for t in a.tasks.split(",") if t]
    from vlaforge.envs import EnvError
    from vlaforge.envs.metaworld import CAMERAS, resolve_tasks

    try:
        tasks = [s.name for s in resolve_tasks(tasks)[0]] if tasks else []
    except EnvError as e:
        ap.exit(2, f"goal_pixels.py: error: --tasks: {e}\n")
    if not tasks:
        ap.exit(2, "goal_pixels.py: error: --tasks: no task given\n")
    if a.camera not in CAMERAS:
        ap.exit(2, f"goal_pixels.py: error: --camera must be one of {', '.join(CAMERAS)}; got {a.camera}\n")
    rows = []
    for size in sizes:
        for task in tasks:
            c = marker_pixels(task, size, a.layouts, a.camera)
            rows.append({"task": task, "image_size": size, "camera": a.camera, "layouts": a.layouts,
                         "goal_site": c is not None, "mean_px": round(float(np.mean(c)), 2) if c else None,
                         "min_px": min(c) if c else None, "max_px": max(c) if c else None, "frame_px": size * size})
            print(json.dumps(rows[-1]), flush=True)
    data = {"meta": {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                     "command": "python benchmarks/goal_pixels.py " + " ".join(
                         f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()),
                     "metric": "pixels whose colour changes when the goal site is transparent, per layout"},
            "rows": rows}
    atomic_write_text(Path(a.out), json.dumps(data, indent=1))
    return data


if __name__ == "__main__":
    main()
