"""The one-line number checks every config's ``check()`` is written with (``need``, ``at_least``, ``learning_rate``...).

Each config checks its own fields where it is defined — an algorithm's ``--<algo>.*`` in its registry entry
(``algos.Algo.check``), a recipe's in its module, ``EnvOptions.check``, ``PolicyShape.check``, ``HFConfig.check``,
``RayConfig.check``, ``TrainConfig.check`` for the run's own — and raises ``UsageError`` naming the flag and what
to pass. This module is what they share: it imports only ``errors`` and ``schema``, so any layer may use it.
``given_fields(argv)`` / ``flag(path)`` translate between command-line flags and dotted config fields.

    python -c "from vlaforge.checks import at_least; at_least('--groups', 0, 1)"   # UsageError
"""

from __future__ import annotations

import os
from pathlib import Path

from vlaforge.errors import UsageError
from vlaforge.schema import is_finite_number

MAX_LR = 10.0
MIN_IMAGE, MAX_IMAGE = 8, 1024
MAX_VIEWS = 16
MAX_DIM = 4096
"""the largest state / action dimension a demo dataset may declare"""
SEED_LIMIT = 2 ** 32
"""seeds are numpy/torch seeds: 0 <= seed < 2**32"""
MAX_ENVS = 4096


def given_fields(argv: list[str], aliases: dict[str, str] | None = None) -> set[str]:
    """Dotted config field paths named by ``--flags`` in ``argv`` (``--ppo.clip`` -> ``ppo.clip``,
    ``--no-progress`` -> ``progress``); ``aliases`` maps a flag prefix to a field prefix
    (train's ``--policy.X`` is ``hf.X``)."""
    out = set()
    for a in argv:
        if not a.startswith("--") or a == "--":
            continue
        name = a[2:].split("=", 1)[0]
        parts = name.split(".")
        if parts[-1].startswith("no-"):
            parts[-1] = parts[-1][3:]
        path = ".".join(p.replace("-", "_") for p in parts)
        for src, dst in (aliases or {}).items():
            if path == src or path.startswith(src + "."):
                path = dst + path[len(src):]
                break
        out.add(path)
    return out


def flag(path: str, aliases: dict[str, str] | None = None) -> str:
    """The command-line spelling of a dotted field path, the inverse of ``given_fields`` (``ppo.clip`` -> ``--ppo.clip``; ``aliases`` maps a flag
    prefix to a field prefix: train's ``{"policy": "hf"}`` spells ``hf.path`` as ``--policy.path``)."""
    for dst, src in (aliases or {}).items():
        if path == src or path.startswith(src + "."):
            path = dst + path[len(src):]
    return "--" + path.replace("_", "-")


def need(ok: bool, msg: str) -> None:
    if not ok:
        raise UsageError(msg)


is_finite = is_finite_number


def finite(name: str, v: float) -> None:
    need(is_finite(v) or isinstance(v, bool), f"{name} must be a finite number; got {str(v)[:40]}")


def at_least(name: str, v, lo, what: str = "") -> None:
    finite(name, v)
    need(v >= lo, f"{name} must be >= {lo}{what}; got {v}")


def positive(name: str, v, what: str = "") -> None:
    finite(name, v)
    need(v > 0, f"{name} must be > 0{what}; got {v}")


def whole(name: str, v) -> None:
    need(isinstance(v, int) and not isinstance(v, bool), f"{name} must be a whole number; got {v}")


def check_seed(name: str, v, span: int = 0) -> None:
    """A seed (or the first of ``span`` consecutive seeds): a whole number with 0 <= v and v + span < 2**32."""
    whole(name, v)
    need(0 <= v and v + span < SEED_LIMIT, f"{name} must be in [0, {SEED_LIMIT - 1 - span}] (numpy and torch seeds "
                                           f"are 32-bit); got {v}")


def check_image_size(name: str, v) -> None:
    whole(name, v)
    need(MIN_IMAGE <= v <= MAX_IMAGE, f"{name} must be in [{MIN_IMAGE}, {MAX_IMAGE}] pixels; got {v}")


def learning_rate(name: str, v) -> None:
    """> 0 and at most MAX_LR: AdamW moves every weight by ~lr per step, so larger values only diverge
    (and past ~1e37 overflow inside the optimizer)."""
    positive(name, v)
    need(v <= MAX_LR, f"{name} {v} is far above any useful AdamW rate (each step moves weights by ~lr); "
                      f"pass a value <= {MAX_LR:g}, typically 1e-5 .. 1e-3")


def task_list(name: str, tasks: str | None) -> None:
    """A comma-separated task selection names each task once (a repeated name would count its episodes twice)."""
    if not tasks:
        return
    names = [n.strip() for n in tasks.split(",")]
    dup = sorted({n for n in names if names.count(n) > 1})
    need(not dup, f"{name} names '{dup[0] if dup else ''}' more than once; list each task once")


def num_envs(v: int, name: str = "--num-envs") -> None:
    at_least(name, v, 1)
    need(v <= MAX_ENVS, f"{name} {v}: more envs than one machine holds in memory (each keeps a simulator and its "
                        f"images); pass at most {MAX_ENVS}, typically 8 .. 64")


def check_in_dir(name: str, path: str | os.PathLike, what: str) -> Path:
    """``path`` is an existing directory (a model folder a recipe reads); returns it."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(f"{name} '{path}' is not a directory; pass {what}")
    return p
