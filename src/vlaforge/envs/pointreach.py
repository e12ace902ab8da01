"""PointReach: a built-in 2-D pixel reaching suite in pure numpy, for tests and smoke runs.

An agent (white disc) moves in the square arena [-1, 1]^2 among three coloured targets;
the instruction names the goal ("reach the blue target"). Observation: one 64x64 RGB image
plus the agent's 2-D position; action: a 2-D velocity in [-1, 1] scaled by ``speed``.
Success when the agent is within ``radius`` of the named target. Reward: 1 on success; with
``shaping`` = w > 0 also the potential-based progress term w * (d_before - d_after) per step
(d: distance to the goal target), whose episode sum w * (d_0 - d_T) counts net progress only, so
moving back and forth earns nothing (potential-based shaping, Ng et al., 1999; with episodes that
end anywhere it is not exactly invariant: a failed episode that ends closer scores higher). Success
itself is never shaped.

``sim_state`` (privileged, for reward models): ``SIM_STATE_NAMES`` = agent (ee_x, ee_y), goal
target (goal_x, goal_y), then every target's position in drawing order (target0_x ... target2_y).

Tasks are (goal colour, instruction template) pairs; a fixed set of combinations is held
out (``split="heldout"``) and never used for demos or training, so evaluation on them tests
whether colour and wording compose. Target positions and the start position are a
deterministic function of (task, seed). ``sim_backend="torch"`` (``--env-kwargs sim_backend torch sim_device cuda``) steps every env of a run in one
batched torch simulator on ``sim_device`` (``PointReachBatch`` behind ``envs/batched.py``'s ``BatchedVecEnv``):
the same layouts, dynamics and frames as the numpy arenas, with observations that stay on the device.
``privileged=True`` adds the goal's offset to the state, so that a state-only policy can solve
it: that isolates the RL algorithms from vision when debugging them. Thousands of steps/s on one core: it exists so that
tests show learning in seconds, not to replace a real simulator.

    python -m vlaforge.envs.pointreach   # prints steps/s
"""

from __future__ import annotations

import numpy as np

from vlaforge.envs.base import EnvError, EnvSpec, SimEnv, TaskSpec

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (235, 215, 40),
    "purple": (170, 60, 200),
}
TEMPLATES = ("reach the {} target", "go to the {} one", "move to the {} marker")
NUM_TARGETS = 3
SIM_STATE_NAMES = ("ee_x", "ee_y", "goal_x", "goal_y") + tuple(
    f"target{i}_{a}" for i in range(NUM_TARGETS) for a in "xy")


def _all_tasks() -> list[TaskSpec]:
    tasks = []
    for ti, template in enumerate(TEMPLATES):
        for ci, colour in enumerate(COLOURS):
            split = "heldout" if (ci + 2 * ti) % 5 == 4 else "train"
            tasks.append(TaskSpec(name=f"{colour}-{ti}", instruction=template.format(colour), suite="pointreach",
                                  split=split))
    # train tasks first so that "train" selections are a prefix-free, stable list
    return tasks


ALL_TASKS = _all_tasks()


def resolve_tasks(tasks: str | list[str] | None) -> list[TaskSpec]:
    """``None``/"all": every task; "train"/"heldout": that split; else comma-separated names."""
    if tasks is None or tasks == "all":
        return list(ALL_TASKS)
    if tasks in ("train", "heldout"):
        return [t for t in ALL_TASKS if t.split == tasks]
    names = tasks.split(",") if isinstance(tasks, str) else list(tasks)
    by_name = {t.name: t for t in ALL_TASKS}
    out = []
    for n in names:
        n = n.strip()
        if n not in by_name:
            raise EnvError(f"unknown pointreach task '{n}'; use 'train', 'heldout', 'all' or names like "
                           f"{', '.join(list(by_name)[:4])}")
        out.append(by_name[n])
    return out


