# diff2scene — everything a fresh machine needs is installed by these targets.
#   make demo   bag replay → labelled map, query answers, pictures (in demo_out/)
#   make test   lint + type check + the test suite
#   make bench  benchmarks → bench/results/*.json + *.md (and STALE.md: results older than
#               the code they measure)
#   make soak   the node under faults for 20 minutes → bench/results/soak.json + .md
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
STAMP_DEPS := $(VENV)/.deps-installed
STAMP_PKG := $(VENV)/.pkg-installed
STAMP_DEB := build/.debian-installed
WS := ros2_ws
WS_INSTALL := $(WS)/install
# The colcon build keeps one prefix per package (install/<package>/). This stamp sits in the
# prefix the tests import most, so a fresh clone builds before anything imports it.
STAMP_WS := $(WS_INSTALL)/diff2scene_interfaces/.built
# Message packages the tests and tools import from the workspace: tf2_msgs and vision_msgs are
# built from ros2_ws/compat only where the ROS 2 in use lacks them (the PyPI wheels); a missing
# prefix on these paths is harmless.
WS_MSG_PKGS := diff2scene_interfaces tf2_msgs vision_msgs
WS_PREFIXES := $(foreach p,$(WS_MSG_PKGS),$(abspath $(WS_INSTALL)/$(p)))
empty :=
space := $(empty) $(empty)
DEB_PACKAGES := libusb-1.0-0 libgl1 libegl1 libgomp1

# What the built message packages need to be importable and loadable inside the venv (the ROS
# wheels keep their ament index in the venv's share/). /work/tools/d2s_env.sh mirrors this.
RUN_ENV := PYTHONPATH=$(subst $(space),:,$(addsuffix /lib/python3.11/site-packages,$(WS_PREFIXES)))$${PYTHONPATH:+:$$PYTHONPATH} \
	LD_LIBRARY_PATH=$(subst $(space),:,$(addsuffix /lib,$(WS_PREFIXES)))$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} \
	AMENT_PREFIX_PATH=$(subst $(space),:,$(WS_PREFIXES)):$(abspath $(VENV)) \
	RMW_IMPLEMENTATION=rmw_fastrtps_cpp ROS_LOCALHOST_ONLY=1 \
	HF_HUB_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=2

.PHONY: help setup venv debs ws interfaces lint test demo bench bench-quality bench-scale bench-gpu \
	bench-real-weights soak clean lock

help:
	@echo "make demo | make test | make bench | make bench-quality | make soak | make setup | make clean"

setup: venv ws

debs: $(STAMP_DEB)
$(STAMP_DEB):
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mkdir -p build && touch $@

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# requirements.lock pins every package (torch 2.14.1 / torchvision 0.29.1: the build that lies
# on this machine's disk) so a fresh machine gets the same set.
$(STAMP_DEPS): requirements.lock | $(VENV)/bin/python
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements.lock 2>&1 | grep -v "is ignored" || true
	@$(VPY) -c "import torch, torchvision, open3d, open_clip, diffusers, rosbags, rclpy, colcon_core" 2>/dev/null || \
	  { echo "dependency install failed"; exit 1; }
	touch $@

$(STAMP_PKG): $(STAMP_DEPS) pyproject.toml
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
	touch $@

venv: $(STAMP_DEB) $(STAMP_PKG)

# The ROS 2 workspace, built with colcon against the venv's ROS 2 wheels (scripts/build_ws.sh
# says how). The installed diff2scene package holds a copy of the Python sources, so they are
# prerequisites too; colcon rebuilds incrementally.
WS_SOURCES := $(shell find $(WS)/src/ $(WS)/compat $(WS)/cmake src/diff2scene diff2scene_ros launch models \
	-type f \( -name '*.py' -o -name '*.msg' -o -name '*.srv' -o -name '*.xml' -o -name '*.txt' \
	-o -name '*.cmake' -o -name '*.yaml' -o -name '*.rviz' -o -name '*.cfg' \) \
	-not -path '*/__pycache__/*' 2>/dev/null)
ws: $(STAMP_WS)
interfaces: ws
$(STAMP_WS): $(STAMP_PKG) scripts/build_ws.sh $(WS_SOURCES)
	bash scripts/build_ws.sh $(VENV)
	touch $@

lint: venv
	$(VENV)/bin/ruff check src diff2scene_ros tests bench scripts
	$(VENV)/bin/mypy src/diff2scene diff2scene_ros
	$(VENV)/bin/hadolint docker/Dockerfile

test: setup lint
	$(RUN_ENV) OMP_NUM_THREADS=1 $(VPY) -m pytest -q tests

demo: setup
	$(RUN_ENV) OMP_NUM_THREADS=1 $(VPY) -m diff2scene.demo --out demo_out

bench: setup
	$(RUN_ENV) $(VPY) -m bench.run_all

bench-quality: setup
	$(RUN_ENV) $(VPY) -m bench.quality

# A building floor (~1200 m², rendered once into /tmp/diff2scene_scale) through the runtime.
bench-scale: setup
	$(RUN_ENV) $(VPY) -m bench.scale $${SCALE_ARGS:-}

# CUDA machine only: the GPU figures (bench/gpu.sh makes its own environment).
bench-gpu:
	PYTHON=$${PYTHON:-python3} bench/gpu.sh bench/results

bench-real-weights: setup
	$(RUN_ENV) $(VPY) -m bench.real_weights

# The node as its own process for 20 minutes under injected faults (not part of `make test`):
# SOAK_ARGS="--minutes 2" for a short run.
soak: setup
	$(RUN_ENV) $(VPY) -m bench.soak $${SOAK_ARGS:-}

# Rewrite requirements.lock from the current venv. The ROS 2 wheels carry Python
# sub-distributions (rclpy, *_msgs egg-infos) that pip lists but cannot install by name.
lock:
	SP=$(VENV)/lib/python3.11/site-packages; \
	nested=$$(grep -hoE '^[A-Za-z0-9_.]+-[0-9][^/]*\.egg-info/' $$SP/ros*.dist-info/RECORD | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort -u); \
	{ echo "# Exact package set of .venv (pip freeze, minus the Python sub-distributions that the"; \
	  echo "# ROS 2 wheels carry inside themselves and that are not installable by name)."; \
	  echo "# Regenerate with: make lock"; \
	  $(VPY) -m pip freeze --exclude-editable | while read -r line; do \
	    n=$$(echo "$${line%%==*}" | tr 'A-Z-' 'a-z_'); echo "$$nested" | grep -qx "$$n" || echo "$$line"; done; \
	} > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf build $(WS)/build $(WS)/install $(WS)/log demo_out
