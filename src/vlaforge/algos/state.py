"""Algorithm state across iterations (replay buffers, an algorithm's own optimizers, target networks) and
its checkpoint form: a flat ``{name: tensor}`` dict (saved as safetensors) plus a small JSON tree.

On-policy algorithms keep no state. An algorithm that does returns an ``AlgoState`` from its
``init_state(policy, cfg)``; the training loop passes it to every ``update(..., state=)``, and every
full-state checkpoint stores ``state.state_dict()`` (``algo_state.safetensors`` + ``state.json``'s
``algo_state``), so a run killed with SIGKILL resumes exactly. Nothing is pickled: ``flatten`` turns a
nested structure of dicts (str or int keys), lists, tuples, tensors and JSON scalars — e.g. a torch
optimizer's ``state_dict()`` — into (tensors, JSON) and ``unflatten`` turns it back.

    tensors, meta = flatten({"critic_opt": opt.state_dict(), "size": 10})
    opt.load_state_dict(unflatten(tensors, meta)["critic_opt"])
"""

from __future__ import annotations

import torch


class AlgoState:
    """Mutable state an algorithm keeps across iterations. It lives beside the policy's optimizer
    (in the learner actor under Ray) and is checkpointed with it."""

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, JSON-able dict) that ``load_state_dict`` restores exactly."""
        raise NotImplementedError

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        raise NotImplementedError


def flatten(tree, prefix: str = "t") -> tuple[dict[str, torch.Tensor], object]:
    """A nested structure -> ({key: tensor}, JSON tree with ``{"tensor": key}`` leaves). Dict keys keep
    their type (a torch optimizer's state is keyed by int), tuples stay tuples."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x, path: str):
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous()
            return {"tensor": path}
        if isinstance(x, dict):
            return {"dict": [[k, walk(v, f"{path}.{k}")] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return {"tuple" if isinstance(x, tuple) else "list": [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return {"value": x}
        raise TypeError(f"cannot checkpoint a {type(x).__name__} in algorithm state at '{path}'")

    return tensors, walk(tree, prefix)


def unflatten(tensors: dict[str, torch.Tensor], meta):
    """The inverse of ``flatten``."""
    (kind, v), = meta.items()
    if kind == "tensor":
        return tensors[v]
    if kind == "dict":
        return {k: unflatten(tensors, x) for k, x in v}
    if kind == "list":
        return [unflatten(tensors, x) for x in v]
    if kind == "tuple":
        return tuple(unflatten(tensors, x) for x in v)
    return v
