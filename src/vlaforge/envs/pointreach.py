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
deterministic function of (task, seed). ``privileged=True`` adds the goal's offset to the state, so that a state-only policy can solve
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
                 speed: float = 0.1, radius: float = 0.12, privileged: bool = False, shaping: float = 0.0):
        super().__init__(resolve_tasks(tasks), image_size, max_steps, shaping)
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
