# Sourced by the GPU check scripts: PY = $PYTHON, else .venv/bin/python if present, else python3.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  PY=python3
  [ -x .venv/bin/python ] && PY=.venv/bin/python
fi
