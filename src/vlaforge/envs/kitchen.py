"""Franka Kitchen (gymnasium-robotics ``FrankaKitchen-v1``) behind the ``TaskEnv`` contract.

    env = KitchenEnv(tasks="microwave,slide-cabinet")   # default: all seven sub-tasks
    image, state = env.reset(task_id=0, seed=3)          # uint8 (1, 64, 64, 3), float32 (18,)
    res = env.step_chunk(actions)                        # float32 (C, 9) in [-1, 1]

* One task per kitchen sub-task (``TASKS``): microwave, kettle, light-switch, slide-cabinet,
  hinge-cabinet, bottom-burner, top-burner. The wrapped env's goal is just that sub-task, so
  its own completion check (``info["step_task_completions"]``: the sub-task's joints within
  0.3 of their goal) decides success. Rewards are sparse: 1.0 on the success step, which
  ends the episode; otherwise the episode is truncated after ``max_steps`` (default 280,
  the env's own limit) steps of 0.08 s.
* Actions are the env's own: 9 joint velocities in [-1, 1] (7 arm joints, 2 fingers), scaled
  by 2 inside the env (1.0 = 2 rad/s, or 2 m/s for a finger) and turned into position targets.
* ``state`` is the env's proprioception, ``observation[:18]``: 9 robot joint positions then
  9 joint velocities, with the env's own small seeded sensor noise (as in the Minari datasets).
* The initial state is a pure function of ``(task_id, seed)``: the 7 arm joints start at the
  env's home pose plus uniform noise of +-``joint_noise`` rad (default 0.03) drawn from
  ``seed``, and the env's noise generator is seeded with ``seed``. The kitchen itself always
  starts in the same state (doors closed, kettle on the bottom left burner).
* Fast rendering with ``mjrender.FastRenderer`` (a ``mujoco.Renderer``): no multisampling, shadows or reflections.
  The scene has ~140k triangles, so a frame costs ~20-30 ms on a software renderer at any size;
  ``step_chunk`` renders once per chunk. ``render=False`` skips rendering (black frames) for
  physics-only uses such as testing the scripted experts.
* Scripted experts (``expert_action``) for ``EXPERT_TASKS``: damped-least-squares control of
  the end-effector site on MuJoCo's own Jacobian (``mj_jacSite``), with waypoints read from
  the model's handle/knob sites and a small state machine (approach, grasp or contact, then
  move along the articulation's own motion: a hinge's arc, a slide's axis, a knob's twist).
* ``sim_state`` (privileged, for reward models only), named in ``SIM_STATE_NAMES``: the 9 robot
  joint positions (q0..q6, finger_l, finger_r), the end-effector site xyz (ee_*), the finger
  opening (gripper, sum of the two finger joints / 0.08, ~1 = open), task_err (the current
  sub-task's joint distance to its goal: the env's own completion test is task_err < 0.3), then
  the kitchen's 21 object joint positions (kitchen_q9 .. kitchen_q29 = qpos[9:30]).
* ``load_kitchen_dataset`` reads a D4RL/Minari-style kitchen dataset from ``.npz`` (or HDF5
  when h5py is installed) into arrays in this suite's state/action convention.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vlaforge.envs import mjrender, require  # mjrender sets the MUJOCO_GL defaults before mujoco loads
from vlaforge.envs.base import EnvError, EnvSpec, SimEnv, TaskSpec

mujoco = require("mujoco", "kitchen")
require("gymnasium_robotics", "kitchen")
_kitchen = require("gymnasium_robotics.envs.franka_kitchen.kitchen_env", "kitchen")

SUITE = "kitchen"
SIM_STATE_NAMES = (tuple(f"q{i}" for i in range(7)) + ("finger_l", "finger_r", "ee_x", "ee_y", "ee_z", "gripper",
                                                       "task_err") + tuple(f"kitchen_q{i}" for i in range(9, 30)))

# our task name -> (gymnasium-robotics sub-task name, instruction)
_TASKS: dict[str, tuple[str, str]] = {
    "microwave": ("microwave", "open the microwave door"),
    "kettle": ("kettle", "move the kettle to the top left burner"),
    "light-switch": ("light switch", "turn on the light switch"),
    "slide-cabinet": ("slide cabinet", "slide the cabinet door open"),
    "hinge-cabinet": ("hinge cabinet", "open the hinge cabinet door"),
    "bottom-burner": ("bottom burner", "turn the bottom left burner knob"),
    "top-burner": ("top burner", "turn the top left burner knob"),
}
TASKS: tuple[str, ...] = tuple(_TASKS)
TASK_INSTRUCTIONS: dict[str, str] = {k: v[1] for k, v in _TASKS.items()}
EXPERT_TASKS: tuple[str, ...] = ("microwave", "kettle", "light-switch", "slide-cabinet", "hinge-cabinet",
                                 "bottom-burner", "top-burner")

# "overview": a fixed free camera that sees the arm, microwave, kettle, knobs, switch and cabinets
_OVERVIEW = {"distance": 2.0, "azimuth": 90.0, "elevation": -30.0, "lookat": (-0.3, 0.4, 2.1)}
CAMERAS = ("overview", "left_cap", "right_cap")  # the last two are the model's own cameras

_ACT_SCALE = 2.0  # the env multiplies actions by this (act_rng) before using them as velocities


def _canon(name: str) -> str:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    if key not in _TASKS:
        raise EnvError(f"unknown kitchen task '{name}'; choose from: {', '.join(TASKS)}")
    return key


def resolve_tasks(tasks: str | list[str] | tuple[str, ...] | None = None) -> list[TaskSpec]:
    """Comma-separated names or a list (spaces/underscores accepted, e.g. "light switch") -> TaskSpecs."""
    if tasks is None:
        names = list(TASKS)
    elif isinstance(tasks, str):
        names = [s for s in tasks.split(",") if s.strip()]
    else:
        names = [str(s) for s in tasks]
    seen: list[str] = []
    for n in names:
        c = _canon(n)
        if c not in seen:
            seen.append(c)
    if not seen:
        raise EnvError(f"no kitchen tasks selected; choose from: {', '.join(TASKS)}")
    return [TaskSpec(name=t, instruction=TASK_INSTRUCTIONS[t], suite=SUITE) for t in seen]


# -- scripted experts ---------------------------------------------------------------------------
def _rot(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix about a unit axis."""
    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, float), float(angle))
    m = np.zeros(9)
    mujoco.mju_quat2Mat(m, q)
    return m.reshape(3, 3)


