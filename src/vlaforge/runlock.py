"""A run owns its folder: one lock per output, and no run written over another command's.

``vlaforge train | sft | collect | demo`` hold an exclusive lock on their output for the whole run
(``RunLock``, taken by the CLI after the input checks). The lock is ``fcntl.flock`` on a small file:
``<out>/.lock`` for the run folders of ``train`` and ``demo``; ``<parent>/.<name>.lock`` beside the
``--out`` of ``sft`` and ``collect``, whose folder is replaced whole by a rename at the end. The kernel
drops a flock when its process dies (SIGKILL included), so a lock file left by a dead run is simply
taken over; the pid, host and command written in it only name the holder in the refusal. The file is
deleted when the run ends.

``check_target`` (read-only, run by ``vlaforge.validate``) says whether a command may write a folder:
never into another command's output (a training checkpoint, a train run, a policy, a demo dataset, a
demo run), and a fresh ``train`` / ``sft`` over an earlier run of its own kind only with ``--overwrite``;
``clear_train_run`` then removes the old run's files, under the lock. ``refuse_if_live`` lets a check
refuse a folder whose lock is held before anything is touched (``train --resume`` repairs a checkpoint's
temp dirs only when no run holds it).

    with RunLock(lock_path("train", out), "train", "--out"):
        ...
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from vlaforge.errors import UsageError

LOCK_NAME = ".lock"
RUN_FOLDER_COMMANDS = ("train", "demo")
"""commands whose --out is a folder they write into (the lock inside); sft and collect replace theirs whole"""

TRAIN_ENTRIES = ("checkpoint", "final", "metrics.jsonl", "train_config.json", "tb", "rprm", "ire_vla.json",
                 "eval_tmp.json")
"""what ``vlaforge train`` (and its recipes) write in a run folder; plus ire-vla's ``round<k>/``"""
_TRAIN_EXTRA = re.compile(r"^round\d+$")

KIND_OF_COMMAND = {"train": "train", "sft": "policy", "collect": "demos", "demo": "demo"}
WHAT = {"checkpoint": "training checkpoint (written by `vlaforge train`)",
        "train": "training run folder (written by `vlaforge train`)",
        "policy": "policy folder (written by `vlaforge sft` or a run's final/)",
        "demos": "demo dataset (written by `vlaforge collect`)",
        "demo": "demo run folder (written by `vlaforge demo`)"}


def lock_path(command: str, out: str | os.PathLike) -> Path:
    """The lock file of ``command``'s output ``out``."""
    out = Path(out).expanduser().absolute()
    return out / LOCK_NAME if command in RUN_FOLDER_COMMANDS else out.parent / f".{out.name}.lock"


