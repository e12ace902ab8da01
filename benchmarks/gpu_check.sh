#!/usr/bin/env bash
# GPU figures for issue 16, taken in one go (<= 8 minutes on one GPU), random weights at the real sizes:
#   1. OpenVLA-7B: rollout decisions/s and one PPO update's peak memory with LoRA r=32 + bf16 + gradient
#      checkpointing (checks the 17.9 GiB projection of docs/benchmarks.md) -> docs/bench/gpu_openvla.json
#   2. SmolVLA: rollout actions/s for a batch of envs and its update time -> docs/bench/gpu_smolvla.json
#      (benchmarks/gpu_smolvla.py, provided by the SmolVLA work; skipped with a message when absent)
#
#   bash benchmarks/gpu_check.sh            # on a GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --dry-run  # tiny sizes on CPU: checks that the scripts run
set -u
PY=${PYTHON:-python}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export MUJOCO_GL=${MUJOCO_GL:-egl}
status=0
echo "== OpenVLA-7B (random weights): rollout + PPO update, LoRA + bf16 + checkpointing"
timeout 330 "$PY" benchmarks/gpu_openvla.py "$@" || { echo "gpu_openvla.py failed or timed out"; status=1; }
if [ -f benchmarks/gpu_smolvla.py ]; then
  echo "== SmolVLA (random weights): rollout actions/s + update time"
  timeout 150 "$PY" benchmarks/gpu_smolvla.py "$@" || { echo "gpu_smolvla.py failed or timed out"; status=1; }
else
  echo "== SmolVLA: skipped (benchmarks/gpu_smolvla.py does not exist yet)"
fi
exit $status