# the gripper pointing at the kitchen (+y), fingers closing along x: EE axes x=z_w, y=x_w, z=y_w
_R_FRONT = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
_R_SIDE = _rot(np.array([0.0, 1.0, 0.0]), -np.pi / 2) @ _R_FRONT  # pointing at +y, fingers closing along z
_OPEN, _CLOSE = 1.0, -1.0


class _Expert:
    """A Cartesian controller (DLS on the end-effector site's Jacobian) plus per-task phases.

    Each ``_Phase`` gives the end-effector site's goal pose and the fingers' command; the phase
    advances when its ``done`` test holds or after its budget of env steps, and the task starts
    over from its first phase when a holding phase finds its grasp lost. Phase time is counted
    in env steps, so asking for the action several times at one state gives the same answer.
    """

    def __init__(self, model, home_q: np.ndarray, dt: float):
        self.m = model
        self.dt = float(dt)
        self.kp = model.actuator_gainprm[:7, 0].copy()
        self.damping = model.dof_damping[:7].copy()
        self.site = model.site("end_effector").id
        self.home = np.asarray(home_q[:7], float).copy()
        self.jacp = np.zeros((3, model.nv))
        self.jacr = np.zeros((3, model.nv))
        self.task = ""
        self.phase = 0
        self.phase_t0 = 0  # env step at which the current phase began
        self.phase_steps = 0
        self.memo: dict = {}

    def reset(self, task: str) -> None:
        self.task, self.phase, self.phase_t0, self.phase_steps, self.memo = task, 0, 0, 0, {}

    # low-level: end-effector pose -> joint-velocity action
    def track(self, data, p_goal, R_goal, grip: float, vmax: float = 0.5) -> np.ndarray:
        p = data.site_xpos[self.site]
        R = data.site_xmat[self.site].reshape(3, 3)
        v = 5.0 * (np.asarray(p_goal) - p)
        n = np.linalg.norm(v)
        if n > vmax:
            v *= vmax / n
        q_cur, q_goal, dq = np.zeros(4), np.zeros(4), np.zeros(4)
        mujoco.mju_mat2Quat(q_cur, R.reshape(-1))
        mujoco.mju_mat2Quat(q_goal, np.asarray(R_goal, float).reshape(-1))
        mujoco.mju_negQuat(q_cur, q_cur)
        mujoco.mju_mulQuat(dq, q_goal, q_cur)  # world-frame rotation from current to goal
        if dq[0] < 0:
            dq = -dq
        w = np.zeros(3)
        mujoco.mju_quat2Vel(w, dq, 1.0)
        w *= 4.0
        n = np.linalg.norm(w)
        if n > 1.5:
            w *= 1.5 / n
        mujoco.mj_jacSite(self.m, data, self.jacp, self.jacr, self.site)
        J = np.vstack([self.jacp[:, :7], self.jacr[:, :7]])
        q = data.qpos[:7]
        lo, hi = self.m.jnt_range[:7, 0], self.m.jnt_range[:7, 1]
        free = np.ones(7, bool)
        for _ in range(3):  # joints at a limit that the solution pushes further are taken out
            Jf = J * free
            JJt = Jf @ Jf.T + (0.05 ** 2) * np.eye(6)
            Jpinv = Jf.T @ np.linalg.inv(JJt)
            qd = Jpinv @ np.concatenate([v, w])
            # null-space pull towards the home posture keeps the elbow where it started
            qd += ((np.eye(7) - Jpinv @ Jf) @ (1.0 * (self.home - q))) * free
            stuck = free & (((q < lo + 0.03) & (qd < 0)) | ((q > hi - 0.03) & (qd > 0)))
            if not stuck.any():
                break
            free &= ~stuck
        # the env turns action a into the position target q + 2a*dt of a P servo (gain kp) on a
        # damped joint: moving at qd against gravity needs kp*(target - q) = damping*qd + bias
        a = np.zeros(9)
        a[:7] = (self.damping * qd + data.qfrc_bias[:7]) / (self.kp * _ACT_SCALE * self.dt)
        peak = np.max(np.abs(a[:7]))
        if peak > 1.0:
            a[:7] /= peak  # scale, not clip: keeps the direction of motion
        a[7:] = grip
        return a

    def act(self, sim: _Sim) -> np.ndarray:
        phases = _PHASES[self.task]
        self.phase_steps = sim.t - self.phase_t0
        lost = phases[self.phase].lost
        if lost is not None and lost(sim, self):  # the grasp slipped: start over from the approach
            self.phase, self.phase_t0, self.phase_steps, self.memo = 0, sim.t, 0, {}
        while self.phase < len(phases) - 1:
            ph = phases[self.phase]
            if ph.done(sim, self) or self.phase_steps >= ph.budget:
                self.phase += 1
                self.phase_t0, self.phase_steps = sim.t, 0
            else:
                break
        ph = phases[self.phase]
        p, R = ph.goal(sim, self)
        return np.clip(self.track(sim.data, p, R, ph.grip), -1.0, 1.0).astype(np.float32)


