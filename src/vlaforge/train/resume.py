"""Where a resumed run starts, decided in one place: ``resume_point(caller, given)``.

``vlaforge train --resume CK`` and ``train(TrainConfig(resume=CK, ...))`` both come here. In data order: the
path is a checkpoint (not its run folder), no live run owns the folder, the stale temp dirs of an interrupted
save are repaired, ``state.json`` is read and checked once (its saved config too: it is input like a command
line), flags the checkpoint fixes are refused unless equal to its values, and the run's config is the saved one
with the caller's ``CALLER_FIELDS`` (where to run, write and show, and ``--resume-iterations``: how far to extend the
run). The loop takes what it needs from the
returned ``ResumePoint``: its config, iteration, env steps, sampler and the algorithm state's JSON part.

    vlaforge train --resume runs/rl/checkpoint     # the CLI: writes into runs/rl unless --out is given
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from vlaforge.checks import flag, need
from vlaforge.errors import CheckpointError, UsageError
from vlaforge.fsutil import repair_atomic
from vlaforge.runlock import refuse_if_live
from vlaforge.train.checkpoint import read_train_state
from vlaforge.train.config import TrainConfig, resume_config

RESUME_MAY_CHANGE = ("resume", "resume_iterations", "out", "progress", "tensorboard", "log", "device", "deterministic",
                     "ray", "hf.trust_remote_code", "overwrite")
"""train fields a resumed run takes from the command line; every other one comes from the checkpoint"""


@dataclass(frozen=True)
class ResumePoint:
    """A checked checkpoint to continue from, and the config the run continues with."""

    path: Path
    """the checkpoint directory"""
    cfg: TrainConfig
    """the checkpoint's config with the caller's ``CALLER_FIELDS`` (``train.config.resume_config``)"""
    state: dict
    """state.json, checked: ``iteration``, ``env_steps``, ``sampler``, ``algo_state`` (a stateful algorithm's JSON
    part), ``config`` / ``config_obj``"""


def _field(obj, path: str):
    for p in path.split("."):
        obj = getattr(obj, p)
    return obj


def resume_point(caller, given: frozenset[str] | None = None, repair: bool = False) -> ResumePoint:
    """Decide a resume from ``caller.resume`` (one read of state.json). ``given``: the fields named on the command
    line (the CLI): each must equal the checkpoint's unless ``RESUME_MAY_CHANGE``, and the run folder is the
    checkpoint's parent unless ``out`` is among them. None (a Python caller): ``caller.out`` as given, no
    comparison. ``repair`` (the CLI, before it takes the run's lock): refuse a live run's checkpoint and repair the
    stale temp dirs of an interrupted save first. One-line ``UsageError`` / ``CheckpointError`` before anything
    is loaded."""
    ck = Path(caller.resume).expanduser()
    if not (ck / "state.json").exists() and (ck / "checkpoint" / "state.json").exists():
        raise UsageError(f"--resume '{caller.resume}' is a run directory; pass its checkpoint: --resume "
                         f"{ck / 'checkpoint'}")
    if repair:
        refuse_if_live("train", ck.absolute().parent, "--resume: the run")  # before touching its temp dirs
        repair_atomic(ck)
    state = read_train_state(ck)
    saved = state["config_obj"]
    try:  # the saved config is input like a command line: a hand-edited lr NaN never trains
        saved.check_numbers()
    except UsageError as e:
        raise CheckpointError(f"'{ck / 'state.json'}': its training config is invalid ({e}); resume from another "
                              "checkpoint or start a new run") from None
    for f in sorted(given or ()):
        if f.split(".")[0] in RESUME_MAY_CHANGE or f in RESUME_MAY_CHANGE:
            continue
        try:
            mine, theirs = _field(caller, f), _field(saved, f)
        except AttributeError:
            continue  # not a field (tyro rejects unknown flags before this)
        if mine != theirs:
            more = f", or extend the run with --resume-iterations {mine}" if f == "iterations" else ""
            raise UsageError(f"{flag(f, {'policy': 'hf'})} cannot change on resume (the checkpoint's run has "
                             f"{theirs!r}, you passed {mine!r}); drop it{more}, or start a new run from the checkpoint "
                             f"with --init {caller.resume}")
    need(saved.recipe != "ire-vla", "an ire-vla run cannot be resumed from a checkpoint (its stages write their own "
                                    "runs); start it again")
    caller.ray.check()
    done = int(state["iteration"])
    need(not caller.resume_iterations or caller.resume_iterations >= done,
         f"--resume-iterations {caller.resume_iterations} is below the {done} iterations '{ck}' has done; pass at "
         "least that many to extend the run (0: its own --iterations)")
    if given is not None and "out" not in given:
        caller = dataclasses.replace(caller, out=str(ck.parent))
    return ResumePoint(ck, resume_config(saved, caller), state)
