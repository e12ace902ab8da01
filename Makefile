# Two commands for a fresh Debian machine with Python 3.11:  make demo  /  make test
# Both are idempotent: they create .venv once and re-use it.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test setup sysdeps sysdeps-maniskill bench lint clean

$(BIN)/.stamp: pyproject.toml
	@$(MAKE) --no-print-directory sysdeps
	@$(MAKE) --no-print-directory sysdeps-maniskill || echo "no Vulkan driver: the ManiSkill tests will be skipped"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel of torch first (a local file on these machines); never a multi-GB CUDA build in CI.
	$(BIN)/pip install -q torch==2.13.0 || $(BIN)/pip install -q torch --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e '.[metaworld,kitchen,libero,maniskill,hf,ray,dev]'
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

# Vulkan for ManiSkill3/SAPIEN on CPU: Debian 12's lavapipe (Mesa 22.3) is too old, so Mesa 25's lavapipe is
# unpacked from bookworm-backports into a private folder (the system's Mesa is left alone);
# vlaforge.envs.maniskill points VK_ICD_FILENAMES at it. Skipped when present.
MESA_VK ?= $(HOME)/.cache/vlaforge/mesa-vulkan
sysdeps-maniskill:
	@if [ ! -f "$(MESA_VK)/lvp_icd.json" ]; then \
	  echo "installing Vulkan (libvulkan1 + Mesa 25 lavapipe from bookworm-backports into $(MESA_VK))"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/ || \
	    echo "deb http://deb.debian.org/debian bookworm-backports main" | $$SUDO tee /etc/apt/sources.list.d/vlaforge-backports.list >/dev/null; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    libvulkan1 libllvm15 libdrm-amdgpu1 libelf1 libwayland-client0 libx11-xcb1 libxcb-dri3-0 libxcb-present0 \
	    libxcb-randr0 libxcb-shm0 libxcb-sync1 libxcb-xfixes0 libxshmfence1 libzstd1 >/dev/null && \
	  tmp=$$(mktemp -d) && chmod 755 $$tmp && (cd $$tmp && apt-get download -qq -t bookworm-backports mesa-vulkan-drivers 2>/dev/null) && \
	  rm -rf "$(MESA_VK).tmp" && mkdir -p "$(MESA_VK).tmp" && dpkg -x $$tmp/mesa-vulkan-drivers_*.deb "$(MESA_VK).tmp/root" && \
	  lib=$$(cd "$(MESA_VK).tmp/root" && find usr -name libvulkan_lvp.so | head -1) && \
	  sed "s#\"libvulkan_lvp.so\"#\"$(MESA_VK)/root/$$lib\"#" "$(MESA_VK).tmp/root/usr/share/vulkan/icd.d/lvp_icd.json" > "$(MESA_VK).tmp/lvp_icd.json" && \
	  rm -rf "$(MESA_VK)" && mv "$(MESA_VK).tmp" "$(MESA_VK)" && rm -rf $$tmp; \
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
