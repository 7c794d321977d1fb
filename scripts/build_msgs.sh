#!/usr/bin/env bash
# Build the package's ROS 2 messages (msg/, the ament_cmake package foundry_msgs) with rosidl from
# PyPI wheels and install them into the project venv, so that
#   .venv/bin/python -c "from foundry_msgs.msg import InferenceReport; import rclpy"
# works with no ROS installation and no sourcing.
#
# Steps: (1) pip install requirements-ros.txt (constrained by requirements.txt), (2) rewrite the
# build machine's interpreter paths hard-coded in the message wheels' CMake exports, (3) configure,
# build and install foundry_msgs with plain cmake into the venv prefix.
# Idempotent: stamps in the venv over requirements-ros.txt / requirements.txt and over msg/ + this
# script; a second run with nothing changed only hashes a few files.
#
# Environment: FOUNDRY_VENV (default .venv; created by scripts/install.sh, or here if missing),
# FOUNDRY_MSGS_BUILD_DIR (default build/foundry_msgs), FOUNDRY_BUILD_JOBS (default 2),
# FOUNDRY_MSGS_FORCE=1 to rebuild regardless of the stamp.
# Needs cmake >= 3.20 and a C/C++ compiler (Debian: apt-get install cmake g++).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

log() { echo "[build_msgs] $*"; }
die() { echo "[build_msgs] ERROR: $*" >&2; exit 1; }
now() { echo "${EPOCHREALTIME:-$(date +%s)}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
t_start=$(now)

VENV="${FOUNDRY_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
BUILD_DIR="${FOUNDRY_MSGS_BUILD_DIR:-build/foundry_msgs}"
case "$BUILD_DIR" in /*) ;; *) BUILD_DIR="$ROOT/$BUILD_DIR" ;; esac
JOBS="${FOUNDRY_BUILD_JOBS:-2}"

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV (scripts/install.sh adds the project's own dependencies)"
  "${PYTHON:-python3}" -m venv "$VENV" || die "could not create a venv at $VENV"
fi
PY="$VENV/bin/python"
# The ROS 2 Kilted wheels on PyPI are built for CPython 3.11 (cp311, manylinux_2_28_x86_64) only.
pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" || die "$PY does not start"
[ "$pyver" = "3.11" ] || die "$VENV has Python $pyver; the ROS 2 Kilted wheels need Python 3.11"

# Digest of the requirement pins (comments and blank lines do not count).
req_digest() { grep -hv -e '^[[:space:]]*#' -e '^[[:space:]]*$' requirements-ros.txt requirements.txt | sha256sum | cut -d' ' -f1; }

# ---- 1. wheels ----------------------------------------------------------------------------------
wheel_stamp="$VENV/.foundry-ros-wheels-stamp"
wheel_want="$(req_digest)"
if [ "$(cat "$wheel_stamp" 2>/dev/null)" != "$wheel_want" ]; then
  t=$(now)
  log "installing ROS 2 Kilted wheels (requirements-ros.txt, constrained by requirements.txt) into $VENV"
  "$PY" -m pip install --disable-pip-version-check -q -r requirements-ros.txt -c requirements.txt \
    || die "pip install -r requirements-ros.txt failed (see above). A conflict with requirements.txt means a ROS wheel wants other core pins."
  rm -f "$VENV/.foundry-msgs-stamp"   # new wheels: rebuild the messages against them
  echo "$wheel_want" > "$wheel_stamp"
  log "wheels installed ($(elapsed "$t"))"
fi

# ---- up to date? -------------------------------------------------------------------------------
msgs_stamp="$VENV/.foundry-msgs-stamp"
msgs_want="$( { find msg -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum;
               req_digest; sha256sum scripts/build_msgs.sh; echo "$VENV"; } | sha256sum | cut -d' ' -f1)"
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "${FOUNDRY_MSGS_FORCE:-0}" != 1 ] && [ "$(cat "$msgs_stamp" 2>/dev/null)" = "$msgs_want" ] \
   && [ -f "$site/foundry_msgs/msg/__init__.py" ]; then
  log "foundry_msgs is up to date in $VENV ($(elapsed "$t_start"))"
  exit 0
fi

command -v cmake >/dev/null || die "cmake not found (Debian: apt-get install cmake)"
command -v c++ >/dev/null && command -v cc >/dev/null || die "no C/C++ compiler found (Debian: apt-get install g++)"
[ -f "$VENV/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake" ] \
  || die "rosidl_default_generators is missing from $VENV/share: is requirements-ros.txt installed? (delete $wheel_stamp and rerun)"

# ---- 2. interpreter paths ------------------------------------------------------------------------
# The message wheels' exported CMake targets (share/*/cmake/*rosidl_generator_pyExport.cmake) carry the
# wheel build machine's Python and numpy include dirs; CMake refuses targets whose include dirs do not
# exist. Point them at this venv's interpreter (re-done after every wheel reinstall; a no-op otherwise).
py_inc="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
np_inc="$("$PY" -c 'import numpy; print(numpy.get_include())')" || die "numpy is not importable in $VENV"
[ -f "$py_inc/Python.h" ] || die "Python headers not found at $py_inc (Debian: apt-get install python3-dev)"
mapfile -t hardcoded < <(grep -l -s "/opt/python/cp311-cp311" "$VENV"/share/*/cmake/*.cmake || true)
if [ "${#hardcoded[@]}" -gt 0 ]; then
  log "rewriting hard-coded interpreter paths in ${#hardcoded[@]} CMake files of the message wheels"
  sed -i \
    -e "s#/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/_core/include#$np_inc#g" \
    -e "s#/opt/python/cp311-cp311/include/python3\.11#$py_inc#g" \
    "${hardcoded[@]}"
  if grep -l -s "/opt/python/cp311-cp311" "$VENV"/share/*/cmake/*.cmake; then
    die "some /opt/python paths were not rewritten (files above): a new wheel layout? (python must be 3.11)"
  fi
fi

# ---- 3. configure, build, install --------------------------------------------------------------
mkdir -p "$BUILD_DIR"
# A build tree configured for another venv caches that venv's package paths: start it afresh.
if [ -f "$BUILD_DIR/CMakeCache.txt" ] && [ "$(cat "$BUILD_DIR/.foundry-venv" 2>/dev/null)" != "$VENV" ]; then
  log "build dir $BUILD_DIR was configured for another venv: wiping it"
  rm -rf "$BUILD_DIR"; mkdir -p "$BUILD_DIR"
fi
echo "$VENV" > "$BUILD_DIR/.foundry-venv"
touch "$BUILD_DIR/COLCON_IGNORE"   # keep colcon's package discovery out of this tree

run_step() {  # run_step NAME LOGFILE CMD... : run quietly, show the log tail on failure
  local name="$1" logf="$2"; shift 2
  local t; t=$(now)
  log "$name ..."
  if ! "$@" >"$logf" 2>&1; then
    echo "----- last 40 lines of $logf -----" >&2
    tail -n 40 "$logf" >&2
    die "$name failed (full log: $logf)"
  fi
  log "$name done ($(elapsed "$t"))"
}

# Only this venv's packages: no sourced ROS distro, no foreign Python path.
build_env=(env -u PYTHONPATH -u COLCON_PREFIX_PATH AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV")

run_step "configure foundry_msgs" "$BUILD_DIR/configure.log" \
  "${build_env[@]}" cmake -S "$ROOT/msg" -B "$BUILD_DIR" \
    -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
    -DPython3_EXECUTABLE="$PY"
run_step "build foundry_msgs (rosidl: C, C++, Python type support; -j$JOBS)" "$BUILD_DIR/build.log" \
  "${build_env[@]}" cmake --build "$BUILD_DIR" -j "$JOBS"
# Remove the files of the previous install first, so that a deleted .msg leaves nothing behind.
if [ -f "$BUILD_DIR/install_manifest.txt" ]; then
  xargs -r -d '\n' rm -f < "$BUILD_DIR/install_manifest.txt"
fi
run_step "install foundry_msgs into $VENV" "$BUILD_DIR/install.log" \
  "${build_env[@]}" cmake --install "$BUILD_DIR"

# ---- check -------------------------------------------------------------------------------------
check='from foundry_msgs.msg import InferenceReport, TokenEmbeddings, LabelMap, LabelEntry; import rclpy
from rclpy.serialization import serialize_message, deserialize_message
m = InferenceReport(backend="check", frame_index=7)
assert deserialize_message(serialize_message(m), InferenceReport) == m'
(cd /tmp && env -u PYTHONPATH "$PY" -c "$check") \
  || die "foundry_msgs was installed but does not import (see the error above)"
echo "$msgs_want" > "$msgs_stamp"
log "foundry_msgs built and installed into $VENV; import check passed (total $(elapsed "$t_start"))"
