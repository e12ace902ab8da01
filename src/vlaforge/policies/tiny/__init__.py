"""The embedded default VLA that trains on a CPU (see ``model.py``)."""

from vlaforge.policies.tiny.model import TinyConfig, TinyVLA

__all__ = ["TinyConfig", "TinyVLA"]
