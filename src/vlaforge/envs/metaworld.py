"""Meta-World 3.x (MuJoCo Sawyer arm, tasks named ``*-v3``) behind the ``TaskEnv`` contract.

    env = MetaWorldEnv(tasks="reach-v3,button-press-topdown-v3")   # or "MT10", "ML10-test", "MT1:push-v3"
    image, state = env.reset(task_id=0, seed=3)                     # uint8 (1, 64, 64, 3), float32 (4,)
    res = env.step_chunk(actions)                                   # float32 (C, 4) in [-1, 1]

* The initial state is a pure function of ``(task_id, seed)``: Meta-World's own object/goal
  randomisation is drawn from a generator seeded with ``seed`` and the MuJoCo data is fully reset.
* ``state`` is proprioception only: end-effector xyz and gripper opening (the first 4 dims of
  Meta-World's observation). Object and goal positions are visible in the image only, so the
  state is the same for every seed at reset; seeds differ in the picture.
  ``privileged=True`` appends object 0 xyz, object 1 xyz and goal xyz (``PRIVILEGED_STATE_NAMES``,
  13 dims): a state-only policy can then solve the task without vision (algorithm and action-head
  studies apart from localisation from pixels).
* ``wrist=True`` adds Meta-World's hand-mounted ``gripperPOV`` camera as a second view (V = 2; each view
  costs one more render per chunk).
* ``render=False`` skips the camera: every image is zeros (same shape). Only for policies that
  ignore images (the tiny policy's ``state`` backbone); ~5x the env steps per second with 4-step
  chunks (docs/benchmarks.md). Training, evaluation and SFT refuse image-reading policies then.
* One Meta-World env (and one offscreen renderer) per task name, created on first use and reused: ~94 MiB of host
  memory each (docs/bench/env_memory.json), so an env that runs every MT50 task holds ~4.7 GB.
  ``cache=K`` keeps at most K of them (as ``LiberoEnv``'s ``cache``), closing the least recently reset one when a
  K+1-th task is reset (rebuilt on its next reset); the default 0 keeps every task's. Episodes are the same either
  way (the initial state is a function of ``(task_id, seed)`` only), and the vector envs reset each episode on an
  env that still holds its task (``cached_tasks``); a rebuild costs ~1 s (``benchmarks/env_cache.py``).
* Fast rendering (``mjrender.FastRenderer``): no multisampling, shadows or reflections (~7 ms per 64x64 frame on a
  software renderer instead of ~90 ms). The ``corner`` camera is mounted upside down in
  Meta-World's scene; its image is rotated 180 degrees so it is upright (not mirrored).
* On Linux, MUJOCO_GL defaults to egl and LP_NUM_THREADS to 0 (set before mujoco is imported):
  with llvmpipe's render threads, a process forked after rendering hangs in its first render.
* Rewards are sparse: 1.0 on the step where the task is first solved; the episode then ends.
  ``shaping`` = w > 0 adds the potential-based term w * (phi(s') - phi(s)) per simulator step with
  phi = Meta-World's own shaped reward / 10 (in [0, 1]): dense progress that telescopes over an
  episode to w * (phi_T - phi_0): net progress only, nothing to gain by prolonging episodes or
  oscillating (a failed episode that ends nearer the goal does score higher); success is unchanged.
* ``sim_state`` (privileged, for reward models only) is Meta-World's full 39-D observation, named
  in ``SIM_STATE_NAMES``: hand xyz (ee_*), gripper opening in [0, 1] (1 = open), object 0 position
  and quaternion (obj_*, obj_q*; for drawers and buttons the handle / button point), object 1
  (obj1_*, zeros when the task has one object), the same 18 values one step earlier (prev_*),
  then the goal position (goal_*).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from vlaforge.envs import mjrender, require  # mjrender sets the MUJOCO_GL defaults before mujoco loads
from vlaforge.envs.base import EnvError, EnvSpec, SimEnv, TaskSpec

_mw = require("metaworld", "metaworld")
mujoco = require("mujoco", "metaworld")
_env_dict = require("metaworld.env_dict", "metaworld")
_policies = require("metaworld.policies", "metaworld")

SUITE = "metaworld"
_CUR = ("ee_x", "ee_y", "ee_z", "gripper", "obj_x", "obj_y", "obj_z", "obj_qw", "obj_qx", "obj_qy", "obj_qz",
        "obj1_x", "obj1_y", "obj1_z", "obj1_qw", "obj1_qx", "obj1_qy", "obj1_qz")
SIM_STATE_NAMES = _CUR + tuple(f"prev_{n}" for n in _CUR) + ("goal_x", "goal_y", "goal_z")
PRIVILEGED_STATE_NAMES = ("ee_x", "ee_y", "ee_z", "gripper", "obj_x", "obj_y", "obj_z", "obj1_x", "obj1_y", "obj1_z",
                          "goal_x", "goal_y", "goal_z")
_PRIV_IDX = np.array([SIM_STATE_NAMES.index(n) for n in PRIVILEGED_STATE_NAMES])
CAMERAS = ("corner", "topview", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
_UPSIDE_DOWN = {"corner"}  # cameras whose frame is rolled 180 degrees in Meta-World's XML

TASK_INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the nut and place it onto the peg",
    "basketball-v3": "pick up the ball and dunk it into the basket",
    "bin-picking-v3": "pick up the cube and place it into the other bin",
    "box-close-v3": "pick up the lid and close the box with it",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button behind the wall from the top",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "press the button behind the wall from the front",
    "coffee-button-v3": "push the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out from under the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "rotate the dial a full turn",
    "disassemble-v3": "pick the nut off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock down",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock up",
    "hand-insert-v3": "insert the gripper into the hole",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-open-v3": "turn the faucet on by rotating it to the left",
    "faucet-close-v3": "turn the faucet off by rotating it to the right",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the puck up out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grasp the stick and push the box with it",
    "stick-pull-v3": "grasp the stick and pull the box with it",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "push-back-v3": "pull the puck back to the goal",
    "reach-v3": "reach the red goal position",
    "reach-wall-v3": "reach the red goal position behind the wall",
    "shelf-place-v3": "pick up the puck and place it onto the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

# benchmark name -> list of (task, split); resolved from Meta-World's own benchmark definitions
_BENCHMARKS = {
    "MT10": lambda: [(t, "train") for t in _env_dict.MT10_V3],
    "MT25": lambda: [(t, "train") for t in _env_dict.MT25_V3],
    "MT50": lambda: [(t, "train") for t in _env_dict.MT50_V3],
    **{f"ML{k}-train": (lambda d=d: [(t, "train") for t in d["train"]])
       for k, d in ((10, _env_dict.ML10_V3), (25, _env_dict.ML25_V3), (45, _env_dict.ML45_V3))},
    **{f"ML{k}-test": (lambda d=d: [(t, "heldout") for t in d["test"]])
       for k, d in ((10, _env_dict.ML10_V3), (25, _env_dict.ML25_V3), (45, _env_dict.ML45_V3))},
    **{f"ML{k}": (lambda d=d: [(t, "train") for t in d["train"]] + [(t, "heldout") for t in d["test"]])
       for k, d in ((10, _env_dict.ML10_V3), (25, _env_dict.ML25_V3), (45, _env_dict.ML45_V3))},
}


def instruction_for(task: str) -> str:
    """The instruction of a task; a readable fallback derived from the name for unknown ones."""
    if task in TASK_INSTRUCTIONS:
        return TASK_INSTRUCTIONS[task]
    words = task.removesuffix("-v3").replace("-", " ")
    return f"{words} task"


def _check_task(name: str) -> str:
    if name in _env_dict.ALL_V3_ENVIRONMENTS:
        return name
    if name + "-v3" in _env_dict.ALL_V3_ENVIRONMENTS:
        return name + "-v3"
    raise EnvError(f"unknown metaworld task '{name}'; use names like reach-v3, push-v3, drawer-close-v3, "
                   f"button-press-topdown-v3 or a benchmark ({', '.join(list(_BENCHMARKS)[:6])}, MT1:<task>)")


def _resolve_one(spec: str) -> tuple[list[tuple[str, str]], str | None]:
    """A benchmark name or a task name -> ([(task, split)], benchmark name or None)."""
    if spec in _BENCHMARKS:
        return _BENCHMARKS[spec](), spec
    if spec.startswith("MT1:"):
        return [(_check_task(spec[4:].strip()), "train")], "MT1"
    return [(_check_task(spec), "train")], None


def resolve_tasks(tasks: str | list[str] | tuple[str, ...] | None = None,
                  benchmark: str | None = None) -> tuple[list[TaskSpec], str | None]:
    """Task names / benchmark -> (TaskSpecs, benchmark name or None).

    ``tasks`` is a comma-separated string or a list of task names or benchmark names ("MT10",
    "MT50", "ML10-train", "ML10-test", "ML10", "MT1:<task>"). ``benchmark`` alone selects all its
    tasks; with ``tasks`` as well it restricts them to that benchmark and takes their splits from it.
    """
    if isinstance(tasks, str):
        names = [s.strip() for s in tasks.split(",") if s.strip()]
    elif tasks is None:
        names = []
    else:
        names = [str(s).strip() for s in tasks]
    bench_pairs: list[tuple[str, str]] | None = None
    if benchmark is not None:
        bench_pairs, benchmark = _resolve_one(benchmark)
        if benchmark is None:
            raise EnvError(f"'{bench_pairs[0][0]}' is a task, not a benchmark; choose one of: "
                           f"{', '.join(_BENCHMARKS)}, MT1:<task>")
    if not names:
        names = [] if bench_pairs is not None else ["reach-v3"]
    pairs: list[tuple[str, str]] = []
    found_bench = None
    for n in names:
        got, b = _resolve_one(n)
        pairs += got
        found_bench = found_bench or b
    if bench_pairs is not None:
        split_of = dict(bench_pairs)
        if pairs:
            outside = [t for t, _ in pairs if t not in split_of]
            if outside:
                raise EnvError(f"tasks {outside} are not in benchmark {benchmark}; "
                               f"its tasks: {', '.join(list(split_of)[:8])} ...")
            pairs = [(t, split_of[t]) for t, _ in pairs]
        else:
            pairs = bench_pairs
    seen: dict[str, str] = {}
    for t, split in pairs:
        seen.setdefault(t, split)
    specs = [TaskSpec(name=t, instruction=instruction_for(t), suite=SUITE, split=s) for t, s in seen.items()]
    return specs, benchmark or found_bench


class _Sim:
    """One Meta-World env for one task, its fast renderer and its scripted expert."""

    def __init__(self, task: str, height: int, width: int, max_steps: int):
        cls = _env_dict.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{task}-goal-observable"]
        # seed= makes construction leave numpy's global random state untouched
        self.env = cls(seed=0)
        self.env.max_path_length = max_steps + 1  # our own time limit ends episodes first
        self.renderer = mjrender.FastRenderer(self.env.model, height, width)
        self.policy = _policies.ENV_POLICY_MAP[task]()

    def reset(self, seed: int) -> np.ndarray:
        env = self.env
        env._freeze_rand_vec = False  # draw a fresh object/goal layout ...
        env.seeded_rand_vec = True  # ... from env.np_random, seeded here
        env.seed(seed)
        obs, _ = env.reset()
        return obs

    def render(self, camera: str) -> np.ndarray:
        img = self.renderer.render(self.env.data, camera)
        if camera in _UPSIDE_DOWN:
            img = np.ascontiguousarray(img[::-1, ::-1])
        return img

    def close(self) -> None:
        self.renderer.close()
        self.env.close()


class MetaWorldEnv(SimEnv):
    """One Meta-World simulator instance serving a list of tasks. See the module docstring."""

    suite = SUITE

    def __init__(self, tasks: str | list[str] | None = None, image_size: int = 64, camera: str = "corner",
                 max_steps: int = 200, benchmark: str | None = None, shaping: float = 0.0,
                 privileged: bool = False, render: bool = True, wrist: bool = False, cache: int = 0):
        if camera not in CAMERAS:
            raise EnvError(f"unknown metaworld camera '{camera}'; choose one of: {', '.join(CAMERAS)}")
        if isinstance(cache, bool) or not isinstance(cache, (int, float, np.integer)) or not np.isfinite(cache) \
                or cache < 0 or int(cache) != cache:
            raise EnvError(f"metaworld cache must be a whole number >= 1 (the task simulators each env keeps; omit it to "
                           f"keep every task's); got {cache!r}")
        specs, bench = resolve_tasks(tasks, benchmark)
        if not specs:
            raise EnvError("no metaworld tasks selected; pass tasks='reach-v3' or a benchmark like 'MT10'")
        super().__init__(specs, image_size, max_steps, shaping)
        self.camera = camera
        self.cameras = (camera, "gripperPOV") if wrist else (camera,)  # wrist 1: a second, hand-mounted view
        self.privileged = bool(privileged)
        self.render = bool(render)
        self._state_idx = _PRIV_IDX if self.privileged else slice(0, 4)  # of Meta-World's observation
        self._phi = 0.0  # potential (Meta-World's own reward / 10) of the current state, with shaping
        self.spec = EnvSpec(suite=SUITE, tasks=tuple(specs), image_shape=(len(self.cameras), self.size, self.size, 3),
                            state_dim=len(_PRIV_IDX) if self.privileged else 4, action_dim=4,
                            max_steps=self.max_steps, cameras=self.cameras,
                            renderer=os.environ.get("MUJOCO_GL", "egl") if self.render else "none", extra={"benchmark": bench},
                            sim_state_names=SIM_STATE_NAMES, sim_state_groups={"privileged": PRIVILEGED_STATE_NAMES})
        self.cache = int(cache)
        self.sims_built = 0  # simulators this env has built (with a cache: rebuilds included)
        self._sims: dict[str, _Sim] = {}  # in order of last reset (the least recently reset first)
        self._sim: _Sim | None = None
        self._obs: np.ndarray | None = None  # last full Meta-World observation (for the expert)
        self._image: np.ndarray | None = None
        self._state: np.ndarray | None = None
        mjrender.register_for_exit_cleanup(self)

    # -- simulator calls (SimEnv runs reset / step_chunk / close around them) -----------------------
    def _reset(self, task: str, seed: int) -> None:
        self._sim = None  # until this reset's simulator stands (an eviction may close the current one)
        sim = self._sims.pop(task, None)
        if sim is None:
            if self.cache and len(self._sims) >= self.cache:
                self._sims.pop(next(iter(self._sims))).close()  # the least recently reset task's
            sim = _Sim(task, self.size, self.size, self.max_steps)
            self.sims_built += 1
        self._sims[task] = sim  # now the most recently reset
        self._sim = sim
        self._obs = sim.reset(seed % (2 ** 63))
        if self.shaping:
            self._phi = float(sim.env.evaluate_state(self._obs, np.zeros(4, np.float32))[0]) / 10.0

    def _step(self, a_t: np.ndarray) -> tuple[bool, float]:
        self._obs, r_mw, _term, _trunc, info = self._sim.env.step(a_t)
        dense = 0.0
        if self.shaping:  # potential-based: the episode's sum telescopes to shaping * (phi_T - phi_0)
            phi = float(r_mw) / 10.0
            dense, self._phi = self.shaping * (phi - self._phi), phi
        return bool(info["success"]), dense

    def expert_action(self) -> np.ndarray:
        if self._sim is None or self._obs is None:
            raise EnvError("call reset(task_id, seed) before expert_action")
        with warnings.catch_warnings():  # "Constant(s) may be too high": the gains are meant to saturate
            warnings.simplefilter("ignore", UserWarning)
            act = self._sim.policy.get_action(self._obs)
        return np.clip(np.asarray(act, dtype=np.float32), -1.0, 1.0)

    def sim_state(self) -> np.ndarray:
        """Meta-World's full observation (39,) now (layout: ``SIM_STATE_NAMES``)."""
        if self._obs is None:
            raise EnvError("call reset(task_id, seed) before sim_state")
        return np.asarray(self._obs, dtype=np.float32).copy()

    def cached_tasks(self) -> frozenset[str] | None:
        """The tasks whose simulators are alive when ``cache`` bounds them below the task count; None otherwise
        (every task's is kept)."""
        return frozenset(self._sims) if 0 < self.cache < len(self.tasks) else None

    def _close(self) -> None:
        for sim in self._sims.values():
            sim.close()
        self._sims.clear()
        self._sim = None

    # -- helpers -------------------------------------------------------------------------------
    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        if self.render:
            self._image = np.stack([self._sim.render(c) for c in self.cameras])
        elif self._image is None:
            self._image = np.zeros((len(self.cameras), self.size, self.size, 3), np.uint8)
            self._image.flags.writeable = False  # shared by every step of this env
        self._state = np.asarray(self._obs[self._state_idx], dtype=np.float32).copy()
        return self._image, self._state