class PointReachEnv(SimEnv):
    """One PointReach arena. See the module docstring."""

    suite = "pointreach"
    min_image_size = 16

    def __init__(self, tasks: str | list[str] | None = None, image_size: int = 64, max_steps: int = 48,
                 speed: float = 0.1, radius: float = 0.12, privileged: bool = False, shaping: float = 0.0,
                 sim_backend: str = "numpy", sim_device: str = "cpu"):
        super().__init__(resolve_tasks(tasks), image_size, max_steps, shaping)
        if sim_backend not in ("numpy", "torch"):
            raise EnvError(f"pointreach sim_backend must be numpy (one arena per env) or torch (every env in one "
                           f"batched arena on sim_device); got '{sim_backend}'")
        self.speed, self.radius = speed, radius
        self.privileged = bool(privileged)
        self.spec = EnvSpec(suite="pointreach", tasks=tuple(self.tasks), image_shape=(1, image_size, image_size, 3),
                            state_dim=4 if self.privileged else 2, action_dim=2, max_steps=max_steps, cameras=("top",), renderer="numpy",
                            sim_state_names=SIM_STATE_NAMES)
        # pixel-centre coordinates in arena units, for rendering
        c = (np.arange(image_size) + 0.5) / image_size * 2.0 - 1.0
        self._gx, self._gy = np.meshgrid(c, -c)  # row 0 is y = +1 (top)
        self._bg = np.full((image_size, image_size, 3), 30, np.uint8)
        self._disc_r = max(0.11, 2.5 / image_size * 2)
        self.pos = np.zeros(2)
        self.targets = np.zeros((NUM_TARGETS, 2))
        self.target_colours: list[str] = []
        self.goal = 0

    # -- simulator calls (SimEnv runs reset / step_chunk / close around them) -----------------------
    def _reset(self, task: str, seed: int) -> None:
        goal_colour = task.split("-")[0]
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 7919, _stable_hash(task)])
        others = [c for c in COLOURS if c != goal_colour]
        distractors = list(rng.choice(others, size=NUM_TARGETS - 1, replace=False))
        colours = [goal_colour] + distractors
        order = rng.permutation(NUM_TARGETS)
        self.target_colours = [colours[i] for i in order]
        self.goal = int(np.nonzero(order == 0)[0][0])
        # targets well apart from each other, agent away from all of them
        while True:
            pts = rng.uniform(-0.8, 0.8, size=(NUM_TARGETS + 1, 2))
            d = np.linalg.norm(pts[:, None] - pts[None], axis=-1) + np.eye(NUM_TARGETS + 1) * 9
            if d.min() > 0.45:
                break
        self.targets, self.pos = pts[:NUM_TARGETS], pts[NUM_TARGETS].copy()
        self._render_static()

    def _step(self, a_t: np.ndarray) -> tuple[bool, float]:
        goal = self.targets[self.goal]
        before = np.linalg.norm(self.pos - goal)
        self.pos = np.clip(self.pos + self.speed * a_t, -1.0, 1.0)
        after = np.linalg.norm(self.pos - goal)
        # potential-based: telescopes to shaping * (d_0 - d_T) over an episode
        return bool(after < self.radius), self.shaping * (before - after)

    def expert_action(self) -> np.ndarray:
        d = (self.targets[self.goal] - self.pos) / self.speed
        norm = np.abs(d).max()
        return (d / max(norm, 1.0)).astype(np.float32)

    def sim_state(self) -> np.ndarray:
        """Privileged state (10,): agent xy, goal xy, the three targets' xy (``SIM_STATE_NAMES``)."""
        return np.concatenate([self.pos, self.targets[self.goal], self.targets.ravel()]).astype(np.float32)

    # -- rendering -----------------------------------------------------------------------------
    def _disc(self, centre: np.ndarray) -> np.ndarray:
        return (self._gx - centre[0]) ** 2 + (self._gy - centre[1]) ** 2 < self._disc_r ** 2

    def _render_static(self) -> None:
        img = self._bg.copy()
        for xy, colour in zip(self.targets, self.target_colours):
            img[self._disc(xy)] = COLOURS[colour]
        self._static = img

    def _observe(self) -> tuple[np.ndarray, np.ndarray]:
        img = self._static.copy()
        # agent: a white ring-less disc at 2/3 the target size, drawn on top
        m = (self._gx - self.pos[0]) ** 2 + (self._gy - self.pos[1]) ** 2 < (0.66 * self._disc_r) ** 2
        img[m] = 255
        if self.privileged:  # the goal's offset in the state: solvable without vision (algorithm debugging)
            return img[None], np.concatenate([self.pos, self.targets[self.goal] - self.pos]).astype(np.float32)
        return img[None], self.pos.astype(np.float32)


