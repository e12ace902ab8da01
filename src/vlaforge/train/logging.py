"""Run logging: TensorBoard scalars, a JSONL copy of every scalar, and a rich progress bar."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch


def _num(v) -> float:
    return float(v.item() if isinstance(v, torch.Tensor) else v)


class RunLogger:
    """Writes scalars to TensorBoard (``<run>/tb``) and ``<run>/metrics.jsonl``."""

    def __init__(self, run_dir: str | Path | None, tensorboard: bool = True):
        self.dir = Path(run_dir) if run_dir else None
        self.tb = None
        self._jsonl = None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.dir / "metrics.jsonl", "a")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.dir / "tb"))

    def log(self, step: int, metrics: dict) -> dict:
        clean = {k: _num(v) for k, v in metrics.items()}
        if self.tb is not None:
            for k, v in clean.items():
                self.tb.add_scalar(k, v, step)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
            self._jsonl.flush()
        return clean

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


class LineProgress:
    """``progress_bar``'s stand-in when standard output is not a terminal (a log file, CI, a pipe): one plain line
    every ``every`` seconds and one at the end, so a long stage is never silent. Same calls as ``rich``'s
    ``Progress`` as the callers use it: ``with prog:`` and ``prog.update(task, completed=/advance=, info=)``."""

    def __init__(self, description: str, total: int, every: float = 10.0, stream=None):
        self.description, self.total, self.every = description, max(int(total), 0), every
        self.stream = stream if stream is not None else sys.stdout
        self.done, self.info, self.t0, self.last = 0, "", time.perf_counter(), None

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.last = self.t0
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self._line()
        return False

    def update(self, task=None, completed: int | None = None, advance: int = 0, info: str | None = None, **_):
        self.done = int(completed) if completed is not None else self.done + int(advance)
        if info is not None:
            self.info = info
        now = time.perf_counter()
        if self.last is not None and now - self.last >= self.every:
            self._line()
            self.last = now

    def _line(self) -> None:
        el = time.perf_counter() - self.t0
        eta = f", eta {el / self.done * (self.total - self.done):.0f}s" if 0 < self.done < self.total else ""
        print(f"{self.description}: {self.done}/{self.total} ({el:.0f}s{eta}) {self.info}".rstrip(), file=self.stream,
              flush=True)


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
