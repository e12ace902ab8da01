# Two commands for a fresh Debian machine with Python 3.11:  make demo  /  make test
# Both are idempotent: they create .venv once and re-use it.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
TORCH_VERSION ?= 2.13.0
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test setup sysdeps sysdeps-maniskill backports-source bench lint clean

$(BIN)/.stamp: pyproject.toml
	@$(MAKE) --no-print-directory sysdeps
	@$(MAKE) --no-print-directory sysdeps-maniskill || echo "no Vulkan driver: the ManiSkill tests will be skipped"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch's CPU wheel first, from whatever package index pip is configured with (pip.conf, PIP_INDEX_URL,
	# PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS; a local folder on these machines): never a multi-GB CUDA build in CI.
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)+cpu" || { \
	  echo "no CPU build torch==$(TORCH_VERSION)+cpu on the configured package index; installing torch==$(TORCH_VERSION)" \
	       "(point PIP_EXTRA_INDEX_URL at an index with CPU wheels to avoid a CUDA build)"; \
	  $(BIN)/pip install -q "torch==$(TORCH_VERSION)"; }
	$(BIN)/pip install -q -e '.[metaworld,kitchen,libero,maniskill,hf,ray,wandb,lerobot,dev]'
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
# unpacked from <codename>-backports into a private folder (the system's Mesa is left alone);
# vlaforge.envs.maniskill points VK_ICD_FILENAMES at it. Skipped when present.
# The backports source is added only if apt has none, on the mirror apt already uses for the release
# (read from /etc/apt/sources.list, sources.list.d/*.list and deb822 sources.list.d/*.sources), so it also
# works behind a local mirror; `make backports-source` prints what would be added.
MESA_VK ?= $(HOME)/.cache/vlaforge/mesa-vulkan
APT_SOURCES ?= /etc/apt

# Shell: the release codename, then "deb822 stanza" for <codename>-backports on the release's own mirror
# (URIs and Signed-By copied from the release's entry); empty if a backports source exists already; exit 1 if
# no entry for the release is found.
define BACKPORTS_SOURCE
codename=$$(. /etc/os-release 2>/dev/null && echo "$$VERSION_CODENAME"); \
[ -n "$$codename" ] || { echo "cannot read VERSION_CODENAME from /etc/os-release" >&2; exit 1; }; \
lists=$$(ls $(APT_SOURCES)/sources.list $(APT_SOURCES)/sources.list.d/*.list 2>/dev/null); \
stanzas=$$(ls $(APT_SOURCES)/sources.list.d/*.sources 2>/dev/null); \
if [ -n "$$lists$$stanzas" ] && cat $$lists $$stanzas | grep -v '^[[:space:]]*\#' | grep -qw -- "$$codename-backports"; then exit 0; fi; \
found=$$( { [ -z "$$lists" ] || awk -v c="$$codename" '$$1 == "deb" { i = 2; o = ""; \
    if ($$2 ~ /^\[/) { while (i <= NF && $$i !~ /\]$$/) { o = o " " $$i; i++ } o = o " " $$i; i++ } \
    if ($$(i + 1) == c) { k = ""; if (match(o, /signed-by=[^] ]+/)) k = substr(o, RSTART + 10, RLENGTH - 10); \
    print $$i "|" k; exit } }' $$lists; \
  [ -z "$$stanzas" ] || awk -v c="$$codename" 'BEGIN { RS = ""; FS = "\n" } { t = u = s = k = ""; e = "yes"; \
    for (i = 1; i <= NF; i++) { if ($$i ~ /^[[:space:]]*\#/ || index($$i, ":") == 0) continue; \
      key = tolower(substr($$i, 1, index($$i, ":") - 1)); v = substr($$i, index($$i, ":") + 1); \
      gsub(/^[[:space:]]+|[[:space:]]+$$/, "", v); \
      if (key == "types") t = v; else if (key == "uris") u = v; else if (key == "suites") s = v; \
      else if (key == "signed-by") k = v; else if (key == "enabled") e = v } \
    if ((" " t " ") ~ / deb / && (" " s " ") ~ (" " c " ") && e != "no") { split(u, us, " "); print us[1] "|" k; exit } }' $$stanzas; } | head -1 ); \
[ -n "$$found" ] || { echo "no apt source for '$$codename' in $(APT_SOURCES); add the backports suite by hand" >&2; exit 1; }; \
printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\n' "$${found%%|*}" "$$codename"; \
[ -z "$${found#*|}" ] || printf 'Signed-By: %s\n' "$${found#*|}"
endef
export BACKPORTS_SOURCE

backports-source:
	@sh -c "$$BACKPORTS_SOURCE"

sysdeps-maniskill:
	@if [ ! -f "$(MESA_VK)/lvp_icd.json" ]; then \
	  codename=$$(. /etc/os-release && echo "$$VERSION_CODENAME"); \
	  echo "installing Vulkan (libvulkan1 + Mesa 25 lavapipe from $$codename-backports into $(MESA_VK))"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  src=$$(sh -c "$$BACKPORTS_SOURCE") || exit 1; \
	  [ -z "$$src" ] || echo "$$src" | $$SUDO tee /etc/apt/sources.list.d/vlaforge-backports.sources >/dev/null; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	    libvulkan1 libllvm15 libdrm-amdgpu1 libelf1 libwayland-client0 libx11-xcb1 libxcb-dri3-0 libxcb-present0 \
	    libxcb-randr0 libxcb-shm0 libxcb-sync1 libxcb-xfixes0 libxshmfence1 libzstd1 >/dev/null && \
	  tmp=$$(mktemp -d) && chmod 755 $$tmp && (cd $$tmp && apt-get download -qq -t $$codename-backports mesa-vulkan-drivers 2>/dev/null) && \
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
