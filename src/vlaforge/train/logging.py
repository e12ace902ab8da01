"""Run logging: TensorBoard scalars, a JSONL copy of every scalar, optionally Weights & Biases (``--log wandb``),
and progress (a rich bar in a terminal, a line every few seconds in a log)."""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from vlaforge.envs import EnvError, require


def _num(v) -> float:
    return float(v.item() if isinstance(v, torch.Tensor) else v)


def wandb_module():
    """The ``wandb`` package, or ``MissingExtra`` naming the extra to install (``pip install 'vlaforge[wandb]'``)."""
    return require("wandb", "wandb")


@dataclass
class LogOptions:
    """Where a run's scalars go besides ``metrics.jsonl`` (train and sft)."""

    log: Literal["tensorboard", "wandb", "both", "none"] = "tensorboard"
    """tensorboard (default), wandb (Weights & Biases: config, scalars, the final per-task eval table; optional extra
    `wandb`; WANDB_MODE=offline for no network, WANDB_PROJECT for the project), both, or none"""

    def check(self) -> None:
        """A missing ``wandb`` package is refused in one line before any work."""
        if self.log in ("wandb", "both"):
            wandb_module()

    def sinks(self) -> tuple[bool, bool]:
        """(TensorBoard, W&B)."""
        return self.log in ("tensorboard", "both"), self.log in ("wandb", "both")


class RunLogger:
    """Writes scalars to ``<run>/metrics.jsonl`` (always), TensorBoard (``<run>/tb``) and, with ``wandb_config``,
    a Weights & Biases run: the config, every scalar, ``table`` calls (an evaluation's per-task rows) and ``video``
    files. ``WANDB_MODE=offline`` keeps it on disk (``<run>/wandb``); ``WANDB_PROJECT`` names the project. The run's
    W&B id is a function of the run folder, so a resumed run continues its W&B run."""

    def __init__(self, run_dir: str | Path | None, tensorboard: bool = True, wandb_config: dict | None = None,
                 name: str | None = None):
        self.dir = Path(run_dir) if run_dir else None
        self.tb = None
        self._jsonl = None
        self.wandb = None
        if self.dir is not None:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._jsonl = open(self.dir / "metrics.jsonl", "a")
            except OSError as e:  # the input checks refuse these first; a folder changed since is still one line
                raise EnvError(f"cannot write '{self.dir / 'metrics.jsonl'}' ({e.strerror or type(e).__name__}); "
                               "choose another run folder") from None
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"))
            if wandb_config is not None:
                import hashlib

                wb = wandb_module()
                run_id = hashlib.sha1(str(self.dir.resolve()).encode()).hexdigest()[:16]
                self.wandb = wb.init(dir=str(self.dir), id=run_id, resume="allow", name=name or self.dir.name,
                                     config=wandb_config, project=None, reinit="finish_previous")

    def log(self, step: int, metrics: dict) -> dict:
        clean = {k: _num(v) for k, v in metrics.items()}
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
            self._jsonl.flush()
        if self.wandb is not None:
            self.wandb.log(clean, step=step)
        return clean

    def table(self, key: str, rows: list[dict]) -> None:
        """A table of dict rows (W&B only; the numbers are in the eval manifest and metrics.jsonl anyway)."""
        if self.wandb is None or not rows:
            return
        wb = wandb_module()
        cols = list(rows[0])
        self.wandb.log({key: wb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])})

    def video(self, key: str, path: str | Path) -> None:
        """An mp4 the run wrote (evaluation videos), uploaded to W&B."""
        if self.wandb is not None:
            self.wandb.log({key: wandb_module().Video(str(path), format="mp4")})

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


class LineProgress:
    """``progress_bar``'s stand-in when standard output is not a terminal (a log file, CI, a pipe): one plain line
    every ``every`` seconds and one at the end, so a long stage is never silent — also while no update comes (a
    60-second DAgger update between two iterations): a daemon thread repeats the current line, its elapsed time
    moving, when ``every`` seconds passed without one. Same calls as ``rich``'s ``Progress`` as the callers use it:
    ``with prog:`` and ``prog.update(task, completed=/advance=, info=)``."""

    def __init__(self, description: str, total: int, every: float = 10.0, stream=None):
        self.description, self.total, self.every = description, max(int(total), 0), every
        self.stream = stream if stream is not None else sys.stdout
        self.done, self.info, self.t0, self.last = 0, "", time.perf_counter(), None
        self._lock, self._stop, self._beat = threading.Lock(), threading.Event(), None

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.last = self.t0
        if 0 < self.every < float("inf"):
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, name=f"progress-{self.description}", daemon=True)
            self._beat.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if exc[0] is None:
            self._line()
        return False

    def update(self, task=None, completed: int | None = None, advance: int = 0, info: str | None = None, **_):
        with self._lock:
            self.done = int(completed) if completed is not None else self.done + int(advance)
            if info is not None:
                self.info = info
        if self.last is not None:
            self._line(force=False)

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self.every / 4, 60.0)):
            self._line(force=False)

    def _line(self, force: bool = True) -> None:
        """Print the current line (``force=False``: only if ``every`` seconds passed since the last one; the check
        and the print under one lock, so the heartbeat and ``update`` never print the same moment twice)."""
        with self._lock:
            now = time.perf_counter()
            if not force and now - self.last < self.every:
                return
            el = now - self.t0
            eta = f", eta {el / self.done * (self.total - self.done):.0f}s" if 0 < self.done < self.total else ""
            text = f"{self.description}: {self.done}/{self.total} ({el:.0f}s{eta}) {self.info}".rstrip()
            self.stream.write(text + "\n")  # one write: a line is never split by another thread's output
            self.stream.flush()
            self.last = now


def progress_bar(description: str, total: int, enabled: bool = True, every: float = 10.0):
    """A rich progress bar with ETA in a terminal; a line every ``every`` seconds otherwise (``LineProgress``: a
    log or CI shows every stage moving); a no-op object when disabled."""
    if enabled and not sys.stdout.isatty():
        return LineProgress(description, total, every), 0
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    disable=not enabled)
    task = prog.add_task(description, total=total, info="")
    return prog, task


STAGES = ("collect", "reward", "advantages", "update", "sync", "eval")


class StageTimer:
    """Wall time per stage of one training iteration, logged as ``time/<stage>_s`` by every backend."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def metrics(self) -> dict:
        return {f"time/{k}_s": v for k, v in self.seconds.items()}
