"""RL algorithms, chosen by name. Each module has a Config dataclass, ``prepare(rollout, cfg)``
(advantages / pairs from a rollout) and ``update(policy, optimizer, batch, cfg, iteration)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from vlaforge.algos import grpo, ppo, rloo, tpo


@dataclass(frozen=True)
class Algo:
    name: str
    config: type
    module: ModuleType

    def prepare(self, rollout, cfg, **kw):
        return self.module.prepare(rollout, cfg, **kw)

    def update(self, policy, optimizer, batch, cfg, iteration: int, gen=None) -> dict:
        return self.module.update(policy, optimizer, batch, cfg, iteration, gen)


ALGOS: dict[str, Algo] = {
    "ppo": Algo("ppo", ppo.PPOConfig, ppo),
    "grpo": Algo("grpo", grpo.GRPOConfig, grpo),
    "rloo": Algo("rloo", rloo.RLOOConfig, rloo),
    "tpo": Algo("tpo", tpo.TPOConfig, tpo),
}


def get_algo(name: str) -> Algo:
    if name not in ALGOS:
        raise ValueError(f"unknown algorithm '{name}'; choose one of: {', '.join(ALGOS)}")
    return ALGOS[name]
