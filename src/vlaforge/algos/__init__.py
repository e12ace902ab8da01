"""RL algorithms, chosen by name from ``ALGOS``.

An algorithm is one file (``ppo.py`` is the model) that reads top to bottom:

- ``XConfig``: a dataclass, one docstring per field; it must have ``group_size`` (rollouts per initial
  state; 1 = none) and ``temperature`` (sampling temperature). ``TrainConfig`` gains ``--x.*`` from it.
- ``prepare(rollout, cfg, hooks) -> (batch, metrics)``: the rollout turned into what ``update`` trains on
  (a ``StepBatch``, ``PairBatch``, ...: anything with ``len()`` and ``index(idx)``, so the Ray backend can
  shard it). Runs once per iteration on the driver, before ``update``; ``hooks`` (``vlaforge.hooks.Hooks``)
  may supply ranking scores.
- ``update(policy, optimizer, batch, cfg, iteration, gen, sync, state) -> metrics``: the optimizer steps,
  usually ``common.optimize`` over the algorithm's own ``loss``; ``gen`` shuffles (checkpointed),
  ``sync`` makes data-parallel learners agree, ``state`` is the algorithm's own state (or None).
- optionally ``init_state(policy, cfg, spec) -> algos.state.AlgoState`` (replay buffer, own optimizers, target
  networks, a distillation's teachers): created once per run next to the optimizer, saved in and restored from
  every full-state checkpoint; ``spec`` is the run's ``EnvSpec`` (task names, sim_state names) or None.
- its checks: ``Algo.check`` runs the generic ones (``common.check_fields``: by field name, ``group_size`` >=
  ``min_group_size``) and the entry's ``check_fn(cfg)`` for the config's own; ``check_run(train_cfg, init)`` checks
  the algorithm against the rest of the run (a teacher checkpoint, an --init policy with LoRA). ``train()`` and
  the CLI run ``Algo.check`` before any work, with the same one-line ``UsageError``; ``check_run`` reads files and
  runs in the CLI's checks (``validate.check_with_init``), so a Python ``train()`` meets a bad teacher when its
  state is built (the distillation's ``--distill.teachers-cache`` is also the CLI's: ``cli._train``).

Adding an algorithm = its file + one ``register_algo`` line below; ``TrainConfig`` (``algo`` choices and the
``--x.*`` sub-config), its checks and the Ray backend follow from the registry. docs/architecture.md has an
off-policy example; tests/test_registry.py registers a toy algorithm and trains with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from vlaforge.algos import distill, dsrl, grpo, ppo, rloo, sac, tpo
from vlaforge.algos.common import LOCAL, check_fields
from vlaforge.hooks import NO_HOOKS


@dataclass(frozen=True)
class Algo:
    """One registry entry: the algorithm's functions, named explicitly."""

    name: str
    config: type
    """its Config dataclass"""
    prepare_fn: Callable
    """``prepare(rollout, cfg, hooks) -> (batch, metrics)``"""
    update_fn: Callable
    """``update(policy, optimizer, batch, cfg, iteration, gen, sync, state) -> metrics``"""
    init_state: Callable | None = None
    """``init_state(policy, cfg, spec) -> AlgoState`` for algorithms with state (None: on-policy, stateless)"""
    batch_fields: tuple[str, ...] = ("minibatch_size",)
    """config fields counting batch items per optimizer step (divided over data-parallel learners)"""
    min_group_size: int = 1
    """2 for a group method (its advantages compare rollouts of one initial state)"""
    check_fn: Callable | None = None
    """``(cfg) -> None``: the config's own checks beyond ``common.check_fields`` (one-line ``UsageError``)"""
    check_run: Callable | None = None
    """``(train_cfg, init) -> None``: checks of the algorithm against the run (``init``: the --init policy's
    config dict, None for a fresh policy); may read the files it names"""

    def prepare(self, rollout, cfg, hooks=NO_HOOKS):
        return self.prepare_fn(rollout, cfg, hooks)

    def update(self, policy, optimizer, batch, cfg, iteration: int, gen=None, sync=LOCAL, state=None) -> dict:
        return self.update_fn(policy, optimizer, batch, cfg, iteration, gen, sync, state)

    def check(self, cfg) -> None:
        """The algorithm's config (``--<name>.*``): the generic field checks, then its own."""
        check_fields(self.name, cfg, self.min_group_size)
        if self.check_fn is not None:
            self.check_fn(cfg)

    def new_state(self, policy, cfg, spec=None):
        """A fresh ``AlgoState`` for this run (``spec``: the run's ``EnvSpec``), or None."""
        return None if self.init_state is None else self.init_state(policy, cfg, spec)


ALGOS: dict[str, Algo] = {}


def register_algo(a: Algo) -> Algo:
    """Add an algorithm to ``ALGOS``. ``TrainConfig`` gains its ``--<name>.*`` sub-config when it is built (at import,
    from the algorithms registered by then); a later one runs with a ``TrainConfig`` subclass that holds its config
    under its name (tests/test_registry.py)."""
    ALGOS[a.name] = a
    return a


register_algo(Algo("ppo", ppo.PPOConfig, ppo.prepare, ppo.update))
register_algo(Algo("grpo", grpo.GRPOConfig, grpo.prepare, grpo.update, min_group_size=2))
register_algo(Algo("rloo", rloo.RLOOConfig, rloo.prepare, rloo.update, min_group_size=2))
register_algo(Algo("tpo", tpo.TPOConfig, tpo.prepare, tpo.update, batch_fields=("pairs_per_batch",), min_group_size=2,
                   check_run=tpo.check_run))
# off-policy (replay in their AlgoState; local runs): SAC/RLPD with demos, DSRL's noise-space SAC
register_algo(Algo("sac", sac.SACConfig, sac.prepare, sac.update, init_state=sac.init_state, batch_fields=()))
register_algo(Algo("dsrl", dsrl.DSRLConfig, dsrl.prepare, dsrl.update, init_state=dsrl.init_state, batch_fields=()))
# privileged-teacher distillation (DAgger): a state teacher labels the frames the pixel policy visits
register_algo(Algo("distill", distill.DistillConfig, distill.prepare, distill.update, init_state=distill.init_state,
                   batch_fields=(), check_run=distill.check_run))

AlgoName = Literal[tuple(ALGOS)]  # type: ignore[valid-type]  # TrainConfig.algo's choices


def get_algo(name: str) -> Algo:
    if name not in ALGOS:
        raise ValueError(f"unknown algorithm '{name}'; choose one of: {', '.join(ALGOS)}")
    return ALGOS[name]