def _never(sim, ex) -> bool:
    return False


class _Phase(NamedTuple):
    goal: Callable  # (sim, expert) -> (end-effector position, rotation matrix)
    grip: float  # finger action: +1 open, -1 close
    done: Callable = _never  # (sim, expert) -> bool: go on to the next phase
    budget: int = 10_000  # ... or after this many steps
    lost: Callable | None = None  # (sim, expert) -> bool: the grasp slipped, start over


def _near(tol: float):
    def done(sim: _Sim, ex: _Expert) -> bool:
        p, _ = _PHASES[ex.task][ex.phase].goal(sim, ex)
        return bool(np.linalg.norm(sim.data.site_xpos[ex.site] - p) < tol)
    return done


def _after(n: int):
    return lambda sim, ex: ex.phase_steps >= n


def _site(sim: _Sim, name: str) -> np.ndarray:
    return sim.data.site(name).xpos.copy()


def _away(name: str, offset, tol: float):
    """True when the end effector is more than ``tol`` from a site (plus an offset): a lost grasp."""
    return lambda sim, ex: bool(np.linalg.norm(sim.data.site_xpos[ex.site] - _site(sim, name)
                                               - np.asarray(offset, float)) > tol)


_Z = np.array([0.0, 0.0, 1.0])


def _pinned(key: str, name: str, offset, R=_R_FRONT):
    """A waypoint at a site's position, frozen on the phase's first call (plus an offset)."""
    def goal(sim: _Sim, ex: _Expert):
        k = (key, ex.phase)
        if k not in ex.memo:
            ex.memo[k] = _site(sim, name)
        return ex.memo[k] + np.asarray(offset, float), R
    return goal


