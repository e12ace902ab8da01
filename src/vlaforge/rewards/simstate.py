"""Reading the privileged ``sim_state`` channel: named points, path length, a contact proxy.

Suites name the entries of their ``sim_state`` vector in ``EnvSpec.sim_state_names`` with a
shared vocabulary: ``ee_x/ee_y[/ee_z]`` (end effector; PointReach's agent is a 2-D "end
effector"), ``gripper`` (opening, 1 = open), ``obj_*`` / ``obj1_*`` (objects), ``goal_*``,
``target<i>_*`` (PointReach's discs), ``prev_ee_*`` (Meta-World: one simulator step earlier).
``SimLayout`` turns those names into index lists, so reward code never hard-codes a suite's
column numbers. Reward models may read sim_state; policies never do (it does not exist on a
real robot).

Secondary metrics of GRAPE (per episode, from the decision-step states of a Rollout):

- ``path_length``: summed end-effector displacement between consecutive decisions (metres in
  Meta-World / Kitchen, arena units in PointReach).
- ``contact_proxy``: a collision indicator, as no suite exposes contact forces through the
  channel. PointReach: decisions at which the agent is inside a *non-goal* target disc
  (``radius``). Object suites: decisions at which the end effector is within ``near`` of an
  object while moving *relative to it* faster than ``fast`` per simulator step: a hand that
  strikes an object, not one that carries or pushes it along (then both move together).
  Default ``fast`` = 0.01 m per step: Meta-World's own controller moves the hand at most about
  that much per simulator step, so a larger relative speed means the object was knocked (its
  scripted experts stay below it: pulling a drawer handle reaches ~0.0095). It is a proxy, not a contact count: it is documented as such in
  every report that shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SimLayout:
    """Column indices of the named points of a suite's sim_state (empty tuple: absent)."""

    names: tuple[str, ...]

    def point(self, prefix: str) -> tuple[int, ...]:
        """Indices of ``<prefix>_x, <prefix>_y[, <prefix>_z]`` (those present, in xyz order)."""
        return tuple(self.names.index(f"{prefix}_{a}") for a in "xyz" if f"{prefix}_{a}" in self.names)

    def has(self, prefix: str) -> bool:
        return len(self.point(prefix)) >= 2

    def scalar(self, name: str) -> int | None:
        return self.names.index(name) if name in self.names else None

    @property
    def points(self) -> list[str]:
        """Every named point (prefix with at least x and y), e.g. ['ee', 'obj', 'obj1', 'goal']."""
        out = []
        for n in self.names:
            if n.endswith("_x") and n[:-2] not in out and self.has(n[:-2]) and not n.startswith("prev_"):
                out.append(n[:-2])
        return out

    def xyz(self, sim: torch.Tensor, prefix: str) -> torch.Tensor:
        """(..., P) -> (..., 3) positions of a point; 2-D points get z = 0."""
        idx = self.point(prefix)
        if len(idx) < 2:
            raise ValueError(f"sim_state has no point '{prefix}' (names: {', '.join(self.names[:12])} ...); "
                             "use a suite whose sim_state names it")
        p = sim[..., list(idx)]
        if p.shape[-1] == 2:
            p = torch.cat([p, torch.zeros_like(p[..., :1])], -1)
        return p


def layout_of(names: Sequence[str] | SimLayout) -> SimLayout:
    return names if isinstance(names, SimLayout) else SimLayout(tuple(names))


def _check_sim(sim: torch.Tensor | None, alive: torch.Tensor, lay: SimLayout) -> torch.Tensor:
    if sim is None or sim.ndim != 3 or sim.shape[-1] != len(lay.names):
        got = None if sim is None else tuple(sim.shape)
        raise ValueError(f"need sim_state of shape (T, N, {len(lay.names)}) as named by the suite; got {got} — "
                         "collect the rollout with keep_obs=True from a suite with a sim_state channel")
    assert alive.shape == sim.shape[:2], (alive.shape, sim.shape)
    return sim.float()


def path_length(sim: torch.Tensor, alive: torch.Tensor, names) -> torch.Tensor:
    """End-effector path length per episode.

    sim (T, N, P), alive (T, N) bool -> (N,): sum over consecutive alive decisions of |ee_{t+1} − ee_t|.
    """
    lay = layout_of(names)
    sim = _check_sim(sim, alive, lay)
    ee = lay.xyz(sim, "ee")  # (T, N, 3)
    step = (ee[1:] - ee[:-1]).norm(dim=-1) * (alive[1:] & alive[:-1])  # (T-1, N)
    return step.sum(0)


def contact_steps(sim: torch.Tensor, alive: torch.Tensor, names, radius: float = 0.12, near: float = 0.05,
                  fast: float = 0.01, executed: torch.Tensor | None = None) -> torch.Tensor:
    """Per-decision contact indicator (T, N) bool; see the module docstring for the proxy used."""
    lay = layout_of(names)
    sim = _check_sim(sim, alive, lay)
    ee = lay.xyz(sim, "ee")
    targets = [p for p in lay.points if p.startswith("target")]
    if targets and lay.has("goal"):  # PointReach: inside a distractor disc
        goal = lay.xyz(sim, "goal")
        hit = torch.zeros(alive.shape, dtype=torch.bool)
        for p in targets:
            q = lay.xyz(sim, p)
            distractor = (q - goal).norm(dim=-1) > 1e-6
            hit |= distractor & ((ee - q).norm(dim=-1) < radius)
        return hit & alive
    objs = [p for p in lay.points if p.startswith("obj")]
    if not objs:
        return torch.zeros(alive.shape, dtype=torch.bool)
    steps = executed.float().clamp_min(1) if executed is not None else torch.ones(alive.shape)
    hit = torch.zeros(alive.shape, dtype=torch.bool)
    for p in objs:
        q = lay.xyz(sim, p)
        real = q.abs().sum(-1) > 0  # Meta-World pads absent objects with zeros
        if lay.has("prev_ee") and lay.has(f"prev_{p}"):  # Meta-World: exact per-simulator-step velocities
            rel = ((ee - lay.xyz(sim, "prev_ee")) - (q - lay.xyz(sim, f"prev_{p}"))).norm(dim=-1)
        else:
            rel = torch.zeros(alive.shape)
            rel[:-1] = ((ee[1:] - ee[:-1]) - (q[1:] - q[:-1])).norm(dim=-1)
            rel = rel / steps
        hit |= real & ((ee - q).norm(dim=-1) < near) & (rel > fast)
    return hit & alive


def contact_proxy(sim: torch.Tensor, alive: torch.Tensor, names, **kw) -> torch.Tensor:
    """(N,) number of decisions flagged by ``contact_steps``."""
    return contact_steps(sim, alive, names, **kw).sum(0).float()
