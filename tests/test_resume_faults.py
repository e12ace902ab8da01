"""Fault injection: a training run SIGKILLed at random points of collect, update and checkpoint write,
resumed each time, ends with metrics and weights identical to the uninterrupted run.

Each run is the real CLI in a subprocess, wrapped by a few lines that SIGKILL the process itself at the
n-th call of one phase (``SyncVecEnv.step``: mid-collect; ``AdamW.step``: mid-update; the rename of the
old checkpoint aside inside ``atomic_dir``: between the two renames of a checkpoint write, the worst
moment, when only ``.checkpoint.old-<pid>`` holds the state). n is drawn at random (seed printed).
"""

import json
import os
import random
import subprocess
import sys

import torch

WRAPPER = r'''
import os, signal, sys
phase, n = os.environ["FAULT"].split(":")
n, count = int(n), [0]
def tick():
    count[0] += 1
    if count[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
if phase == "collect":
    from vlaforge.envs import vector
    orig = vector.SyncVecEnv.step
    def step(self, *a, **k):
        tick()
        return orig(self, *a, **k)
    vector.SyncVecEnv.step = step
elif phase == "update":
    import torch
    orig = torch.optim.AdamW.step
    def step(self, *a, **k):
        out = orig(self, *a, **k)
        tick()  # dies with the weights half-way through the update's minibatches
        return out
    torch.optim.AdamW.step = step
elif phase == "checkpoint":
    import vlaforge.fsutil as fsutil
    real = os.rename
    class OsProxy:
        def __getattr__(self, k):
            return getattr(os, k)
        @staticmethod
        def rename(src, dst):
            real(src, dst)
            if ".old-" in str(dst):
                tick()  # the old checkpoint is moved aside, the new one not yet in place
    fsutil.os = OsProxy()
from vlaforge.cli import main
sys.exit(main(sys.argv[1:]))
'''

ARGS = ["train", "--algo", "ppo", "--ppo.minibatch-size", "32", "--suite", "pointreach", "--backbone", "state",
        "--env-kwargs", "radius", "0.2", "privileged", "1", "--groups", "8", "--num-envs", "8", "--eval-every", "0",
        "--no-progress", "--no-tensorboard", "--iterations", "4", "--lr-warmup", "3", "--threads", "1"]
# per iteration of this run: 12 SyncVecEnv.step calls (48 steps / chunk 4, one batch of 8 envs), 6 AdamW steps
# (2 epochs x 3 minibatches, value head included), one rename aside of the previous checkpoint (from iteration 2)


def _run(tmp_path, fault: str, *args):
    (tmp_path / "wrap.py").write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "FAULT": fault}
    return subprocess.run([sys.executable, str(tmp_path / "wrap.py"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def _rows(run):
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_at_random_points_then_resume_matches_uninterrupted(tmp_path, capsys):
    from vlaforge.cli import main
    from vlaforge.policies import load_policy

    seed = random.randrange(10 ** 6)
    rng = random.Random(seed)
    ref, run = tmp_path / "ref", tmp_path / "run"
    threads = torch.get_num_threads()
    try:  # the uninterrupted run, in-process (same CLI path; saves a subprocess start)
        assert main([*ARGS, "--out", str(ref)]) == 0
    finally:
        torch.set_num_threads(threads)
    # 1: mid-collect of iteration 2 (checkpoint 1 exists); 2: mid-update of iteration 2; 3: between the two renames
    # of the checkpoint write of iteration 2 or 3; then resume to the end
    plan = [("collect", rng.randint(14, 23)), ("update", rng.randint(1, 6)), ("checkpoint", rng.randint(1, 2))]
    resume = ["train", "--resume", str(run / "checkpoint"), "--no-progress"]
    killed = []
    for i, (phase, n) in enumerate(plan):
        r = _run(tmp_path, f"{phase}:{n}", *([*ARGS, "--out", str(run)] if i == 0 else resume))
        killed.append((phase, n, r.returncode))
        assert r.returncode == -9, (seed, killed, r.stderr[-2000:])
    assert not (run / "checkpoint").exists() and any(p.name.startswith(".checkpoint.old-") for p in run.iterdir())
    r = _run(tmp_path, "none:0", *resume)
    assert r.returncode == 0, (seed, killed, r.stderr[-2000:])
    assert f"run directory: {run}" in r.stdout
    assert _rows(run) == _rows(ref), (seed, killed)
    a, b = load_policy(ref / "final"), load_policy(run / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())), (seed, killed)
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert not leftovers, (seed, killed, leftovers)
