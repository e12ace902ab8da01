"""The prepared GPU check (benchmarks/gpu_train.sh) at toy sizes on the CPU, so that it cannot rot between the
sessions that are lent a GPU: every case runs through the library's entry points and writes the issue's layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_case(tmp_path):
    env = {**os.environ, "BENCH_DIR": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_train.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads((tmp_path / "gpu_train.json").read_text())
    keys = ["case", "policy", "suite", "device", "envs", "env_steps_per_s", "update_s", "peak_gib", "ok", "error"]
    assert all(list(r) == keys for r in rows)
    assert sorted({r["case"] for r in rows}) == list("abcdef")
    for r in rows:
        assert r["ok"] and r["error"] is None and r["device"] == "cpu", r
    assert [r["device"] for r in rows if r["case"] == "a"] == ["cpu", "cpu"]
    assert all(r["update_s"] > 0 for r in rows if r["case"] in "abcdf")