def _at(name: str, offset, R=_R_FRONT):
    return lambda sim, ex: (_site(sim, name) + np.asarray(offset, float), R)


def _door(sim: _Sim, joint: str):
    jid = sim.model.joint(joint).id
    return sim.data.xanchor[jid].copy(), sim.data.xaxis[jid].copy(), float(sim.data.qpos[sim.model.jnt_qposadr[jid]])


def _door_at(handle: str, joint: str, offset, yaw: float = 0.0, dz: float = 0.0):
    """A waypoint by a door's handle, in the door's frame: ``offset`` and the gripper's ``yaw`` (about z,
    from pointing at +y) are for the closed door and turn with it; the grasp point is ``dz`` above the site."""
    def goal(sim: _Sim, ex: _Expert):
        _anchor, axis, q = _door(sim, joint)
        turn = _rot(axis, q)
        p = _site(sim, handle) + np.array([0.0, 0.0, dz]) + turn @ np.asarray(offset, float)
        return p, turn @ _rot(_Z, yaw) @ _R_FRONT
    return goal


def _hinge_pull(handle: str, joint: str, sign: float, step: float = 0.2, yaw: float = 0.0, dz: float = 0.0):
    """Move the grasped handle along its door's arc (``sign``: the opening direction), turning the gripper with it."""
    def goal(sim: _Sim, ex: _Expert):
        anchor, axis, q = _door(sim, joint)
        h = _site(sim, handle) + np.array([0.0, 0.0, dz])
        p = anchor + _rot(axis, sign * step) @ (h - anchor)
        return p, _rot(axis, q) @ _rot(_Z, yaw) @ _R_FRONT
    return goal


def _door_phases(handle: str, joint: str, sign: float, yaw: float = 0.0, dz: float = 0.0):
    """Approach a door's (vertical bar) handle square to the door, grasp it, swing the door open."""
    front = _rot(_Z, yaw) @ np.array([0.0, -0.14, 0.0])
    return [
        _Phase(_door_at(handle, joint, front, yaw, dz), _OPEN, _near(0.015), 60),
        _Phase(_door_at(handle, joint, (0.0, 0.0, 0.0), yaw, dz), _OPEN, _near(0.01), 40),
        _Phase(_door_at(handle, joint, (0.0, 0.0, 0.0), yaw, dz), _CLOSE, _after(6), 6),
        _Phase(_hinge_pull(handle, joint, sign, yaw=yaw, dz=dz), _CLOSE, lost=_away(handle, (0.0, 0.0, dz), 0.05)),
    ]


def _twist(knob: str, angle: float):
    """Hold the end effector on a knob's axis and turn the gripper about +y (the knob opens that way)."""
    def goal(sim: _Sim, ex: _Expert):
        key = ("twist", knob)
        if key not in ex.memo:
            ex.memo[key] = _site(sim, knob)
        return ex.memo[key] + np.array([0.0, -0.04, 0.0]), _rot(np.array([0.0, 1.0, 0.0]), angle) @ _R_FRONT
    return goal


