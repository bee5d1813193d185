# diff2scene — everything a fresh machine needs is installed by these targets.
#   make demo   bag replay → labelled map, query answers, pictures (in demo_out/)
#   make test   lint + type check + the test suite
#   make bench  benchmarks → bench/results/*.json + *.md
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
STAMP_DEPS := $(VENV)/.deps-installed
STAMP_PKG := $(VENV)/.pkg-installed
STAMP_DEB := build/.debian-installed
IFACE_PREFIX := ros2_ws/install/diff2scene_interfaces
STAMP_IFACE := $(IFACE_PREFIX)/.built
DEB_PACKAGES := libusb-1.0-0 libgl1 libegl1 libgomp1

# What the built interfaces need to be importable and loadable inside the venv (the ROS
# wheels keep their ament index in the venv's share/).
RUN_ENV := PYTHONPATH=$(abspath $(IFACE_PREFIX))/lib/python3.11/site-packages$${PYTHONPATH:+:$$PYTHONPATH} \
	LD_LIBRARY_PATH=$(abspath $(IFACE_PREFIX))/lib$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} \
	AMENT_PREFIX_PATH=$(abspath $(IFACE_PREFIX)):$(abspath $(VENV)) \
	RMW_IMPLEMENTATION=rmw_fastrtps_cpp ROS_LOCALHOST_ONLY=1 \
	HF_HUB_OFFLINE=1 MPLBACKEND=Agg OMP_NUM_THREADS=2

.PHONY: help setup venv debs interfaces lint test demo bench bench-quality clean lock

help:
	@echo "make demo | make test | make bench | make bench-quality | make setup | make clean"

setup: venv interfaces

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
# on this machine's disk, DESIGN §4) so a fresh machine gets the same set.
$(STAMP_DEPS): requirements.lock | $(VENV)/bin/python
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements.lock 2>&1 | grep -v "is ignored" || true
	@$(VPY) -c "import torch, torchvision, open3d, open_clip, diffusers, rosbags, rclpy" 2>/dev/null || \
	  { echo "dependency install failed"; exit 1; }
	touch $@

$(STAMP_PKG): $(STAMP_DEPS) pyproject.toml
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
	touch $@

venv: $(STAMP_DEB) $(STAMP_PKG)

interfaces: $(STAMP_IFACE)
$(STAMP_IFACE): $(STAMP_PKG) scripts/build_interfaces.sh ros2_ws/cmake/ros_wheels_python_includes.cmake $(wildcard ros2_ws/src/diff2scene_interfaces/*/* ros2_ws/src/diff2scene_interfaces/*.txt ros2_ws/src/diff2scene_interfaces/*.xml)
	bash scripts/build_interfaces.sh $(VENV) $(IFACE_PREFIX)
	touch $@

lint: venv
	$(VENV)/bin/ruff check src diff2scene_ros tests bench scripts
	$(VENV)/bin/mypy src/diff2scene diff2scene_ros

test: setup lint
	$(RUN_ENV) OMP_NUM_THREADS=1 $(VPY) -m pytest -q tests

demo: setup
	$(RUN_ENV) OMP_NUM_THREADS=1 $(VPY) -m diff2scene.demo --out demo_out

bench: setup
	$(RUN_ENV) $(VPY) -m bench.run_all

bench-quality: setup
	$(RUN_ENV) $(VPY) -m bench.quality

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
	rm -rf build ros2_ws/build ros2_ws/install demo_out
