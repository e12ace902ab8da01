"""The learning half of a backend (TorchRL/SB3 split: who collects and who learns are separate).

``PolicyLearner`` owns what an update needs — the policy on the learner's device, its optimizer (with the
policy-lr ramp), the algorithm's state, the update generator and the learners' ``sync`` — and runs the
algorithm's ``update`` on a batch it moves to its device once. ``LocalBackend`` (train/loop.py) holds one beside
its in-process collector; each Ray ``Learner`` actor (distributed/actors.py) holds one beside its all-reduce
``sync``. This is the one spot where a learner's device is placed and its optimizer built.

    learner = PolicyLearner(cfg, policy, opt_state=None, gen=gen, algo_state=None, device=resolve_device("cpu"))
    metrics = learner.update(batch, iteration)
"""

from __future__ import annotations

import torch

from vlaforge.algos import get_algo
from vlaforge.algos.common import LOCAL
from vlaforge.device import precision_context, to_device
from vlaforge.errors import CheckpointError
from vlaforge.schema import is_finite_number


def policy_lr(cfg, iteration: int) -> float:
    """The policy learning rate at ``iteration`` (0-based) under ``cfg.lr_warmup``."""
    if cfg.lr_warmup > 0 and iteration < cfg.lr_warmup:
        return cfg.lr * (iteration + 1) / cfg.lr_warmup
    return cfg.lr


def set_policy_lr(optimizer: torch.optim.Optimizer, cfg, iteration: int) -> None:
    """Set the policy parameter group (the first; ``make_optimizer``) to ``policy_lr``; the value head's is untouched."""
    optimizer.param_groups[0]["lr"] = policy_lr(cfg, iteration)


def make_optimizer(policy, cfg) -> torch.optim.Optimizer:
    """The policy's optimizer: the trainable non-critic parameters at ``cfg.lr``, the critic's at ``cfg.value_lr``
    (``--freeze-backbone`` freezes the backbone first); the class is the policy's ``optimizer_class()``."""
    if cfg.lr_warmup < 0:
        raise ValueError(f"--lr-warmup must be >= 0 iterations; got {cfg.lr_warmup}")
    if cfg.freeze_backbone:
        for p in policy.backbone_parameters():
            p.requires_grad_(False)
    value = [p for p in policy.value_parameters() if p.requires_grad]
    vid = {id(p) for p in value}
    rest = [p for p in policy.parameters() if p.requires_grad and id(p) not in vid]
    groups = [{"params": rest, "lr": cfg.lr}]
    if value:
        groups.append({"params": value, "lr": cfg.value_lr})
    opt_cls = policy.optimizer_class()
    return opt_cls(groups, weight_decay=cfg.weight_decay)


def _finite_numbers(v) -> bool:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return True
    if isinstance(v, (int, float)):
        return is_finite_number(v)
    if isinstance(v, (list, tuple)):
        return all(_finite_numbers(x) for x in v)
    if isinstance(v, torch.Tensor):
        return not torch.is_floating_point(v) or bool(torch.isfinite(v).all())
    return True


def load_optimizer_state(optimizer: torch.optim.Optimizer, opt_state: dict, where: str = "the checkpoint") -> None:
    """Restore a saved optimizer state, checked against ``optimizer`` (built for the policy): the same parameter
    groups of the same sizes, finite hyperparameters, state tensors shaped like their parameters. A hand-edited
    or mismatched ``optimizer.pt`` raises ``CheckpointError`` (one line), never a traceback mid-run."""
    f = f"{where}/optimizer.pt"
    saved = opt_state.get("param_groups") if isinstance(opt_state, dict) else None
    if not isinstance(saved, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved):
        raise CheckpointError(f"'{f}' holds no parameter groups; resume from another checkpoint")
    have = [len(g["params"]) for g in saved]
    want = [len(g["params"]) for g in optimizer.param_groups]
    if have != want:
        raise CheckpointError(f"'{f}' has parameter groups of sizes {have} but the policy's optimizer has {want}; "
                              "the file does not belong to this policy: resume from another checkpoint")
    for g in saved:
        bad = sorted(k for k, v in g.items() if k != "params" and not _finite_numbers(v))
        if bad:
            raise CheckpointError(f"'{f}': optimizer setting '{bad[0]}' is not finite; resume from another checkpoint")
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"'{f}' does not load ({type(e).__name__}); resume from another checkpoint") from None
    for group in optimizer.param_groups:
        for p in group["params"]:
            for k, v in optimizer.state.get(p, {}).items():
                if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape != p.shape:
                    raise CheckpointError(f"'{f}': optimizer state '{k}' has shape {tuple(v.shape)} for a parameter "
                                          f"of shape {tuple(p.shape)}; resume from another checkpoint")
                if not _finite_numbers(v):
                    raise CheckpointError(f"'{f}': optimizer state '{k}' holds NaN/inf; resume from another checkpoint")


class PolicyLearner:
    """The policy, its optimizer and the algorithm's state on ``device``; ``update`` runs the algorithm there.

    Built in the order a run's random numbers expect (the policy moved, the optimizer, the algorithm's state, then
    the saved optimizer and algorithm states restored), so a resumed run repeats the uninterrupted one."""

    def __init__(self, cfg, policy, opt_state: dict | None, gen: torch.Generator, algo_state: tuple | None,
                 device: torch.device, sync=LOCAL, spec=None):
        self.cfg, self.algo, self.acfg, self.device, self.gen, self.sync = (cfg, get_algo(cfg.algo), cfg.algo_cfg,
                                                                             device, gen, sync)
        self.policy = policy.to(device)  # before the optimizer: its state follows the parameters
        self.optimizer = make_optimizer(self.policy, cfg)
        self.state = self.algo.new_state(self.policy, self.acfg, spec)  # spec: the run's EnvSpec
        if opt_state is not None:
            load_optimizer_state(self.optimizer, opt_state, str(cfg.resume) if cfg.resume else "the checkpoint")
        if self.state is not None and algo_state is not None:
            try:
                self.state.load_state_dict(*algo_state)
            except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as e:
                raise CheckpointError(f"the algorithm state of '{cfg.resume}' does not fit this run "
                                      f"({type(e).__name__}); resume from another checkpoint") from None

    def update(self, batch, iteration: int, acfg=None) -> dict:
        """The algorithm's ``update`` on ``batch`` (moved to the device once; a no-op when it is there already) at
        the iteration's policy lr, under ``--precision``. ``acfg``: a per-learner config (Ray shards)."""
        set_policy_lr(self.optimizer, self.cfg, iteration)
        batch = to_device(batch, self.device)
        with precision_context(self.cfg.precision, self.device):
            return self.algo.update_fn(self.policy, self.optimizer, batch, acfg or self.acfg, iteration, self.gen,
                                       self.sync, self.state)

    def train_state(self) -> tuple:
        """(optimizer, algorithm state or None) for ``save_checkpoint``."""
        return self.optimizer, self.state
