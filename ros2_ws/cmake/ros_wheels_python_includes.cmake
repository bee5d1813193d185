# Injected by scripts/build_ws.sh (colcon --cmake-args -DCMAKE_PROJECT_INCLUDE=...) when
# building against the ROS 2 wheels from PyPI; a colcon build on a system ROS 2 does not load it
# (and it would change nothing there: it only touches include directories that do not exist).
#
# Why: the wheels export their `<pkg>::<pkg>__rosidl_generator_py` targets with the include
# directories of the machine that built them (/opt/python/cp311-cp311/include/python3.11 and
# that interpreter's numpy headers). CMake refuses to generate when an imported target names
# a missing include directory. Those two directories only ever stand for "the Python and
# NumPy headers", so each one that does not exist here is replaced by the headers of the
# interpreter this build uses. Any other missing path is left alone so CMake still fails loudly.

find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)

function(_d2s_fix_wheel_python_includes)
  get_directory_property(_imported DIRECTORY "${CMAKE_SOURCE_DIR}" IMPORTED_TARGETS)
  set(_fixed 0)
  foreach(_target IN LISTS _imported)
    get_target_property(_dirs "${_target}" INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_new_dirs "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(NOT _dir MATCHES "^\\$<" AND NOT EXISTS "${_dir}")
        if(_dir MATCHES "/include/python3\\.[0-9]+$")
          list(APPEND _new_dirs ${Python3_INCLUDE_DIRS})
          set(_changed TRUE)
          continue()
        elseif(_dir MATCHES "/numpy/(_core|core)/include$")
          list(APPEND _new_dirs ${Python3_NumPy_INCLUDE_DIRS})
          set(_changed TRUE)
          continue()
        endif()
      endif()
      list(APPEND _new_dirs "${_dir}")
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _new_dirs)
      set_target_properties("${_target}" PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_new_dirs}")
      math(EXPR _fixed "${_fixed} + 1")
    endif()
  endforeach()
  message(STATUS "ros wheels: pointed ${_fixed} imported targets at the Python headers "
                 "${Python3_INCLUDE_DIRS} and NumPy headers ${Python3_NumPy_INCLUDE_DIRS}")
endfunction()

# Imported targets appear during find_package()/rosidl_generate_interfaces() in the package's
# CMakeLists.txt, after this file runs; fix them once the directory is fully configured.
cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _d2s_fix_wheel_python_includes)
