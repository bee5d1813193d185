#!/usr/bin/env bash
# Build the ROS 2 workspace ros2_ws with colcon into ros2_ws/install (one prefix per package:
# install/diff2scene_interfaces, install/diff2scene, ...). This is what `make setup` runs; it is
# a plain `colcon build` plus the two things the PyPI wheels need.
#
#   usage: scripts/build_ws.sh VENV
#     VENV  the Python venv that holds colcon (colcon-common-extensions) and rclpy
#
# Which ROS 2 it builds against:
#   - the ROS 2 Jazzy wheels of VENV when VENV holds them (ament_cmake's CMake config lies in
#     VENV/share): AMENT_PREFIX_PATH and CMAKE_PREFIX_PATH are set to VENV, and the CMake
#     fix-up ros2_ws/cmake/ros_wheels_python_includes.cmake is injected (CMAKE_PROJECT_INCLUDE),
#     because the wheels' exported targets name Python include directories of the machine that
#     built them;
#   - otherwise the ROS 2 sourced in this shell (/opt/ros/<distro>/setup.bash), unchanged, with
#     no fix-up: that is the same as `cd ros2_ws && colcon build --paths src/*`.
# Message packages a ROS 2 install normally has but the wheels lack (tf2_msgs, vision_msgs)
# are built from ros2_ws/compat/ only when the ROS 2 used does not provide them.
#
# Re-running rebuilds incrementally. A failing package stops the script with a non-zero status
# and colcon's report of its errors.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 VENV" >&2
  exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(cd "$1" && pwd)"
ws="$repo_root/ros2_ws"
python="$venv/bin/python"
colcon="$venv/bin/colcon"
wheel_fixups="$ws/cmake/ros_wheels_python_includes.cmake"
compat_packages=(tf2_msgs vision_msgs)

die() {
  echo "build_ws: $*" >&2
  exit 1
}

for tool in cmake make c++; do
  command -v "$tool" >/dev/null || die "'$tool' is not installed (Debian: cmake make g++)"
done
[[ -x "$python" ]] || die "no Python interpreter at $python"
[[ -x "$colcon" ]] || die "no colcon in $venv (pip install colcon-common-extensions, see requirements.lock)"

cmake_args=(-DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF)
if [[ -f "$venv/share/ament_cmake/cmake/ament_cmakeConfig.cmake" ]]; then
  ros_from="the ROS 2 wheels in $venv"
  # Name the wheel of any CMake package the interface builds need instead of letting CMake fail
  # deep inside rosidl.
  missing=()
  for pkg in ament_cmake ament_cmake_ros python_cmake_module rosidl_core_generators \
    rosidl_default_generators std_msgs geometry_msgs sensor_msgs; do
    [[ -f "$venv/share/$pkg/cmake/${pkg}Config.cmake" ]] || missing+=("ros-jazzy-${pkg//_/-}")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    die "missing ROS 2 wheels in $venv: ${missing[*]} (see requirements.lock)"
  fi
  # The wheels keep their ament resource index and CMake configs under the venv prefix; a ROS 2
  # sourced in this shell (perhaps of another Python version) must not leak in. PATH runs the
  # rosidl generators and the ament_python build with the venv's interpreter, so installed
  # scripts start the venv's Python.
  export AMENT_PREFIX_PATH="$venv"
  export CMAKE_PREFIX_PATH="$venv"
  unset COLCON_PREFIX_PATH PYTHONPATH LD_LIBRARY_PATH
  export PATH="$venv/bin:$PATH"
  cmake_args+=(-DPython3_EXECUTABLE="$python" -DCMAKE_PROJECT_INCLUDE="$wheel_fixups")
elif [[ -n "${AMENT_PREFIX_PATH:-}" ]]; then
  ros_from="the sourced ROS 2 (${ROS_DISTRO:-unknown distro})"
else
  die "no ROS 2 found: neither the venv's wheels nor a sourced /opt/ros/<distro>/setup.bash"
fi

provided() {
  local prefix
  IFS=: read -r -a prefixes <<<"$AMENT_PREFIX_PATH"
  for prefix in "${prefixes[@]}"; do
    [[ "$prefix" == "$ws/install/"* ]] && continue
    [[ -f "$prefix/share/ament_index/resource_index/packages/$1" ]] && return 0
  done
  return 1
}

paths=("src/*")
built_compat=()
for pkg in "${compat_packages[@]}"; do
  if provided "$pkg"; then
    # A compat build left from an earlier run would shadow the real package.
    rm -rf "${ws:?}/install/$pkg" "${ws:?}/build/$pkg"
  else
    paths+=("compat/$pkg")
    built_compat+=("$pkg")
  fi
done

jobs="$(nproc 2>/dev/null || echo 2)"
((jobs > 4)) && jobs=4

start=$SECONDS
echo "build_ws: colcon build against $ros_from${built_compat:+ (+ compat: ${built_compat[*]})}"
cd "$ws"
# --paths takes the package directories themselves (globs expanded by colcon), so nothing else
# under ros2_ws is crawled.
MAKEFLAGS="-j$jobs" "$colcon" --log-base log build \
  --paths "${paths[@]}" \
  --build-base build --install-base install \
  --parallel-workers "$jobs" \
  --cmake-args "${cmake_args[@]}" ||
  die "colcon build failed; logs in $ws/log/latest_build"

# What the node and the tests import, loaded the way RUN_ENV loads it.
pyver="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
pythonpath="" ldpath="" amentpath=""
for pkg in diff2scene_interfaces "${built_compat[@]}"; do
  pythonpath+="$ws/install/$pkg/lib/python$pyver/site-packages:"
  ldpath+="$ws/install/$pkg/lib:"
  amentpath+="$ws/install/$pkg:"
done
check='from diff2scene_interfaces.msg import Instance
from diff2scene_interfaces.srv import LoadMap, SaveMap, SetVocabulary, TextQuery
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray
TextQuery.Request(query="x"); Instance(label="x"); TFMessage(); Detection3DArray()'
if ! out="$(PYTHONPATH="$pythonpath${PYTHONPATH:-}" \
  LD_LIBRARY_PATH="$ldpath${LD_LIBRARY_PATH:-}" \
  AMENT_PREFIX_PATH="$amentpath$AMENT_PREFIX_PATH" "$python" -c "$check" 2>&1)"; then
  echo "$out" | tail -n 20 >&2
  die "the installed message packages do not import"
fi
[[ -x "$ws/install/diff2scene/lib/diff2scene/diff2scene_node" ]] ||
  die "no executable install/diff2scene/lib/diff2scene/diff2scene_node"
echo "build_ws: built ros2_ws into $ws/install in $((SECONDS - start)) s"
