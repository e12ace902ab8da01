"""Which (task, initial state) contexts to roll out next.

``TaskSampler`` draws tasks uniformly or by a success-rate curriculum over a window of recent
episodes per task (VLA-RL):

- ``near50`` (default curriculum, the paper's rule): ``P(i) ∝ exp((0.5 − |s_i − 0.5|) / τ)``,
  favouring tasks the policy solves about half the time, where a group carries most signal;
- ``hard_first`` (its released code): ``P(i) ∝ (1 − s_i)^(1/τ)``;
- ``need`` (multi-task distillation, "tasks scheduled by need"): ``P(i) ∝ max(1 − s_i, floor)``, in proportion
  to what the policy still fails, a solved task keeping ``floor`` so it is still seen (and not forgotten);
- ``uniform``: every task alike.

Tasks with no history count as s = 0.5 for ``near50`` and 0 for ``hard_first`` and ``need``. Seeds are drawn
from [0, 1e6), disjoint from demo and evaluation seeds. The state (window and RNG) is JSON
serialisable for full-state resume.
"""

from __future__ import annotations

from collections import deque

import numpy as np

TRAIN_SEED_RANGE = 1_000_000


def near50_weights(rates: np.ndarray, tau: float, floor: float = 0.0) -> np.ndarray:
    w = np.exp((0.5 - np.abs(rates - 0.5)) / tau)
    return w / w.sum()


def hard_first_weights(rates: np.ndarray, tau: float, floor: float = 0.0) -> np.ndarray:
    w = np.power(np.clip(1.0 - rates, 1e-3, 1.0), 1.0 / tau)
    return w / w.sum()


def need_weights(rates: np.ndarray, tau: float = 1.0, floor: float = 0.1) -> np.ndarray:
    """rates (n,) recent success per task -> (n,) ``max(1 - s, floor)`` normalised; ``floor`` > 0 (tau unused)."""
    w = np.maximum(1.0 - rates, floor)
    return w / w.sum()


def uniform_weights(rates: np.ndarray, tau: float, floor: float = 0.0) -> np.ndarray:
    return np.full(len(rates), 1.0 / len(rates))


CURRICULA = {"uniform": uniform_weights, "near50": near50_weights, "hard_first": hard_first_weights,
             "need": need_weights}
_PRIOR = {"uniform": 0.5, "near50": 0.5, "hard_first": 0.0, "need": 0.0}


class TaskSampler:
    def __init__(self, task_ids: list[int], curriculum: str = "uniform", tau: float = 0.2, window: int = 50,
                 seed: int = 0, floor: float = 0.1):
        if curriculum not in CURRICULA:
            raise ValueError(f"unknown curriculum '{curriculum}'; choose one of {', '.join(CURRICULA)}")
        self.task_ids, self.curriculum, self.tau, self.window, self.floor = list(task_ids), curriculum, tau, window, floor
        self.history: dict[int, deque] = {t: deque(maxlen=window) for t in self.task_ids}
        self.rng = np.random.default_rng(seed)

    def rates(self) -> np.ndarray:
        prior = _PRIOR[self.curriculum]
        return np.array([np.mean(self.history[t]) if self.history[t] else prior for t in self.task_ids])

    def weights(self) -> np.ndarray:
        return CURRICULA[self.curriculum](self.rates(), self.tau, self.floor)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n contexts: (task_ids (n,), seeds (n,))."""
        tasks = self.rng.choice(self.task_ids, size=n, p=self.weights())
        seeds = self.rng.integers(0, TRAIN_SEED_RANGE, size=n)
        return tasks.astype(np.int64), seeds.astype(np.int64)

    def update(self, task_ids, successes) -> None:
        for t, s in zip(np.asarray(task_ids).tolist(), np.asarray(successes).tolist()):
            if t in self.history:
                self.history[t].append(float(s))

    def state_dict(self) -> dict:
        return {"history": {str(t): list(h) for t, h in self.history.items()},
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        for t, h in state["history"].items():
            self.history[int(t)] = deque(h, maxlen=self.window)
        self.rng.bit_generator.state = state["rng"]