def _knob_phases(site: str):
    """Grasp a knob's vertical fin from the front and twist it (both left knobs open turning about +y)."""
    return [
        _Phase(_at(site, (0.0, -0.14, 0.0)), _OPEN, _near(0.015), 60),    # in front of the fin
        _Phase(_at(site, (0.0, -0.04, 0.0)), _OPEN, _near(0.008), 40),    # fingers around the fin
        _Phase(_at(site, (0.0, -0.04, 0.0)), _CLOSE, _after(6), 6),       # grasp
        _Phase(_twist(site, 1.1), _CLOSE),                                # turn
    ]


def _fixed(p, R=_R_FRONT):
    p = np.asarray(p, float)
    return lambda sim, ex: (p, R)


_KETTLE_GOAL = _kitchen.OBS_ELEMENT_GOALS["kettle"][:3] + np.array([0.0, 0.0, 0.259])  # its handle site there
_HOLD = (0.0, -0.01, 0.0)  # end effector relative to the kettle's handle site while holding it
_kettle_lost = _away("kettle_site", _HOLD, 0.05)

# task -> phases
_PHASES: dict[str, list[_Phase]] = {
    # grasp the kettle's top handle (a bar along x) from the front, lift, carry to the top left burner
    "kettle": [
        _Phase(_at("kettle_site", (0.0, -0.15, 0.0), _R_SIDE), _OPEN, _near(0.006), 80),
        _Phase(_pinned("kettle", "kettle_site", _HOLD, _R_SIDE), _OPEN, _near(0.008), 40),
        _Phase(_pinned("kettle", "kettle_site", _HOLD, _R_SIDE), _CLOSE, _after(8), 8),
        _Phase(_pinned("kettle", "kettle_site", (0.0, -0.01, 0.07), _R_SIDE), _CLOSE, _near(0.02), 30,
               lost=_kettle_lost),
        _Phase(_fixed(_KETTLE_GOAL + (0.0, -0.01, 0.07), _R_SIDE), _CLOSE, _near(0.015), 120, lost=_kettle_lost),
        _Phase(_fixed(_KETTLE_GOAL + (0.0, -0.01, 0.01), _R_SIDE), _CLOSE, _near(0.01), 40, lost=_kettle_lost),
        _Phase(_fixed(_KETTLE_GOAL + (0.0, -0.01, 0.01), _R_SIDE), _OPEN),
    ],
    # push the handle's bar sideways with closed fingers, below its middle (the top is at the arm's reach)
    "slide-cabinet": [
        _Phase(_at("slide_site", (-0.06, -0.12, -0.08)), _CLOSE, _near(0.015), 60),
        _Phase(_at("slide_site", (-0.06, 0.0, -0.08)), _CLOSE, _near(0.01), 40),
        _Phase(_pinned("slide", "slide_site", (0.25, 0.0, -0.08)), _CLOSE),
    ],
    # push the switch's lever to the left
    "light-switch": [
        _Phase(_at("light_site", (0.06, -0.12, 0.0)), _CLOSE, _near(0.015), 60),
        _Phase(_at("light_site", (0.05, -0.01, 0.0)), _CLOSE, _near(0.01), 40),
        _Phase(_pinned("light", "light_site", (-0.12, -0.01, 0.0)), _CLOSE),
    ],
    # the microwave is turned 0.3 rad about z; its door opens turning about -z; grasp 9 cm up its bar
    "microwave": _door_phases("microhandle_site", "microwave", -1.0, yaw=0.3, dz=0.09),
    # the right door of the hinge cabinet (the one the env's goal opens) turns about +z
    "hinge-cabinet": _door_phases("hinge_site2", "right_hinge_cabinet", 1.0),
    "bottom-burner": _knob_phases("knob2_site"),
    "top-burner": _knob_phases("knob4_site"),
}
assert set(_PHASES) == set(EXPERT_TASKS)


