#!/usr/bin/env bash
# Build and install the diff2scene_interfaces ROS 2 package with plain cmake + make against the
# ROS 2 Jazzy wheels of a Python venv (no system ROS, no colcon; DESIGN §4).
#
#   usage: scripts/build_interfaces.sh VENV PREFIX
#     VENV    the venv holding the ros-jazzy-* wheels (their share/ and lib/ live in VENV)
#     PREFIX  install prefix, e.g. ros2_ws/install/diff2scene_interfaces
#
# Afterwards, inside the venv:
#   PYTHONPATH=PREFIX/lib/python3.11/site-packages LD_LIBRARY_PATH=PREFIX/lib \
#   AMENT_PREFIX_PATH=PREFIX:VENV  python -c "from diff2scene_interfaces.srv import TextQuery"
#
# Re-running rebuilds incrementally. Any configure, compile or import error stops the script
# with a non-zero status and the end of the failing log.
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 VENV PREFIX" >&2
  exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "$1" && pwd)"
mkdir -p "$2"
prefix="$(cd "$2" && pwd)"
src_dir="$repo_root/ros2_ws/src/diff2scene_interfaces"
build_dir="$repo_root/build/diff2scene_interfaces"
wheel_fixups="$repo_root/ros2_ws/cmake/ros_wheels_python_includes.cmake"
python="$venv/bin/python"

die() {
  echo "build_interfaces: $*" >&2
  exit 1
}

for tool in cmake make c++; do
  command -v "$tool" >/dev/null || die "'$tool' is not installed (Debian: cmake make g++)"
done
[[ -x "$python" ]] || die "no Python interpreter at $python"

# The interface build needs these CMake packages from the wheels; name the wheel of any that is
# missing instead of letting CMake fail deep inside rosidl.
missing=()
for pkg in ament_cmake ament_cmake_include_directories ament_cmake_ros ament_cmake_gmock \
  ament_cmake_gtest ament_cmake_pytest python_cmake_module rosidl_core_generators \
  rosidl_default_generators geometry_msgs sensor_msgs; do
  [[ -f "$venv/share/$pkg/cmake/${pkg}Config.cmake" ]] ||
    missing+=("ros-jazzy-${pkg//_/-}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  die "missing ROS 2 wheels in $venv: ${missing[*]} (see requirements.lock)"
fi

# The wheels install their ament resource index and CMake configs under the venv prefix;
# PATH makes the rosidl generators run with the venv's interpreter and packages.
export AMENT_PREFIX_PATH="$venv"
export CMAKE_PREFIX_PATH="$venv"
export PATH="$venv/bin:$PATH"

# A build directory configured from another checkout cannot be reused.
if [[ -f "$build_dir/CMakeCache.txt" ]] &&
  ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$src_dir" "$build_dir/CMakeCache.txt"; then
  rm -rf "$build_dir"
fi
mkdir -p "$build_dir"
log="$build_dir/build.log"
: >"$log"

run() {
  if ! "$@" >>"$log" 2>&1; then
    echo "build_interfaces: '$*' failed; end of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
  fi
}

jobs="$(nproc 2>/dev/null || echo 2)"
((jobs > 4)) && jobs=4

start=$SECONDS
echo "build_interfaces: configuring (log: $log)"
run cmake -S "$src_dir" -B "$build_dir" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$prefix" \
  -DBUILD_TESTING=OFF \
  -DPython3_EXECUTABLE="$python" \
  -DCMAKE_PROJECT_INCLUDE="$wheel_fixups"
echo "build_interfaces: compiling with $jobs jobs"
run cmake --build "$build_dir" -- -j"$jobs"
# Install into a clean prefix so messages removed from the package do not linger.
if [[ -d "$prefix/share/diff2scene_interfaces" ]]; then
  rm -rf "${prefix:?}/lib" "${prefix:?}/share" "${prefix:?}/include"
fi
run cmake --install "$build_dir"

pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
site="$prefix/lib/python$pyver/site-packages"
[[ -d "$site/diff2scene_interfaces" ]] || die "no Python package installed under $site"
if ! PYTHONPATH="$site" LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  AMENT_PREFIX_PATH="$prefix:$venv" "$python" -c \
  "from diff2scene_interfaces.msg import Instance
from diff2scene_interfaces.srv import LoadMap, SaveMap, SetVocabulary, TextQuery
TextQuery.Request(query='x'); Instance(label='x')" >>"$log" 2>&1; then
  echo "build_interfaces: the installed interfaces do not import; end of $log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
echo "build_interfaces: installed diff2scene_interfaces to $prefix in $((SECONDS - start)) s"
