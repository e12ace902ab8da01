"""Atomic writes: a file or directory appears whole or not at all.

``atomic_dir(path)`` builds the directory in ``.<name>.tmp-<pid>-*`` beside it and renames it into
place (an existing one is first renamed to ``.<name>.old-<pid>``, then deleted). A process killed
in between leaves those names behind; ``repair_atomic(path)`` (run on resume, and by every
``atomic_dir`` for temp dirs of processes that are gone) restores ``path`` from its ``.old-`` copy
when the kill fell between the two renames and deletes the rest.

What they write follows the process umask like any ``open``/``mkdir`` (``tempfile`` alone would give 0700
folders and 0600 files, and so does safetensors' writer): a group-readable run folder stays group-readable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def umask() -> int:
    """The process umask (read from /proc where it is shown, else by setting and restoring it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    m = os.umask(0o022)
    os.umask(m)
    return m


def _leftovers(path: Path) -> list[tuple[Path, str, int | None]]:
    """(leftover, 'tmp' | 'old', pid or None) beside ``path``."""
    pat = re.compile(rf"^\.{re.escape(path.name)}\.(tmp|old)-(?:(\d+)(?:-|$))?")
    out = []
    if path.parent.is_dir():
        for p in path.parent.iterdir():
            m = pat.match(p.name)
            if m:
                out.append((p, m.group(1), int(m.group(2)) if m.group(2) else None))
    return out


def repair_atomic(path: str | os.PathLike, only_dead: bool = False) -> list[Path]:
    """Clean up after an interrupted ``atomic_dir(path)`` / ``atomic_write_text(path)``.

    If ``path`` is missing but a ``.old-`` copy exists (killed between the two renames), the newest
    copy is renamed back. Temp and old leftovers are then deleted; with ``only_dead`` only those
    tagged with the pid of a process that no longer runs. Returns what was deleted or restored."""
    path = Path(path)
    left = [x for x in _leftovers(path) if not only_dead or (x[2] is not None and not _pid_alive(x[2]))]
    done = []
    olds = sorted((p for p, kind, _ in left if kind == "old"), key=lambda p: p.stat().st_mtime)
    if not path.exists() and olds:
        os.rename(olds[-1], path)
        done.append(olds.pop())
    for p, _, _ in left:
        if p in done:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        done.append(p)
    return done


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temp dir beside ``path``; on success rename it to ``path`` (replacing an old one).

    On any exception the temp dir is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_atomic(path, only_dead=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700 whatever the umask
        yield tmp
        mask = umask()
        for f in tmp.rglob("*"):  # flush file contents before the rename makes them visible
            if f.is_symlink():
                continue
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                # writers that ignore the umask (safetensors: 0600) get the mode a plain open() would give
                os.chmod(f, ((f.stat().st_mode & 0o777) | 0o666) & ~mask)
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600 whatever the umask
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """For writers that take a file name (imageio, matplotlib): yields ``<stem>.tmp<suffix>`` beside ``path`` (the
    suffix kept, so the writer picks the format), renamed onto ``path`` when the block ends, removed if it raises."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
