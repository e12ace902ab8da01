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


def progress_bar(description: str, total: int, enabled: bool = True):
    """A rich progress bar with ETA (a no-op object when disabled or output is not a terminal/CI log)."""
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
                    disable=not enabled, transient=not sys.stdout.isatty())
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
