# Two commands for a fresh Debian machine with Python 3.11:  make demo  /  make test
# Both are idempotent: they create .venv once and re-use it.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test setup sysdeps bench lint clean

$(BIN)/.stamp: pyproject.toml
	@$(MAKE) --no-print-directory sysdeps
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel of torch first (a local file on these machines); never a multi-GB CUDA build in CI.
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e '.[metaworld,kitchen,libero,hf,ray,dev]'
	touch $@

setup: $(BIN)/.stamp

# Debian libraries for headless MuJoCo rendering (EGL, OSMesa as fallback). Skipped when present.
sysdeps:
	@if ! dpkg -s libegl1 libgl1 libopengl0 libegl-mesa0 libgl1-mesa-dri libosmesa6 >/dev/null 2>&1; then \
	  echo "installing Debian packages for headless rendering"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    libegl1 libgl1 libopengl0 libegl-mesa0 libgl1-mesa-dri libosmesa6 >/dev/null; \
	fi

demo: setup
	$(BIN)/vlaforge demo

test: setup
	$(BIN)/python -m pytest -q -x --durations=10

bench: setup
	$(BIN)/python benchmarks/rollout_throughput.py --out docs/bench/rollout_throughput.json

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache
