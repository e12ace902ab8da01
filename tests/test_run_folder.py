"""A run owns its folder (``vlaforge.runlock``): a live run's lock refuses a second run (resume included) in one
line before anything is touched, a stale lock of a dead process is taken over, ``--overwrite`` replaces an earlier
run; SIGTERM is handled like Ctrl-C (workers closed, temp folders removed); written files follow the umask; sft logs
inside its folder. The refusal table of bad input (other commands' folders, runs without --overwrite) is in
tests/test_bad_input.py.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlaforge.cli import main
from vlaforge.runlock import RunLock, folder_kind, holder, lock_path

PRIV = ["--env-kwargs", "radius", "0.2", "privileged", "1"]
TRAIN = ["train", "--backbone", "state", *PRIV, "--groups", "2", "--num-envs", "4", "--eval-every", "0",
         "--no-progress", "--no-tensorboard", "--threads", "1"]
DEAD_PID = 2 ** 22 + 12345  # above the default pid_max: no such process


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 1-iteration training run and a small demo dataset (copied by the tests that change them)."""
    root = tmp_path_factory.mktemp("base")
    assert main([*TRAIN, "--iterations", "1", "--out", str(root / "run")]) == 0
    assert main(["collect", "--episodes", "2", "--num-envs", "2", "--tasks", "red-0", *PRIV,
                 "--out", str(root / "demos")]) == 0
    return root


def _tree(d: Path) -> dict:
    """Every path under ``d`` and each file's mtime (a folder's changes with the input checks' write probe)."""
    return {str(p.relative_to(d)): p.stat().st_mtime_ns if p.is_file() else None for p in d.rglob("*")}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


HOLDER = """
import fcntl, json, os, sys, time
f = open(sys.argv[1], "w"); fcntl.flock(f, fcntl.LOCK_EX)
f.write(json.dumps({"pid": os.getpid(), "host": "h", "command": "train"})); f.flush()
print("locked", flush=True); time.sleep(120)
"""


@pytest.fixture
def live_holder():
    """Start a process that holds the lock file given to the returned function (a live run); killed after."""
    procs = []

    def start(path: Path) -> subprocess.Popen:
        path.parent.mkdir(parents=True, exist_ok=True)
        p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_live_lock_refuses_a_second_train_and_a_stale_one_is_taken_over(tmp_path, capsys, live_holder):
    run = tmp_path / "run"
    p = live_holder(lock_path("train", run))
    before = _tree(tmp_path)
    assert main([*TRAIN, "--iterations", "1", "--out", str(run)]) == 2
    line = _one_line(capsys)
    assert "in use" in line and f"pid {p.pid}" in line and str(run) in line, line
    assert _tree(tmp_path) == before, "a refused run touched the folder"
    p.kill()
    p.wait()  # the holder died: its lock file stays, stale
    assert (run / ".lock").exists() and holder(run / ".lock") is None
    assert main([*TRAIN, "--iterations", "1", "--out", str(run)]) == 0
    assert (run / "final" / "model.safetensors").exists()
    assert not [c.name for c in run.iterdir() if c.name.startswith(".")], "the lock file outlived the run"


def test_sft_and_collect_lock_beside_their_output(base, tmp_path, capsys, live_holder):
    out = tmp_path / "sft"
    live_holder(lock_path("sft", out))
    assert lock_path("sft", out) == tmp_path / ".sft.lock"
    assert main(["sft", "--demos", str(base / "demos"), "--backbone", "state", "--sft.steps", "2", "--threads", "1",
                 "--out", str(out)]) == 2
    assert "in use by a running `vlaforge train`" in _one_line(capsys)
    assert not out.exists()
    live_holder(lock_path("collect", tmp_path / "d"))
    assert main(["collect", "--episodes", "1", "--out", str(tmp_path / "d")]) == 2
    assert "in use" in _one_line(capsys) and not (tmp_path / "d").exists()


def test_resume_refused_while_its_run_is_live(base, tmp_path, capsys, live_holder):
    """Before: resume deleted the live run's temporary checkpoint folder. Now: one line, nothing touched."""
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    tmp_ck = run / f".checkpoint.tmp-{os.getpid()}-live"  # the live run is writing its next checkpoint
    tmp_ck.mkdir()
    (tmp_ck / "model.safetensors").write_text("half")
    live_holder(lock_path("train", run))
    before = _tree(run)
    assert main(["train", "--resume", str(run / "checkpoint"), "--no-progress"]) == 2
    line = _one_line(capsys)
    assert "--resume" in line and "in use" in line, line
    assert _tree(run) == before and tmp_ck.exists()
    # a fork elsewhere is refused too: it would read the live run's checkpoint
    assert main(["train", "--resume", str(run / "checkpoint"), "--out", str(tmp_path / "fork"), "--no-progress"]) == 2
    assert "in use" in _one_line(capsys) and not (tmp_path / "fork").exists()