class PointReachBatch:
    """N PointReach arenas as batched torch tensors on ``sim_device`` (a ``BatchedSim``, ``envs/batched.py``).

    Layouts come from the numpy arena's own ``_reset`` (so a (task, seed) starts where ``PointReachEnv`` starts);
    positions are float64 as in numpy, so steps, rewards and frames equal the numpy arenas' (tests/test_envs.py)."""

    def __init__(self, num_envs: int, tasks: str | list[str] | None = None, image_size: int = 64,
                 max_steps: int = 48, speed: float = 0.1, radius: float = 0.12, privileged: bool = False,
                 shaping: float = 0.0, sim_backend: str = "torch", sim_device: str = "cpu"):
        import torch

        self.torch = torch
        self.one = PointReachEnv(tasks, image_size, max_steps, speed, radius, privileged, shaping, sim_backend,
                                 sim_device)  # the layouts and the spec
        self.spec, self.num_envs = self.one.spec, int(num_envs)
        try:
            self.device = torch.device(sim_device)
            torch.empty(0, device=self.device)
        except (RuntimeError, AssertionError) as e:
            raise EnvError(f"pointreach sim_device '{sim_device}' is not usable here ({str(e).splitlines()[0]}); "
                           "use cpu, or cuda on a machine with a GPU") from None
        n, dev, f64 = self.num_envs, self.device, torch.float64
        self.pos = torch.zeros(n, 2, dtype=f64, device=dev)
        self.targets = torch.zeros(n, NUM_TARGETS, 2, dtype=f64, device=dev)
        self.goal = torch.zeros(n, dtype=torch.int64, device=dev)
        self.colours = torch.zeros(n, NUM_TARGETS, 3, dtype=torch.uint8, device=dev)
        self.gx = torch.as_tensor(self.one._gx, device=dev)
        self.gy = torch.as_tensor(self.one._gy, device=dev)

    def reset_one(self, i: int, task: str, seed: int) -> None:
        e, t = self.one, self.torch
        e._reset(task, seed)
        self.pos[i] = t.as_tensor(e.pos, device=self.device)
        self.targets[i] = t.as_tensor(e.targets, device=self.device)
        self.goal[i] = e.goal
        self.colours[i] = t.as_tensor(np.array([COLOURS[c] for c in e.target_colours], np.uint8), device=self.device)

    def copy_state(self, src, dst) -> None:
        for x in (self.pos, self.targets, self.goal, self.colours):
            x[dst] = x[src]

    def _goal_xy(self):
        return self.targets[self.torch.arange(self.num_envs, device=self.device), self.goal]

    def step(self, actions):
        e, t = self.one, self.torch
        goal = self._goal_xy()
        before = t.linalg.vector_norm(self.pos - goal, dim=-1)
        self.pos = (self.pos + e.speed * actions.float()).clamp(-1.0, 1.0)
        after = t.linalg.vector_norm(self.pos - goal, dim=-1)
        return after < e.radius, e.shaping * (before - after)

    def hold(self, last):
        return self.torch.zeros_like(last)  # a still agent

    def _disc(self, centre, r):  # (N, 2) -> (N, H, W)
        return (self.gx - centre[:, 0, None, None]) ** 2 + (self.gy - centre[:, 1, None, None]) ** 2 < r ** 2

    def observe(self):
        t, e = self.torch, self.one
        n, size = self.num_envs, e.size
        img = t.full((n, size, size, 3), 30, dtype=t.uint8, device=self.device)
        for k in range(NUM_TARGETS):
            img = t.where(self._disc(self.targets[:, k], e._disc_r)[..., None], self.colours[:, k, None, None, :], img)
        img = t.where(self._disc(self.pos, 0.66 * e._disc_r)[..., None], t.full_like(img, 255), img)
        goal = self._goal_xy()
        state = t.cat([self.pos, goal - self.pos], -1) if e.privileged else self.pos
        sim = t.cat([self.pos, goal, self.targets.reshape(n, -1)], -1).float()
        return img[:, None], state.float(), sim

    def expert_actions(self) -> np.ndarray:
        d = (self._goal_xy() - self.pos) / self.one.speed
        norm = d.abs().amax(-1, keepdim=True).clamp(min=1.0)
        return (d / norm).float().cpu().numpy()

    def close(self) -> None:
        pass


def wants_batched(kwargs: dict) -> bool:
    return kwargs.get("sim_backend", "numpy") == "torch"


def batched_vec_env(num_envs: int, tasks=None, image_size: int = 64, **kwargs):
    """``make_vec_env``'s hook (``sim_backend="torch"``): every env in one ``PointReachBatch``."""
    from vlaforge.envs.batched import BatchedVecEnv

    return BatchedVecEnv(PointReachBatch(num_envs, tasks, image_size, **kwargs))


def _stable_hash(s: str) -> int:
    h = 2166136261
    for ch in s.encode():
        h = ((h ^ ch) * 16777619) & 0xFFFFFFFF
    return h


if __name__ == "__main__":
    import time

    env = PointReachEnv()
    steps, t0 = 0, time.perf_counter()
    rng = np.random.default_rng(0)
    ep = 0
    while time.perf_counter() - t0 < 2.0:
        env.reset(ep % len(env.tasks), ep)
        ep += 1
        done = False
        while not done:
            r = env.step_chunk(rng.uniform(-1, 1, (4, 2)).astype(np.float32))
            steps += r.steps
            done = r.done
    print(f"pointreach: {steps / (time.perf_counter() - t0):.0f} env steps/s (chunk 4, one render per chunk)")
