"""A task decomposer backed by any local transformers text model (GRAPE's VLM planner, text-only).

``LMDecomposer(model_path)`` (or ``LMDecomposer(model=..., tokenizer=...)``) prompts the model
with the instruction and the named points of the suite's ``sim_state`` and asks for stages in
a small JSON schema::

    [{"name": "reach the puck", "move": "ee", "to": "obj", "threshold": 0.05},
     {"name": "push the puck to the goal", "move": "obj", "to": "goal", "threshold": 0.05}]

The answer is parsed defensively (``parse_stages``): the first bracketed list is read as JSON,
then as a Python literal; entries whose points are unknown, whose threshold is not a positive
number below ``max_threshold``, or that repeat are dropped; at most ``max_stages`` are kept.
If nothing valid is left — or generation itself fails — the decomposer falls back to the
``fallback`` decomposer (a ``RuleDecomposer`` when it covers the task) or to a single "reach
the goal" stage, logs the reason and keeps it in ``last_reason``. It never raises on model output.

Where it differs from GRAPE: GRAPE asks a large VLM (with the first image) to write cost
functions as code; running model-written code is unsafe and unverifiable, so here the model
may only choose among checked stage shapes. No weights ship with vlaforge: bring a local
instruction-tuned model (any ``AutoModelForCausalLM``); the tests only check the plumbing
with a tiny random-weight model.

    dec = LMDecomposer("path/to/local/model", names=spec.sim_state_names)
    stages = dec.decompose("push-v3", "push the puck to the goal")
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vlaforge.envs import require
from vlaforge.rewards.grape import RuleDecomposer, Stage, TaskDecomposer, contact_cost, path_cost, point_stage
from vlaforge.rewards.simstate import layout_of

log = logging.getLogger(__name__)

POINT_HELP = {"ee": "the robot's end effector (gripper)", "obj": "the main object (or handle / button)",
              "obj1": "a second object", "goal": "the goal position"}

PROMPT = """You plan robot manipulation tasks as a list of stages.
Each stage moves one point to another point until their distance is below a threshold (metres).
Points you may use: {points}.
Answer with a JSON list only, for example:
[{{"name": "reach the object", "move": "ee", "to": "obj", "threshold": 0.05}}, {{"name": "push the object to the goal", "move": "obj", "to": "goal", "threshold": 0.05}}]
Task: {instruction}
Stages:"""


def _candidates(text: str) -> list[str]:
    """Bracketed spans of the text, outermost first, shortest matching bracket for each '['."""
    out = []
    for m in re.finditer(r"\[", text):
        depth = 0
        for j in range(m.start(), len(text)):
            if text[j] == "[":
                depth += 1
            elif text[j] == "]":
                depth -= 1
                if depth == 0:
                    out.append(text[m.start():j + 1])
                    break
    return out


def _load_list(text: str) -> list | None:
    for cand in _candidates(text):
        for loader in (json.loads, ast.literal_eval):
            try:
                val = loader(cand)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(val, list) and val and all(isinstance(x, dict) for x in val):
                return val
    return None


def parse_stages(text: str, points: Sequence[str], max_stages: int = 6,
                 max_threshold: float = 1.0) -> tuple[list[dict[str, Any]], str | None]:
    """Model text -> (valid stage dicts with name/move/to/threshold, reason if nothing usable).

    Never raises: malformed text gives ([], reason).
    """
    if not isinstance(text, str) or not text.strip():
        return [], "empty answer"
    items = _load_list(text)
    if items is None:
        return [], "no JSON list of stage objects found in the answer"
    out, seen, dropped = [], set(), []
    for it in items:
        move, to = str(it.get("move", "")).strip().lower(), str(it.get("to", "")).strip().lower()
        try:
            thr = float(it.get("threshold", 0.05))
        except (TypeError, ValueError):
            dropped.append("threshold not a number")
            continue
        if move not in points or to not in points or move == to:
            dropped.append(f"unknown points {move!r}->{to!r}")
            continue
        if not 0.0 < thr <= max_threshold:  # also refuses NaN
            dropped.append(f"threshold {thr} out of (0, {max_threshold}]")
            continue
        if (move, to) in seen:
            continue
        seen.add((move, to))
        name = str(it.get("name", f"move {move} to {to}"))[:80] or f"move {move} to {to}"
        out.append({"name": name, "move": move, "to": to, "threshold": thr})
        if len(out) >= max_stages:
            break
    if not out:
        return [], "no valid stage (" + "; ".join(dropped[:3]) + ")"
    return out, None


@dataclass
class LMDecomposer:
    """See the module docstring. ``generate_fn(prompt) -> text`` may replace the model (testing, APIs)."""

    model_path: str | None = None
    names: Sequence[str] = ()
    model: Any = None
    tokenizer: Any = None
    fallback: TaskDecomposer | None = None
    weights: dict[str, float] = field(default_factory=lambda: {"path": 0.0, "collision": 0.5})
    max_new_tokens: int = 160
    max_stages: int = 6
    generate_fn: Any = None
    last_reason: str | None = None
    last_text: str = ""

    def __post_init__(self):
        self.layout = layout_of(self.names)
        if not self.layout.has("ee"):
            raise ValueError("LMDecomposer needs a suite whose sim_state names an end effector (ee_x, ee_y)")
        if self.fallback is None:
            self.fallback = RuleDecomposer(self.names, dict(self.weights))
        if self.generate_fn is None and self.model is None:
            if self.model_path is None:
                raise ValueError("LMDecomposer needs model_path, model (+ tokenizer) or generate_fn")
            tr = require("transformers", "hf")
            try:
                kw = {"local_files_only": True, "trust_remote_code": False}  # a model file never decides to run code
                self.tokenizer = tr.AutoTokenizer.from_pretrained(self.model_path, **kw)
                self.model = tr.AutoModelForCausalLM.from_pretrained(self.model_path, **kw).eval()
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot load a local causal LM from '{self.model_path}' ({str(e).splitlines()[0]}); "
                                 "pass a directory saved with save_pretrained (model + tokenizer)") from None
        if self.model is not None and self.tokenizer is None:
            raise ValueError("LMDecomposer(model=...) also needs tokenizer=...")

    @property
    def points(self) -> list[str]:
        return [p for p in self.layout.points if not p.startswith("target")]

    def prompt(self, instruction: str) -> str:
        pts = ", ".join(f'"{p}" ({POINT_HELP.get(p, p)})' for p in self.points)
        return PROMPT.format(points=pts, instruction=instruction)

    def _generate(self, prompt: str) -> str:
        if self.generate_fn is not None:
            return str(self.generate_fn(prompt))
        import torch

        tok, model = self.tokenizer, self.model
        enc = tok(prompt, return_tensors="pt")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def decompose(self, task_name: str, instruction: str) -> list[Stage]:
        try:
            self.last_text = self._generate(self.prompt(instruction))
        except Exception as e:  # a model that fails to generate must not stop training
            self.last_text = ""
            return self._fall_back(task_name, instruction, f"generation failed: {type(e).__name__}: {e}")
        items, reason = parse_stages(self.last_text, self.points, self.max_stages)
        if not items:
            return self._fall_back(task_name, instruction, reason or "no stages")
        self.last_reason = None
        ex = (path_cost(self.layout, self.weights.get("path", 0.0)),
              contact_cost(self.layout, self.weights.get("collision", 0.0)))
        return [point_stage(it["name"], self.layout, it["move"], it["to"], it["threshold"], ex) for it in items]

    def _fall_back(self, task_name: str, instruction: str, reason: str) -> list[Stage]:
        cover = getattr(self.fallback, "covers", None)
        if cover is None or cover(task_name):
            self.last_reason = f"{reason}; used {type(self.fallback).__name__}"
            log.warning("LMDecomposer for '%s': %s", task_name, self.last_reason)
            return self.fallback.decompose(task_name, instruction)
        self.last_reason = f"{reason}; used a single 'reach the goal' stage"
        log.warning("LMDecomposer for '%s': %s", task_name, self.last_reason)
        if not self.layout.has("goal"):
            raise ValueError(f"no stages for '{task_name}' and the suite's sim_state has no goal point")
        ex = (path_cost(self.layout, self.weights.get("path", 0.0)),
              contact_cost(self.layout, self.weights.get("collision", 0.0)))
        return [point_stage("reach the goal", self.layout, "ee", "goal", 0.05, ex)]
