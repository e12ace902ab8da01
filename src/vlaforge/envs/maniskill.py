"""ManiSkill3 table-top tasks behind the ``TaskEnv`` contract (optional extra ``maniskill``).

    env = ManiSkillEnv(tasks="pick-cube,stack-cube")  # default: both
    image, state = env.reset(task_id=1, seed=3)       # uint8 (1, 64, 64, 3), float32 (16,)
    res = env.step_chunk(actions)                     # float32 (C, 7) in [-1, 1]

How to install: ``pip install 'vlaforge[maniskill]'`` (mani-skill 3, SAPIEN 3). SAPIEN needs a
Vulkan driver even without cameras. On a CPU-only Debian 12 machine the stock lavapipe (Mesa 22.3)
is too old ("Failed to find a supported physical device"); ``make sysdeps-maniskill`` unpacks
Mesa 25's lavapipe from bookworm-backports into ``~/.cache/vlaforge/mesa-vulkan`` without
touching the system's Mesa, and this module points ``VK_ICD_FILENAMES`` at it (set the variable
yourself, or ``VLAFORGE_VULKAN_ICD``, to use another driver). Without a usable driver, creating
an env raises ``MissingExtra`` with those instructions in one line.

* Tasks (``TASKS``): ``pick-cube`` = ``PickCube-v1`` ("pick up the red cube and move it to the
  green target"), ``stack-cube`` = ``StackCube-v1`` ("put the red cube on the green cube", the
  put-on task), ``place-sphere`` = ``PlaceSphere-v1`` ("place the blue ball in the bin"). The
  instructions are ours: ManiSkill's tasks carry none. Episodes last ``max_steps`` control steps
  (default 50, ManiSkill's own limit for these tasks, 20 Hz); success (``info["success"]``)
  ends the episode with reward 1.0.
* Initial states: ManiSkill's own seeded episode initialisation, ``env.reset(seed=seed)``, so
  the initial state is a pure function of ``(task_id, seed)``.
* Actions: ``pd_ee_delta_pose`` (7-D in [-1, 1]: end-effector position deltas up to 0.1 m and
  rotation deltas up to 0.1 rad per control step, then the gripper: +1 open, -1 closed; note the
  sign is the opposite of LIBERO's). ``control_mode`` selects another ManiSkill controller.
* ``state`` (16): the arm's 9 joint positions (7 arm + 2 fingers) and the tool-centre-point
  pose (position 3, quaternion wxyz 4).
* Camera: ManiSkill's ``base_camera`` at ``image_size`` (one view; the wrist camera exists only
  in some tasks). The simulator runs with ``obs_mode="state_dict"`` and the camera is rendered
  once per action chunk (RGB only, no depth read-back), not at every control step as ManiSkill's
  ``rgb`` mode does. ``shader_pack="minimal"`` (no ray tracing, simple lighting).
* Backend: ``sim_backend="auto"`` (default) or ``"cpu"``: each ``ManiSkillEnv`` is one simulated scene
  (``num_envs=1``; ``auto`` simulates it on the GPU where CUDA is available), batched by vlaforge's vector
  envs (in process or in workers). ``sim_backend="gpu"``: ``make_vec_env`` builds one ManiSkill
  env with ``num_envs=N`` scenes on the GPU (``ManiSkillBatch`` behind ``envs/batched.py``'s
  ``BatchedVecEnv``): hundreds of scenes in one process, observations kept on the GPU. One task per run
  (ManiSkill batches the scenes of one task); grouped resets copy one scene's state to its group
  (docs/maniskill.md).
* Scripted expert (``expert_action``): a waypoint pick-and-place on the end-effector deltas
  (above the object, down, close, lift, carry to the goal / above the other cube / above the bin,
  open for the put-on tasks); success rates are measured in docs/maniskill.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vlaforge.envs import MissingExtra, require
from vlaforge.envs.base import EnvError, EnvSpec, SimEnv, TaskSpec

SUITE = "maniskill"
DEFAULT_ICD = Path.home() / ".cache" / "vlaforge" / "mesa-vulkan" / "lvp_icd.json"
VULKAN_HELP = ("ManiSkill (SAPIEN) found no usable Vulkan driver{why}; on Debian 12 run `make sysdeps-maniskill` "
               "(unpacks Mesa 25 lavapipe from bookworm-backports to ~/.cache/vlaforge/mesa-vulkan) or "
               "`apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1`, or point VK_ICD_FILENAMES "
               "at a Vulkan 1.2+ driver")


def _use_private_vulkan() -> None:
    """Point the Vulkan loader at the private Mesa lavapipe, unless the user chose a driver."""
    if os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES"):
        return
    icd = Path(os.environ.get("VLAFORGE_VULKAN_ICD", DEFAULT_ICD))
    if icd.is_file():
        os.environ["VK_ICD_FILENAMES"] = str(icd)


_use_private_vulkan()  # before SAPIEN loads the Vulkan loader
torch = require("torch", "maniskill")
gym = require("gymnasium", "maniskill")
require("mani_skill.envs", "maniskill")  # registers the tasks with gymnasium

# our name -> (ManiSkill id, instruction)
_TASKS: dict[str, tuple[str, str]] = {
    "pick-cube": ("PickCube-v1", "pick up the red cube and move it to the green target"),
    "stack-cube": ("StackCube-v1", "put the red cube on the green cube"),
    "place-sphere": ("PlaceSphere-v1", "place the blue ball in the bin"),
}
TASKS: tuple[str, ...] = tuple(_TASKS)
TASK_INSTRUCTIONS: dict[str, str] = {k: v[1] for k, v in _TASKS.items()}
DEFAULT_TASKS = ("pick-cube", "stack-cube")
STATE_DIM = 16


def resolve_tasks(tasks: str | list[str] | tuple[str, ...] | None = None) -> list[TaskSpec]:
    """Comma-separated names, ManiSkill ids ("PickCube-v1") or a list -> TaskSpecs (default: pick-cube, stack-cube)."""
    if tasks is None:
        names = list(DEFAULT_TASKS)
    elif isinstance(tasks, str):
        names = [s.strip() for s in tasks.split(",") if s.strip()]
    else:
        names = [str(s).strip() for s in tasks]
    by_id = {v[0].lower(): k for k, v in _TASKS.items()}
    out: list[str] = []
    for n in names:
        key = n.lower().replace("_", "-")
        key = by_id.get(key, key)
        if key not in _TASKS:
            raise EnvError(f"unknown ManiSkill task '{n}'; choose from: {', '.join(TASKS)}")
        if key not in out:
            out.append(key)
    if not out:
        raise EnvError(f"no ManiSkill tasks selected; choose from: {', '.join(TASKS)}")
    return [TaskSpec(name=t, instruction=TASK_INSTRUCTIONS[t], suite=SUITE) for t in out]


def _backend(sim_backend: str) -> str:
    if sim_backend not in ("auto", "cpu", "gpu"):
        raise EnvError(f"maniskill sim_backend must be auto, cpu or gpu; got '{sim_backend}'")
    return ("gpu" if torch.cuda.is_available() else "cpu") if sim_backend == "auto" else sim_backend


def wants_batched(kwargs: dict) -> bool:
    """``make_vec_env`` builds ``ManiSkillBatch`` for ``sim_backend gpu`` (``auto`` keeps one scene per env)."""
    return str(kwargs.get("sim_backend", "auto")) == "gpu"


def batched_vec_env(num_envs: int, tasks=None, image_size: int = 64, **kwargs):
    from vlaforge.envs.batched import BatchedVecEnv

    return BatchedVecEnv(ManiSkillBatch(num_envs, tasks, image_size, **kwargs))


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class ManiSkillEnv(SimEnv):
    """One ManiSkill3 scene per task (built on first use, kept), serving a list of tasks. See the module docstring."""

    suite = SUITE

    def __init__(self, tasks: str | list[str] | None = None, image_size: int = 64, max_steps: int = 50,
                 control_mode: str = "pd_ee_delta_pose", sim_backend: str = "auto", render: bool = True):
        super().__init__(resolve_tasks(tasks), image_size, max_steps)
        sim_backend = _backend(sim_backend)
        self.control_mode = control_mode
        self.sim_backend = sim_backend
        self.render_images = bool(render)
        self._envs: dict[str, object] = {}
        action_dim = self._make(self.tasks[0].name).action_space.shape[-1]
        self.spec = EnvSpec(suite=SUITE, tasks=tuple(self.tasks), image_shape=(1, self.size, self.size, 3),
                            state_dim=STATE_DIM, action_dim=int(action_dim), max_steps=self.max_steps,
                            cameras=("base_camera",), renderer=f"sapien-vulkan ({sim_backend} sim)" if render else "none",
                            extra={"control_mode": control_mode, "sim_backend": sim_backend, "control_dt": 0.05})
        self._env = None
        self._image: np.ndarray | None = None
        self._state: np.ndarray | None = None
        self.expert = _Expert()

    def _make(self, name: str):
        if name not in self._envs:
            self._envs[name] = _make_env(name, 1, self.control_mode, self.sim_backend, self.size)
        return self._envs[name]

    # -- simulator calls (SimEnv runs reset / step_chunk / close around them) -----------------------
    def _reset(self, task: str, seed: int) -> None:
        self._env = self._make(task)
        self._env.reset(seed=seed % (2 ** 31))
        self.expert.reset(task)

    def _step(self, a_t: np.ndarray) -> tuple[bool, float]:
        _obs, _r, _term, _trunc, info = self._env.step(torch.as_tensor(a_t[None]))
        return bool(_np(info["success"]).reshape(-1)[0]), 0.0

    def expert_action(self) -> np.ndarray:
        if self._env is None:
            raise EnvError("call reset(task_id, seed) before expert_action")
        if self.control_mode != "pd_ee_delta_pose":
            raise EnvError("the ManiSkill scripted expert drives control_mode='pd_ee_delta_pose' only")
        if self.done:
            return np.zeros(self.spec.action_dim, np.float32)
        return self.expert.act(self._env.unwrapped, 0)

    def _close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()
        self._env = None

    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        image, state = _observe(self._env.unwrapped, self.size, self.render_images)
        self._image, self._state = np.ascontiguousarray(_np(image)[0]), _np(state)[0]
        return self._image, self._state


def _make_env(name: str, num_envs: int, control_mode: str, sim_backend: str, size: int):
    """One ManiSkill env of ``num_envs`` scenes of a task (state_dict observations; the camera is read by
    ``_observe``); a missing Vulkan driver is a one-line ``MissingExtra``."""
    try:
        return gym.make(_TASKS[name][0], num_envs=num_envs, obs_mode="state_dict", control_mode=control_mode,
                        sim_backend=sim_backend, render_mode=None,
                        sensor_configs={"width": size, "height": size, "shader_pack": "minimal"})
    except RuntimeError as e:
        msg = str(e)
        if "physical device" in msg or "Vulkan" in msg or "vk::" in msg:
            raise MissingExtra(VULKAN_HELP.format(why=f" ({msg.strip()})")) from None
        raise


def _observe(u, size: int, render: bool) -> tuple:
    """Every scene's (image uint8 (N, 1, H, W, 3), state float32 (N, 16)) as tensors on the simulator's device."""
    n = u.num_envs
    if render:
        image = _render_rgb(u, "base_camera")[..., :3].to(torch.uint8).reshape(n, 1, size, size, 3)
    else:
        image = torch.zeros((n, 1, size, size, 3), dtype=torch.uint8, device=u.device)
    qpos = u.agent.robot.get_qpos().reshape(n, -1)[:, :9]
    tcp = u.agent.tcp.pose.raw_pose.reshape(n, -1)[:, :7]
    return image, torch.cat([qpos, tcp], -1).float()


class ManiSkillBatch:
    """N scenes of one ManiSkill task in one env (``num_envs=N``; ``BatchedSim`` of ``envs/batched.py``).

    ``reset_one`` resets one scene with ManiSkill's partial reset (``options={"env_idx": [i]}``) and the seed, so
    the scene starts where a one-scene env of the same backend starts; ``copy_state`` copies scenes with
    ``get_state_dict`` / ``set_state_dict(env_idx)`` (grouped resets). ``hold`` keeps the gripper's last command
    with zero end-effector deltas. ``sim_backend`` is ManiSkill's (``gpu``; ``cpu`` allows one scene only and
    exists for tests)."""

    def __init__(self, num_envs: int, tasks: str | list[str] | None = None, image_size: int = 64, max_steps: int = 50,
                 control_mode: str = "pd_ee_delta_pose", sim_backend: str = "gpu", render: bool = True):
        specs = resolve_tasks(tasks)
        if len(specs) != 1:
            raise EnvError(f"maniskill sim_backend gpu simulates the scenes of one task per run; got "
                           f"{len(specs)} ({', '.join(t.name for t in specs)}): give one --tasks, or sim_backend cpu")
        if max_steps < 1 or image_size < 8:
            raise EnvError(f"maniskill needs max_steps >= 1 and image_size >= 8; got {max_steps}, {image_size}")
        self.task, self.num_envs, self.size, self.render = specs[0].name, int(num_envs), int(image_size), bool(render)
        self.control_mode, backend = control_mode, _backend(sim_backend)
        self.env = _make_env(self.task, self.num_envs, control_mode, backend, self.size)
        u = self.env.unwrapped
        self.device = torch.device(u.device)
        self.spec = EnvSpec(suite=SUITE, tasks=tuple(specs), image_shape=(1, self.size, self.size, 3),
                            state_dim=STATE_DIM, action_dim=int(self.env.action_space.shape[-1]), max_steps=int(max_steps),
                            cameras=("base_camera",),
                            renderer=f"sapien ({backend} sim, {self.num_envs} scenes)" if render else "none",
                            extra={"control_mode": control_mode, "sim_backend": backend, "control_dt": 0.05})
        self.experts = [_Expert() for _ in range(self.num_envs)]

    def reset_one(self, i: int, task: str, seed: int) -> None:
        self.env.reset(seed=seed % (2 ** 31), options={"env_idx": torch.tensor([i], device=self.device)})
        self.experts[i].reset(task)

    def copy_state(self, src, dst) -> None:
        u = self.env.unwrapped
        state = _tree_index(u.get_state_dict(), src.to(self.device))
        u.set_state_dict(state, dst.to(self.device))
        for s, d in zip(src.tolist(), dst.tolist()):
            self.experts[d].reset(self.experts[s].task)

    def step(self, actions):
        _obs, _r, _term, _trunc, info = self.env.step(actions)
        solved = torch.as_tensor(info["success"], device=self.device).reshape(-1).bool()
        return solved, torch.zeros(self.num_envs, device=self.device)

    def hold(self, last):
        out = torch.zeros_like(last)
        out[:, -1] = last[:, -1]
        return out

    def observe(self):
        image, state = _observe(self.env.unwrapped, self.size, self.render)
        return image, state, None

    def expert_actions(self) -> np.ndarray:
        if self.control_mode != "pd_ee_delta_pose":
            raise EnvError("the ManiSkill scripted expert drives control_mode='pd_ee_delta_pose' only")
        u = self.env.unwrapped
        return np.stack([e.act(u, i) for i, e in enumerate(self.experts)]).astype(np.float32)

    def close(self) -> None:
        self.env.close()


def _tree_index(tree, idx):
    if isinstance(tree, dict):
        return {k: _tree_index(v, idx) for k, v in tree.items()}
    return tree[idx]


def _render_rgb(u, camera: str):
    """One RGB frame of a sensor camera, (1, H, W, 3): what ``_get_obs_sensor_data`` does for one camera,
    without also reading back the depth/position texture (half the cost on a software renderer)."""
    for obj in u._hidden_objects:  # e.g. PickCube's goal marker is invisible to the cameras
        obj.hide_visual()
    u.scene.update_render(update_sensors=True, update_human_render_cameras=False)
    cam = u.scene.sensors[camera]
    cam.capture()
    return cam.get_obs(rgb=True, depth=False, position=False, segmentation=False)["rgb"]


# -- scripted expert ------------------------------------------------------------------------------
class _Expert:
    """Waypoint pick-and-place on ``pd_ee_delta_pose`` (rotation deltas 0: the gripper keeps pointing down).

    Phases: above the object, down to it, close, lift, carry to the place waypoint, (put-on
    tasks) lower and open. A moving phase ends within ``tol`` of its waypoint or after its budget.
    """

    tol, gain, step_m = 0.01, 1.0, 0.1  # step_m: metres per unit action in pd_ee_delta_pose

    def reset(self, task: str) -> None:
        self.task, self.phase, self.count, self.lift_from = task, 0, 0, None

    def _points(self, u, i: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(object position, place waypoint, hover height) for the task, in scene i."""
        p = lambda x: _np(x.pose.p).reshape(-1, 3)[i]  # noqa: E731
        if self.task == "pick-cube":
            return p(u.cube), p(u.goal_site), 0.06
        if self.task == "stack-cube":
            return p(u.cubeA), p(u.cubeB) + np.array([0.0, 0.0, 0.045]), 0.06
        return p(u.obj), p(u.bin) + np.array([0.0, 0.0, 0.06]), 0.06

    # (gripper, budget, timed) per phase: hover, descend, close, lift, carry, open
    phases = ((1.0, 20, False), (1.0, 15, False), (-1.0, 6, True), (-1.0, 10, False), (-1.0, 30, False),
              (1.0, 6, True))

    def _goal(self, obj, place, hover):
        if self.phase == 0:
            return obj + [0.0, 0.0, hover]
        if self.phase == 1:
            return obj + [0.0, 0.0, 0.0]
        if self.phase == 3:
            return np.array([self.lift_from[0], self.lift_from[1], max(place[2], obj[2] + hover)])
        if self.phase == 4:
            return place
        return None

    def act(self, u, i: int = 0) -> np.ndarray:
        """The next action of scene i."""
        tcp = _np(u.agent.tcp.pose.p).reshape(-1, 3)[i]
        obj, place, hover = self._points(u, i)
        last = len(self.phases) - (1 if self.task == "pick-cube" else 0)  # pick-cube holds at the goal
        while self.phase < last:
            grip, budget, timed = self.phases[self.phase]
            goal = self._goal(obj, place, hover)
            reached = goal is not None and not timed and np.linalg.norm(goal - tcp) < self.tol
            if self.count < budget and not reached:
                break
            if self.phase == 4 and self.task == "pick-cube":
                break
            self.phase, self.count = self.phase + 1, 0
            if self.phase == 3:
                self.lift_from = tcp.copy()
        a = np.zeros(7)
        if self.phase >= last:
            a[-1] = 1.0
            return a.astype(np.float32)
        self.count += 1
        goal = self._goal(obj, place, hover)
        if goal is not None:
            a[:3] = np.clip(self.gain * (goal - tcp) / self.step_m, -1.0, 1.0)
        a[-1] = self.phases[self.phase][0]
        return a.astype(np.float32)