def _read_info(f) -> dict:
    try:
        f.seek(0)
        info = json.loads(f.read() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _holder_text(info: dict) -> str:
    cmd = info.get("command")
    who = f"a running `vlaforge {cmd}`" if cmd else "a running vlaforge command"
    where = ", ".join(f"{k} {info[k]}" for k in ("pid", "host") if info.get(k) is not None)
    return who + (f" ({where})" if where else "")


def holder(path: str | os.PathLike) -> dict | None:
    """The info of the live process holding the lock file ``path``, or None if it is free (or absent).
    Creates nothing."""
    try:
        f = open(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(f) or {"pid": None}
        except OSError:
            return None
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return None


def refuse_if_live(command: str, out: str | os.PathLike, name: str) -> None:
    """UsageError if ``command``'s output ``out`` is locked by a live run."""
    info = holder(lock_path(command, out))
    if info is not None:
        raise UsageError(f"{name} '{out}' is in use by {_holder_text(info)}; wait for it to end or choose "
                         "another directory")


class RunLock:
    """An exclusive lock on the lock file ``path`` for the life of a ``with`` block (refusal: UsageError)."""

    def __init__(self, path: str | os.PathLike, command: str, name: str, target: str | os.PathLike | None = None):
        self.path, self.command, self.name = Path(path), command, name
        self.target = target if target is not None else self.path.parent
        self.fd: int | None = None
        self.created_dir: Path | None = None

    def __enter__(self) -> RunLock:
        d = self.path.parent
        if not d.exists():
            top = d
            while not top.parent.exists():
                top = top.parent
            d.mkdir(parents=True, exist_ok=True)
            self.created_dir = top
        try:
            self._take()
        except BaseException:
            self._remove_created_dirs()
            raise
        return self

    def _take(self) -> None:
        for _ in range(5):  # retried when the file was deleted or replaced between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with os.fdopen(fd) as f:
                    info = _read_info(f)
                raise UsageError(f"{self.name} '{self.target}' is in use by {_holder_text(info)}; wait for it to "
                                 "end or choose another directory") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise UsageError(f"{self.name}: cannot take the lock '{self.path}' (it keeps being replaced)")
        self.fd = fd
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Delete the lock file (while still holding it) and close it; folders the lock created and nothing
        else filled are removed again (a run refused after its checks leaves no empty --out behind)."""
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        self._remove_created_dirs()

    def _remove_created_dirs(self) -> None:
        if self.created_dir is None:
            return
        d = self.path.parent
        while True:
            try:
                d.rmdir()  # only if empty
            except OSError:
                break
            if d == self.created_dir:
                break
            d = d.parent
        self.created_dir = None


# -- what a folder holds ----------------------------------------------------------------------------

def folder_kind(path: str | os.PathLike) -> str | None:
    """Which vlaforge output ``path`` holds: checkpoint | train | policy | demos | demo, or None (absent,
    empty, or not a vlaforge output)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        return None
    if (p / "state.json").is_file():
        return "checkpoint"
    if (p / "demo_results.json").is_file() or ((p / "demos" / "meta" / "info.json").is_file()
                                              and (p / "sft").is_dir()):
        return "demo"
    if ((p / "checkpoint" / "state.json").is_file() or (p / "final" / "config.json").is_file()
            or (p / "metrics.jsonl").is_file() or (p / "train_config.json").is_file()
            or (p / "ire_vla.json").is_file()):
        return "train"
    if (p / "config.json").is_file() and ((p / "model.safetensors").is_file() or (p / "backbone").is_dir()
                                          or (p / "adapter").is_dir()):
        return "policy"
    if (p / "meta" / "info.json").is_file():
        return "demos"
    return None


def _is_empty(p: Path) -> bool:
    return not p.is_dir() or not [c for c in p.iterdir() if c.name != LOCK_NAME]


def check_target(command: str, out: str | os.PathLike, overwrite: bool = False, name: str = "--out") -> None:
    """May ``command`` write its output ``out``? UsageError if not. Reads only."""
    p = Path(out).expanduser()
    if _is_empty(p):
        pass
    else:
        kind, mine = folder_kind(p), KIND_OF_COMMAND[command]
        if kind is not None and kind != mine:
            raise UsageError(f"{name} '{out}' is a {WHAT[kind]}; `vlaforge {command}` would "
                             f"{'replace' if command in ('sft', 'collect') else 'write into'} it: pass another "
                             "directory")
        if kind == mine and command in ("train", "sft") and not overwrite:
            raise UsageError(f"{name} '{out}' already holds {'a training run' if kind == 'train' else 'a policy'} "
                             "(an earlier run's output); pass --overwrite to replace it, or another directory")
    parent = p.absolute().parent
    if command in ("sft", "collect") and p.name in ("checkpoint", "final") and folder_kind(parent) == "train":
        raise UsageError(f"{name} '{out}' is part of the training run '{parent}'; pass a directory outside it")


def clear_train_run(out: str | os.PathLike) -> list[Path]:
    """Remove what an earlier ``vlaforge train`` wrote in ``out`` (``--overwrite``; run under the lock);
    other files are left. Returns what was removed."""
    p = Path(out)
    gone = []
    if p.is_dir():
        pat = re.compile(r"^\.(checkpoint|final)\.(tmp|old)-")
        for c in sorted(p.iterdir()):
            if c.name in TRAIN_ENTRIES or _TRAIN_EXTRA.match(c.name) or pat.match(c.name):
                if c.is_dir() and not c.is_symlink():
                    shutil.rmtree(c)
                else:
                    c.unlink()
                gone.append(c)
    return gone
