"""A stand-in GPU for machines without one: catches tensors made on the wrong device before a GPU does.

On CUDA, ``torch.zeros(n)`` beside a policy on ``cuda`` lands on the CPU, and the first op mixing the two
fails. On a CPU-only machine every tensor is on the CPU, so such bugs stay invisible. ``DeviceAudit`` (a
``TorchFunctionMode``) brings them out: the policy is placed on ``FAKE`` = ``torch.device("cpu", 0)`` — a real
CPU tensor, but a device object that differs from ``torch.device("cpu")`` — and the mode tags every tensor
that lives "on the device":

- tensors reached from the policy's parameters and buffers, and everything computed from a tagged tensor;
- tensors made with ``device=FAKE`` (or ``.to(FAKE)``, ``.to(tagged_tensor)``), and ``tagged.device`` reports
  ``FAKE``, so code that asks a tensor or a policy where it lives gets the fake device back.

Every op that mixes tagged and untagged tensors is recorded as a violation (with the caller's file and line),
with CUDA's own exceptions: 0-dim host tensors (scalars), host index tensors in ``t[idx]``, ``copy_`` and
explicit transfers. A factory asking for the fake device with a CPU ``torch.Generator`` is recorded too (CUDA
refuses it). ``.cpu()``, ``.numpy()``, ``.item()``, ``.tolist()`` and ``.to("cpu")`` untag (host copies).
"""

from __future__ import annotations

import traceback

import torch
from torch.overrides import TorchFunctionMode

FAKE = torch.device("cpu", 0)
_TAG = "_vf_on_device"
FACTORIES = {"zeros", "ones", "empty", "full", "arange", "tensor", "as_tensor", "randn", "rand", "randint",
             "randperm", "linspace", "logspace", "eye", "empty_strided", "scalar_tensor", "normal", "bernoulli",
             "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like"}
TO_HOST = {"cpu", "numpy", "item", "tolist", "__array__", "__len__", "__bool__", "__int__", "__float__",
           "__index__", "__format__", "__repr__", "__str__", "__hash__", "data_ptr", "dim", "size", "numel",
           "__reduce_ex__", "__iter__", "__contains__"}
NO_CHECK = {"copy_", "_has_compatible_shallow_copy_type", "__getitem__", "__setitem__", "to", "__get__", "__set__", "pin_memory", "cuda", "detach",
            "requires_grad_", "backward", "set_", "_is_view", "is_floating_point", "is_complex", "register_hook",
            "retain_grad", "__deepcopy__", "clone"}


def tagged(t) -> bool:
    return isinstance(t, torch.Tensor) and getattr(t, _TAG, False)


def tag(t, on: bool = True) -> None:
    if isinstance(t, torch.Tensor):
        try:
            setattr(t, _TAG, on)
        except (AttributeError, RuntimeError):
            pass


def _tensors(x, out: list) -> list:
    if isinstance(x, torch.Tensor):
        out.append(x)
    elif isinstance(x, (list, tuple)):
        for v in x:
            _tensors(v, out)
    elif isinstance(x, dict):
        for v in x.values():
            _tensors(v, out)
    return out


def _is_fake(d) -> bool | None:
    """True for the fake device, False for the host, None when ``d`` names no device."""
    if isinstance(d, torch.Tensor):
        return tagged(d)
    if isinstance(d, str):
        if d in ("cpu", "cpu:0"):
            return d == "cpu:0"
        return None
    if isinstance(d, torch.device):
        return d == FAKE
    return None