# -- simulator ----------------------------------------------------------------------------------
class _Sim:
    """One FrankaKitchen-v1 env (its goal switched per episode), a fast renderer, the expert."""

    def __init__(self, first_task: str, height: int, width: int, camera: str, render: bool):
        # the registered FrankaKitchen-v1 class, built directly (no TimeLimit/checker wrappers)
        self.env = _kitchen.KitchenEnv(tasks_to_complete=[_TASKS[first_task][0]])
        self.robot = self.env.robot_env
        self.model, self.data = self.env.model, self.env.data
        self.home_qpos = np.array(self.robot.init_qpos, dtype=float).copy()
        self.camera = camera
        self.renderer: mjrender.FastRenderer | None = None
        if render:
            if camera == "overview":
                cam = mujoco.MjvCamera()
                cam.type = mujoco.mjtCamera.mjCAMERA_FREE
                cam.distance, cam.azimuth, cam.elevation = (_OVERVIEW["distance"], _OVERVIEW["azimuth"],
                                                             _OVERVIEW["elevation"])
                cam.lookat[:] = _OVERVIEW["lookat"]
            else:
                cam = camera
            self.renderer = mjrender.FastRenderer(self.model, height, width, camera=cam)
        self.expert = _Expert(self.model, self.home_qpos, self.robot.dt)
        self.t = 0  # env steps since reset

    def reset(self, task: str, seed: int, joint_noise: float) -> np.ndarray:
        gym_name = _TASKS[task][0]
        # the env rebuilds tasks_to_complete from its goal dict at reset: make it just this sub-task
        self.env.goal = {gym_name: _kitchen.OBS_ELEMENT_GOALS[gym_name]}
        qpos = self.home_qpos.copy()
        rng = np.random.default_rng([int(seed), 0x6B17])
        qpos[:7] += rng.uniform(-joint_noise, joint_noise, size=7)
        self.robot.init_qpos = qpos  # read by the robot env's reset_model
        obs, info = self.env.reset(seed=int(seed))
        if list(info["tasks_to_complete"]) != [gym_name]:
            raise EnvError(f"gymnasium-robotics did not take the sub-task '{gym_name}' as its only goal "
                           f"(got {info['tasks_to_complete']}); this gymnasium-robotics version is unsupported")
        self.t = 0
        self.expert.reset(task)
        return obs["observation"]

    def step(self, action: np.ndarray, gym_name: str) -> tuple[np.ndarray, bool]:
        obs, _r, _term, _trunc, info = self.env.step(action.astype(np.float64))
        self.t += 1
        return obs["observation"], gym_name in info["step_task_completions"]

    def render(self) -> np.ndarray:
        return self.renderer.render(self.data)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None
        self.env.close()