def test_resume_takes_over_a_stale_lock(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    (run / ".lock").write_text(json.dumps({"pid": DEAD_PID, "host": "h", "command": "train"}))
    assert main(["train", "--resume", str(run / "checkpoint"), "--no-progress"]) == 0
    assert not (run / ".lock").exists()


def test_overwrite_replaces_an_earlier_training_run(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base / "run", run)
    (run / "notes.txt").write_text("mine")  # not the run's: kept
    (run / ".checkpoint.tmp-1-x").mkdir()  # a leftover of the old run
    before = _tree(run)
    assert main([*TRAIN, "--iterations", "2", "--out", str(run)]) == 2
    assert "--overwrite" in _one_line(capsys) and _tree(run) == before
    assert main([*TRAIN, "--iterations", "2", "--overwrite", "--out", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2], "the old run's metrics were kept"
    assert json.loads((run / "checkpoint" / "state.json").read_text())["iteration"] == 2
    assert (run / "notes.txt").read_text() == "mine"
    assert sorted(c.name for c in run.iterdir()) == ["checkpoint", "final", "metrics.jsonl", "notes.txt",
                                                      "train_config.json"]
    # --overwrite is not saved with the run: the checkpoint resumes
    assert "overwrite" not in json.loads((run / "checkpoint" / "state.json").read_text())["config"]


def test_sft_logs_inside_its_folder_and_overwrite(base, tmp_path, capsys):
    out = tmp_path / "sft"
    args = ["sft", "--demos", str(base / "demos"), "--backbone", "state", "--sft.steps", "3", "--sft.batch-size", "4",
            "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    assert (out / "logs" / "metrics.jsonl").exists() and not (tmp_path / "sft_logs").exists()
    assert folder_kind(out) == "policy"
    before = _tree(out)
    assert main(args) == 2
    assert "--overwrite" in _one_line(capsys) and _tree(out) == before
    assert main([*args, "--overwrite"]) == 0
    assert len((out / "logs" / "metrics.jsonl").read_text().splitlines()) == 2  # steps 0 and 2 of the new run only
    # a policy of the old layout (logs beside it in <out>_logs) still loads, and one with logs inside too
    from vlaforge.policies import load_policy

    old = tmp_path / "old"
    shutil.copytree(out, old)
    shutil.move(str(old / "logs"), str(tmp_path / "old_logs"))
    assert load_policy(old) is not None and load_policy(out) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "old_logs", "sft"]


@pytest.mark.parametrize("mask,dmode,fmode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, mask, dmode, fmode):
    from vlaforge.fsutil import atomic_dir, atomic_write_text

    old = os.umask(mask)
    try:
        with atomic_dir(tmp_path / "d") as t:
            (t / "f").write_text("x")
        atomic_write_text(tmp_path / "m.json", "{}")
        with RunLock(lock_path("sft", tmp_path / "x"), "sft", "--out"):
            lock_mode = (tmp_path / ".x.lock").stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == dmode
    assert (tmp_path / "d" / "f").stat().st_mode & 0o777 == fmode
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == fmode
    assert lock_mode == fmode


def test_sft_output_is_group_readable_under_umask_022(base, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["sft", "--demos", str(base / "demos"), "--backbone", "state", "--sft.steps", "1",
                     "--sft.batch-size", "4", "--threads", "1", "--out", str(tmp_path / "s")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "s" / "model.safetensors").stat().st_mode & 0o777 == 0o644


# -- SIGTERM is Ctrl-C --------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purpose
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def _terminate_when(proc: subprocess.Popen, ready, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert ready(), "the run did not get far enough in time"
    kids = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return kids, err


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_sigterm_during_train_closes_workers_and_keeps_the_checkpoint(tmp_path):
    from vlaforge.train.checkpoint import read_train_state

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "vlaforge.cli", *TRAIN, "--workers", "2", "--iterations", "10000",
                             "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    kids, err = _terminate_when(proc, lambda: (run / "checkpoint" / "state.json").exists() and len(_children(proc.pid)) >= 2)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated", err[-3000:]
    assert len(kids) >= 2
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "env workers outlived the run"
    assert read_train_state(run / "checkpoint")["iteration"] >= 1  # intact
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")], "temp folders or the lock were left"


def test_sigterm_during_collect_removes_its_temp_folder(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.Popen([sys.executable, "-m", "vlaforge.cli", "collect", "--episodes", "100000", "--num-envs", "4",
                             "--workers", "2", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    kids, err = _terminate_when(proc, lambda: any(p.name.startswith(".d.tmp-") for p in tmp_path.iterdir())
                                and len(_children(proc.pid)) >= 2)
    assert proc.returncode == 143, err[-3000:]
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "env workers outlived the run"
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "collect left files behind"
