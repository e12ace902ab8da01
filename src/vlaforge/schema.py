"""The allow-list of checkpoint config fields per policy family, and the checks every policy file passes.

``check_policy_config`` validates a policy directory's ``config.json`` (every read goes through it: unknown
fields and values of the wrong type are refused, nothing is trusted beyond the family's dataclass);
``register_config_schema`` adds a family; ``value_matches`` / ``dataclass_problems`` check JSON against a
dataclass's annotations (also used for the training config in ``state.json``); ``check_finite_tensors``
refuses to write a policy holding NaN/inf (``NonFiniteError``).

A low module: it imports only ``vlaforge.errors``; families' config classes are named as 'module:Class'
strings and imported on first use (``_schema``), so reading a tiny checkpoint never imports transformers.

    python -c "from vlaforge.schema import check_policy_config; ..."   # used by vlaforge.policies
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import types
import typing
from pathlib import Path

import torch

from vlaforge.errors import CheckpointError, NonFiniteError

FORMAT_VERSION = 1
"""the policy-directory format this vlaforge writes and reads (``config.json``'s ``format_version``)"""

CONFIG_SCHEMAS: dict[str, str | type] = {}
"""family -> its config dataclass (or 'module:Class', imported on first use); filled by the policy registry
(``vlaforge.policies.registry.register_family``)"""

IGNORED_CONFIG_FIELDS: dict[str, set[str]] = {}
"""fields a family's older checkpoints may hold and that are never read from a file"""

CONFIG_CHECKS: dict[str, str | typing.Callable[[dict], list[str]]] = {}
"""family -> ``(policy fields) -> problems`` (or 'module:function'): the family's value checks after the type checks
(positive, bounded dimensions; the parameter bytes the config would allocate)"""

MAX_PARAM_BYTES = 64 * 2 ** 30
"""a checkpoint config whose parameters would take more than this is refused before anything is allocated"""


def is_finite_number(v) -> bool:
    """A real number (not a bool) that is finite as a float (an int past float's range, 10**400, is not): the one
    finiteness test of every JSON value and flag vlaforge reads."""
    try:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    except OverflowError:
        return False


def register_config_schema(family: str, cls: str | type, ignored: tuple[str, ...] = (),
                           check: str | typing.Callable | None = None) -> None:
    """Allow checkpoints of ``family``: their ``policy`` fields must be fields of the dataclass ``cls``
    with values of its annotated types. ``ignored`` fields are accepted and dropped (never trusted);
    ``check`` (optional) returns the problems of the values (``CONFIG_CHECKS``)."""
    CONFIG_SCHEMAS[family] = cls
    if ignored:
        IGNORED_CONFIG_FIELDS[family] = set(ignored)
    if check is not None:
        CONFIG_CHECKS[family] = check


def _config_check(family: str):
    fn = CONFIG_CHECKS.get(family)
    if isinstance(fn, str):
        mod, name = fn.split(":")
        fn = getattr(importlib.import_module(mod), name)
        CONFIG_CHECKS[family] = fn
    return fn


def _schema(family: str) -> type:
    cls = CONFIG_SCHEMAS[family]
    if isinstance(cls, str):
        mod, name = cls.split(":")
        cls = getattr(importlib.import_module(mod), name)
        CONFIG_SCHEMAS[family] = cls
    return cls


def value_matches(v, tp) -> bool:
    """Does the JSON value ``v`` fit the annotation ``tp`` (int, float, str, bool, None, Literal, list[X],
    tuple[...], dict[str, X], unions, Annotated)?"""
    origin = typing.get_origin(tp)
    if tp is typing.Any:
        return True
    if origin is typing.Annotated:
        return value_matches(v, typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return any(value_matches(v, t) for t in typing.get_args(tp))
    if origin is typing.Literal:
        return v in typing.get_args(tp) and type(v) is type(next(a for a in typing.get_args(tp) if a == v))
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if origin in (list, tuple):
        if not isinstance(v, (list, tuple)):
            return False
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(v) == len(args) and all(value_matches(x, t) for x, t in zip(v, args))
        return all(value_matches(x, args[0]) for x in v) if args else True
    if origin is dict:
        if not isinstance(v, dict):
            return False
        kt, vt = typing.get_args(tp) or (typing.Any, typing.Any)
        return all(value_matches(k, kt) and value_matches(x, vt) for k, x in v.items())
    if dataclasses.is_dataclass(tp):
        return isinstance(v, dict) and not dataclass_problems(tp, v)
    return False


def dataclass_problems(cls: type, d: dict, ignored: set[str] = frozenset()) -> list[str]:
    """What in the JSON object ``d`` is not a field of dataclass ``cls`` of the right type (empty: fine)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    out = []
    for k, v in d.items():
        if k in ignored:
            continue
        if k not in names:
            out.append(f"unknown field '{k}'")
        elif not value_matches(v, hints[k]):
            out.append(f"field '{k}' = {json.dumps(v)[:40]} is not of type {getattr(hints[k], '__name__', hints[k])}")
    return out


def check_policy_config(meta: dict, path: str | os.PathLike) -> dict:
    """Validate a policy directory's ``config.json`` content; returns the ``policy`` dict to build from
    (ignored fields dropped). Raises ``CheckpointError`` naming the file and the first problem."""
    f = Path(path) / "config.json"
    if not isinstance(meta, dict) or not isinstance(meta.get("policy"), dict):
        raise CheckpointError(f"'{f}' has no 'policy' object; re-create the checkpoint")
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"'{f}' has format_version {json.dumps(version)}; this vlaforge reads format "
                              f"{FORMAT_VERSION}: use the vlaforge that wrote it, or re-create the checkpoint")
    pol = dict(meta["policy"])
    family = pol.pop("family", None)
    if not isinstance(family, str) or family not in CONFIG_SCHEMAS:
        raise CheckpointError(f"'{f}' names policy family {json.dumps(family)}; known families: "
                              f"{', '.join(CONFIG_SCHEMAS)}")
    ignored = IGNORED_CONFIG_FIELDS.get(family, set())
    problems = dataclass_problems(_schema(family), pol, ignored)
    if problems:
        raise CheckpointError(f"'{f}': {problems[0]} of a {family} policy"
                              + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                              + "; re-create the checkpoint")
    out = {k: v for k, v in pol.items() if k not in ignored}
    check = _config_check(family)
    problems = check(out) if check is not None else []
    if problems:
        raise CheckpointError(f"'{f}': {problems[0]} in a {family} policy; re-create the checkpoint")
    return {"family": family, **out}


def check_finite_tensors(state: dict, what: str = "the policy") -> None:
    """Raise ``NonFiniteError`` (nothing is written) if any floating tensor of ``state`` holds NaN or inf."""
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteError(f"{what} was not written: {len(bad)} of {len(state)} tensors hold NaN/inf (e.g. {bad[0]}); "
                             "the training diverged: lower the learning rate (--lr, --sft.lr)")