class KitchenEnv(SimEnv):
    """One Franka Kitchen simulator serving a list of sub-tasks. See the module docstring."""

    suite = SUITE

    def __init__(self, tasks: str | list[str] | None = None, image_size: int = 64, camera: str = "overview",
                 max_steps: int = 280, render: bool = True, joint_noise: float = 0.03):
        if camera not in CAMERAS:
            raise EnvError(f"unknown kitchen camera '{camera}'; choose one of: {', '.join(CAMERAS)}")
        if not 0.0 <= joint_noise <= 0.3:
            raise EnvError(f"kitchen joint_noise must be in [0, 0.3] rad; got {joint_noise}")
        super().__init__(resolve_tasks(tasks), image_size, max_steps)
        self.camera = camera
        self.render_images = bool(render)
        self.joint_noise = float(joint_noise)
        self.spec = EnvSpec(suite=SUITE, tasks=tuple(self.tasks), image_shape=(1, self.size, self.size, 3),
                            state_dim=18, action_dim=9, max_steps=self.max_steps, cameras=(camera,),
                            renderer=os.environ.get("MUJOCO_GL", "egl") if render else "none",
                            extra={"expert_tasks": [t.name for t in self.tasks if t.name in EXPERT_TASKS],
                                   "control_dt": 0.08},
                            sim_state_names=SIM_STATE_NAMES)
        self._sim: _Sim | None = None
        self._gym_obs: np.ndarray | None = None  # the simulator's last observation (its first 18 = state)
        self._image: np.ndarray | None = None
        self._state: np.ndarray | None = None
        mjrender.register_for_exit_cleanup(self)

    # -- simulator calls (SimEnv runs reset / step_chunk / close around them) -----------------------
    def _reset(self, task: str, seed: int) -> None:
        if self._sim is None:
            self._sim = _Sim(task, self.size, self.size, self.camera, self.render_images)
        self._gym_obs = self._sim.reset(task, seed % (2 ** 63), self.joint_noise)

    def _step(self, a_t: np.ndarray) -> tuple[bool, float]:
        self._gym_obs, solved = self._sim.step(a_t, _TASKS[self._task][0])
        return solved, 0.0

    def expert_action(self) -> np.ndarray:
        if self._sim is None or self._task is None:
            raise EnvError("call reset(task_id, seed) before expert_action")
        if self._task not in EXPERT_TASKS:
            raise EnvError(f"kitchen has no scripted expert for '{self._task}'; "
                           f"tasks with one: {', '.join(EXPERT_TASKS)}")
        if self.done:
            return np.zeros(9, np.float32)
        return self._sim.expert.act(self._sim)

    def _close(self) -> None:
        if self._sim is not None:
            self._sim.close()
            self._sim = None

    def sim_state(self) -> np.ndarray:
        """Privileged state (35,) now (layout: ``SIM_STATE_NAMES``)."""
        if self._sim is None or self._task is None:
            raise EnvError("call reset(task_id, seed) before sim_state")
        d = self._sim.data
        gym_name = _TASKS[self._task][0]
        err = np.linalg.norm(d.qpos[_kitchen.OBS_ELEMENT_INDICES[gym_name]] - _kitchen.OBS_ELEMENT_GOALS[gym_name])
        return np.concatenate([d.qpos[:9], d.site_xpos[self._sim.expert.site], [(d.qpos[7] + d.qpos[8]) / 0.08, err],
                               d.qpos[9:30]]).astype(np.float32)

    # -- helpers -------------------------------------------------------------------------------
    def task_joints(self) -> np.ndarray:
        """The current sub-task's joint values (what the env's completion check compares to its goal)."""
        if self._sim is None or self._task is None:
            raise EnvError("call reset(task_id, seed) first")
        return self._sim.data.qpos[_kitchen.OBS_ELEMENT_INDICES[_TASKS[self._task][0]]].copy()

    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sim.renderer is not None:
            self._image = self._sim.render()[None]
        else:
            self._image = np.zeros((1, self.size, self.size, 3), np.uint8)
        self._state = np.asarray(self._gym_obs[:18], dtype=np.float32).copy()
        return self._image, self._state


# -- offline datasets ---------------------------------------------------------------------------
@dataclass
class KitchenDataset:
    """A D4RL/Minari-style kitchen dataset as flat per-step arrays in this suite's conventions."""

    state: np.ndarray  # float32 (M, 18): robot joint positions (9) then velocities (9), as KitchenEnv
    actions: np.ndarray  # float32 (M, 9) joint velocities in [-1, 1], as KitchenEnv
    object_qpos: np.ndarray  # float32 (M, 21): the kitchen's joint positions (qpos[9:30])
    completed: np.ndarray  # bool (M, 7): per step, which of TASKS the env's own check counts as done
    episode: np.ndarray  # int64 (M,) episode index
    frame: np.ndarray  # int64 (M,) step index within the episode
    episode_end: np.ndarray  # int64 (M,) index one past the episode's last step
    source_layout: str  # "minari-59" (FrankaKitchen-v1 observation) or "d4rl-60" (kitchen-*-v0)
    task_names: tuple[str, ...] = TASKS

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def num_episodes(self) -> int:
        return int(self.episode.max()) + 1 if len(self.episode) else 0

    def episode_tasks(self, ep: int) -> list[str]:
        """The sub-tasks completed at some step of episode ``ep``."""
        done = self.completed[self.episode == ep].any(axis=0)
        return [t for t, d in zip(self.task_names, done) if d]


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    keys = ("observations", "actions", "terminals", "timeouts")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in keys if k in z.files}
    if path.suffix in (".hdf5", ".h5"):
        try:
            import h5py
        except ImportError:
            raise EnvError(f"reading '{path.name}' needs h5py (pip install h5py); or save the same keys "
                           f"(observations, actions, terminals, timeouts) with numpy.savez as .npz") from None
        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k][()]) for k in keys if k in f}
    raise EnvError(f"unsupported kitchen dataset file '{path.name}': use .npz (or .hdf5 with h5py installed) "
                   f"with keys observations, actions, terminals[, timeouts]")