class DeviceAudit(TorchFunctionMode):
    """``with DeviceAudit(policy) as audit: ...``; then ``audit.violations`` lists every wrong-device op."""

    def __init__(self, *modules):
        super().__init__()
        self.violations: list[str] = []
        for m in modules:
            self.place(m)

    def __enter__(self):
        # nn.Parameter.__deepcopy__ (copy.deepcopy of a module: target networks) builds a new Parameter in Python,
        # past the mode; on CUDA the copy stays on the device, so the copy keeps the tag here
        self._deepcopy = torch.nn.Parameter.__deepcopy__
        orig = self._deepcopy

        def deepcopy(param, memo):
            out = orig(param, memo)
            tag(out, tagged(param))
            return out

        torch.nn.Parameter.__deepcopy__ = deepcopy
        return super().__enter__()

    def __exit__(self, *exc):
        torch.nn.Parameter.__deepcopy__ = self._deepcopy
        return super().__exit__(*exc)

    @staticmethod
    def place(module) -> None:
        """Tag a module's parameters and buffers (after ``module.to(FAKE)``)."""
        for t in list(module.parameters()) + list(module.buffers()):
            tag(t)

    def _where(self) -> str:
        for fr in reversed(traceback.extract_stack()[:-3]):
            if "/vlaforge/" in fr.filename and "device_audit" not in fr.filename:
                return f"{fr.filename.split('/vlaforge/')[-1]}:{fr.lineno} ({fr.line})"
        return "?"

    def _flag(self, msg: str) -> None:
        where = self._where()
        entry = f"{where}: {msg}"
        if entry not in self.violations:
            self.violations.append(entry)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        owner = getattr(getattr(func, "__self__", None), "__name__", "")
        if name == "__get__" and owner == "device":
            return FAKE if tagged(args[0]) else torch.device("cpu")
        if name == "__get__":  # .data, .grad, .T ...: the same storage, the same device
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out is not args[0]:
                tag(out, tagged(args[0]))
            return out
        if name == "__set__" and owner == "data":  # module.to(): param.data = moved tensor
            out = func(*args, **kwargs)
            tag(args[0], tagged(args[1]))
            return out
        if name in FACTORIES:
            dev = kwargs.get("device")
            fake = _is_fake(dev)
            like = name.endswith("_like")
            if fake is None:
                fake = tagged(args[0]) if (like or name == "as_tensor") and args and tagged(args[0]) else False
            gen = kwargs.get("generator")
            if fake and gen is not None and gen.device.type == "cpu":
                self._flag(f"torch.{name} on the device with a CPU torch.Generator (CUDA refuses it)")
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and (out is not (args[0] if args else None) or fake):
                tag(out, fake)
            return out
        if name == "to":
            target = kwargs.get("device")
            fake = _is_fake(target) if target is not None else None
            for a in args[1:]:
                if fake is None:
                    fake = _is_fake(a)
            if fake is None and "other" in kwargs:
                fake = _is_fake(kwargs["other"])
            out = func(*args, **kwargs)
            if fake is None:
                fake = tagged(args[0])
            if out is args[0] and fake != tagged(args[0]):
                out = out.clone()
            tag(out, fake)
            return out
        if name in ("cpu", "pin_memory"):
            out = func(*args, **kwargs)
            if out is args[0]:
                out = out.clone()
            tag(out, False)
            return out
        if name == "__getitem__":
            idx = _tensors(args[1], []) if len(args) > 1 else []
            if not tagged(args[0]) and any(tagged(i) for i in idx):
                self._flag("a host tensor indexed with a device index")
            out = func(*args, **kwargs)
            tag(out, tagged(args[0]))
            return out
        if name == "__setitem__":
            value = args[2] if len(args) > 2 else None
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tagged(value) != tagged(args[0]):
                self._flag("a slice assignment between host and device tensors")
            return func(*args, **kwargs)
        if name in ("copy_",):
            return func(*args, **kwargs)
        ins = _tensors(args, []) + _tensors(kwargs, [])
        on = [tagged(t) for t in ins if tagged(t) or t.dim() > 0]
        if name not in TO_HOST and name not in NO_CHECK and on and any(on) and not all(on):
            shapes = [(tuple(t.shape), "device" if tagged(t) else "host") for t in ins]
            self._flag(f"{name} mixes host and device tensors {shapes[:4]}")
        out = func(*args, **kwargs)
        if name in TO_HOST:
            return out
        dev_out = any(on)
        first = args[0] if args else None
        for t in _tensors(out, []):
            tag(t, dev_out or (t is first and tagged(t)))
        return out
