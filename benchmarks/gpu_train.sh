#!/usr/bin/env bash
# The GPU check of issue 22 (<= 10 minutes on one H100): train/sft on CUDA through the library's own entry points,
# each case in its own process under its own time limit -> $BENCH_DIR/gpu_train.json (docs/benchmarks.md, "GPU").
#
#   bash benchmarks/gpu_train.sh             # on a GPU machine, from the repository root
#   bash benchmarks/gpu_train.sh --dry-run   # toy sizes on the CPU (part of `make test`)
#   bash benchmarks/gpu_train.sh --cases a,e # some cases only
# Environment: PYTHON (default .venv/bin/python if present, else python3), BENCH_DIR (default docs/bench).
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/python.sh"  # PY
export MUJOCO_GL=${MUJOCO_GL:-egl}
exec "$PY" "$here/gpu_train.py" --out "${BENCH_DIR:-docs/bench}/gpu_train.json" "$@"