def load_kitchen_dataset(path: str | Path) -> KitchenDataset:
    """Read a D4RL-style kitchen dataset: flat per-step arrays ``observations`` (M, D), ``actions``
    (M, 9), ``terminals`` (M,) and optionally ``timeouts`` (M,), from ``.npz`` (no extra dependency)
    or ``.hdf5`` (needs h5py). An episode ends after a step whose terminal or timeout flag is set.

    Observation layouts, told apart by D: 59 = FrankaKitchen-v1's ``observation`` as in Minari's
    kitchen datasets (robot qpos 9, robot qvel 9, kitchen qpos 21, kitchen qvel 20); 60 = D4RL
    kitchen-*-v0 (robot qpos 9, kitchen qpos 21, goal 30), which has no velocities: they are
    finite differences of the joint positions over the env's 0.08 s step (0 at an episode's start).
    """
    path = Path(path)
    if not path.exists():
        raise EnvError(f"no kitchen dataset at '{path}'")
    arr = _read_arrays(path)
    missing = [k for k in ("observations", "actions", "terminals") if k not in arr]
    if missing:
        raise EnvError(f"kitchen dataset '{path.name}' lacks {missing}; it needs observations, actions, terminals")
    obs = np.asarray(arr["observations"], np.float64)
    act = np.asarray(arr["actions"], np.float32)
    M = len(obs)
    if obs.ndim != 2 or act.shape != (M, 9) or np.shape(arr["terminals"]) != (M,):
        raise EnvError(f"kitchen dataset shapes must be observations (M, 59|60), actions (M, 9), terminals (M,); "
                       f"got {obs.shape}, {act.shape}, {np.shape(arr['terminals'])}")
    ends = np.asarray(arr["terminals"], bool).copy()
    if "timeouts" in arr:
        ends |= np.asarray(arr["timeouts"], bool)
    if M:
        ends[-1] = True
    episode = np.concatenate([[0], np.cumsum(ends)[:-1]]).astype(np.int64) if M else np.zeros(0, np.int64)
    starts = np.concatenate([[True], ends[:-1]]) if M else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(M), 0)) if M else np.zeros(0, np.int64)
    frame = np.arange(M, dtype=np.int64) - first
    last = np.nonzero(ends)[0]
    episode_end = (last + 1)[episode] if M else np.zeros(0, np.int64)
    if obs.shape[1] == 59:
        layout, state, objects = "minari-59", obs[:, :18], obs[:, 18:39]
    elif obs.shape[1] == 60:
        layout, qpos, objects = "d4rl-60", obs[:, :9], obs[:, 9:30]
        vel = np.zeros_like(qpos)
        vel[1:] = (qpos[1:] - qpos[:-1]) / 0.08
        vel[starts] = 0.0
        state = np.concatenate([qpos, vel], axis=1)
    else:
        raise EnvError(f"kitchen observations must have 59 (FrankaKitchen-v1 / Minari) or 60 (D4RL v0) columns; "
                       f"got {obs.shape[1]}")
    completed = np.zeros((M, len(TASKS)), bool)
    for i, t in enumerate(TASKS):
        g = _TASKS[t][0]
        cols = _kitchen.OBS_ELEMENT_INDICES[g] - 9  # qpos index -> column of the kitchen's qpos
        dist = np.linalg.norm(objects[:, cols] - _kitchen.OBS_ELEMENT_GOALS[g], axis=1)
        completed[:, i] = dist < _kitchen.BONUS_THRESH
    return KitchenDataset(state=state.astype(np.float32), actions=np.clip(act, -1.0, 1.0),
                          object_qpos=objects.astype(np.float32), completed=completed, episode=episode,
                          frame=frame, episode_end=episode_end.astype(np.int64), source_layout=layout)


import_d4rl_kitchen = load_kitchen_dataset  # the same reader under the D4RL name
