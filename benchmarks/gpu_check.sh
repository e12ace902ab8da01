#!/usr/bin/env bash
# GPU figures for issue 16, taken in one go (<= 8 minutes on one GPU), random weights at the real sizes:
#   1. OpenVLA-7B: rollout decisions/s and one PPO update's peak memory with LoRA r=32 + bf16 + gradient
#      checkpointing (checks the 17.9 GiB projection of docs/benchmarks.md) -> $BENCH_DIR/gpu_openvla.json
#   2. SmolVLA: rollout actions/s for a batch of envs and its update time -> $BENCH_DIR/gpu_smolvla.json
# Each part runs under its own time limit; one failing does not stop the other (exit status 1 then).
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # tiny sizes on CPU: checks that the scripts run
# Environment: PYTHON (interpreter; default .venv/bin/python if present, else python3), BENCH_DIR (where the
# JSON files go; default docs/bench). The scripts are found next to this file, so a copy of the code
# elsewhere (with PYTHONPATH pointing at its src/) runs as it is.
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/python.sh"  # PY
out=${BENCH_DIR:-docs/bench}
export MUJOCO_GL=${MUJOCO_GL:-egl}
status=0
echo "== OpenVLA-7B (random weights): rollout + PPO update, LoRA + bf16 + checkpointing"
timeout 270 "$PY" "$here/gpu_openvla.py" --out "$out/gpu_openvla.json" "$@" \
  || { echo "gpu_openvla.py failed or timed out"; status=1; }
echo "== SmolVLA (random weights): rollout actions/s + update time"
timeout 170 "$PY" "$here/gpu_smolvla.py" --out "$out/gpu_smolvla.json" "$@" \
  || { echo "gpu_smolvla.py failed or timed out"; status=1; }
exit $status
