"""Paths checked before a command reads or writes them: usable names (``check_path``), output folders and files
that can be created (``check_out_dir`` / ``check_out_file``), outputs replaced whole only when they are an earlier
vlaforge output of the same kind (``check_replaceable``, ``check_manifest_replaceable``). One-line ``UsageError``
naming the flag; nothing is created (a probe file is written and deleted in an existing folder).

    python -c "from vlaforge.paths import check_out_dir; check_out_dir('--out', '/proc/x')"   # UsageError
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from vlaforge.checks import need
from vlaforge.errors import UsageError


def _probe_writable(d: Path, name: str) -> None:
    """Create and delete a file in the existing directory ``d`` (also right for root and read-only mounts)."""
    try:
        fd, p = tempfile.mkstemp(prefix=".vlaforge-probe-", dir=d)
        os.close(fd)
        os.unlink(p)
    except OSError as e:
        raise UsageError(f"{name}: cannot write in '{d}' ({e.strerror or type(e).__name__}); "
                         "choose a writable directory") from None


OUT_SUFFIX = 32
"""bytes an output's name may grow by: its temp and lock siblings (``.NAME.tmp-PID-XXXXXXXX``, ``.NAME.lock``)"""


def _name_max(p: Path) -> int:
    """The longest file name (bytes) the file system under ``p`` (its nearest existing folder) allows."""
    q = p.absolute()
    while True:
        try:
            return os.pathconf(q, "PC_NAME_MAX")
        except (OSError, ValueError):
            if q == q.parent:
                return 255
            q = q.parent


def check_path(name: str, path: str | os.PathLike, out: bool = False) -> None:
    """``path`` is a usable path before anything reads or writes it: no NUL byte, each name within the file system's
    limit (an output's with room for its temp siblings' suffixes), and every existing part resolves (no symlink
    loop, no dangling symlink, no folder without permission): one-line ``UsageError`` otherwise."""
    s = os.fspath(path)
    need("\0" not in s, f"{name} holds a NUL character; pass a path")
    p = Path(s).expanduser()
    limit = _name_max(p)
    room = OUT_SUFFIX if out else 0
    for part in p.parts:
        n = len(os.fsencode(part))
        need(n + room <= limit, f"{name}: the name '{part[:24]}...' is {n} bytes; the file system allows {limit}"
                                + (f" (an output's name needs {room} more for its temp files)" if out else "")
                                + ": choose a shorter name")
    full = p.absolute()
    need(len(os.fsencode(str(full))) + room < 4096, f"{name}: the path is longer than the file system allows "
                                                    "(4096 bytes); choose a shorter one")
    for q in [*reversed(full.parents), full]:
        try:
            os.stat(q)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.islink(q):
                raise UsageError(f"{name}: '{q}' is a symbolic link to the missing '{os.readlink(q)}'; fix the link or "
                                 "choose another path") from None
            return
        except OSError as e:
            raise UsageError(f"{name}: cannot use '{q}' ({e.strerror or type(e).__name__}); choose another path") \
                from None


def check_out_dir(name: str, path: str | os.PathLike) -> None:
    """``path`` will be a directory: it is one already, or it can be created under a writable folder."""
    p = Path(path).expanduser()
    need(str(path).strip() != "", f"{name} is empty; pass a directory")
    if p.exists() and not p.is_dir():
        raise UsageError(f"{name} '{path}' is a file, not a directory; pass a directory path")
    _check_creatable(name, p)


def check_out_file(name: str, path: str | os.PathLike) -> None:
    """``path`` will be a file: not an existing directory, in a folder that exists or can be created."""
    p = Path(path).expanduser()
    need(str(path).strip() != "", f"{name} is empty; pass a file path")
    if p.is_dir():
        raise UsageError(f"{name} '{path}' is a directory; pass a file path (e.g. {Path(path) / 'eval.json'})")
    _check_creatable(name, p.parent)


REPLACEABLE = {"demos": ("meta/info.json", "demo dataset"), "policy": ("config.json", "policy directory")}


def check_replaceable(name: str, path: str | os.PathLike, kind: str) -> None:
    """``path`` is written atomically as a whole (an existing directory is replaced, everything in it deleted):
    refuse unless it is absent, empty, or an earlier vlaforge output of the same ``kind`` (demos | policy)."""
    p = Path(path).expanduser()
    if not p.is_dir() or not any(p.iterdir()):
        return
    marker, what = REPLACEABLE[kind]
    need((p / marker).is_file(), f"{name} '{path}' exists and is not a vlaforge {what}: writing it would delete "
                                 "everything in it; pass a new or empty directory")


def check_manifest_replaceable(name: str, path: Path) -> None:
    """An existing file at an eval manifest's path must be an earlier manifest (it is overwritten)."""
    if not path.is_file():
        return
    try:
        ok = isinstance(json.loads(path.read_text()), dict) and "results" in json.loads(path.read_text())
    except (OSError, ValueError):
        ok = False
    need(ok, f"{name} '{path}' exists and is not an eval manifest: it would be overwritten; pass a new file path")


def _check_creatable(name: str, p: Path) -> None:
    q = p.absolute()
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise UsageError(f"{name} '{p}' lies under the file '{q}'; choose a path under a directory")
    _probe_writable(q, name)


