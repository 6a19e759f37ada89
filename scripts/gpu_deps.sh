#!/usr/bin/env bash
# The build's C++ dependencies as Debian 12 .deb files, for a host that has
# neither network nor the distribution's packages (the GPU hosts: Ubuntu
# 24.04 with CUDA and PyTorch's pip wheel, without gRPC, abseil,
# prometheus-cpp, glog or GoogleTest).
#
#   scripts/gpu_deps.sh fetch [DIR]   on a Debian 12 machine that reaches its
#       package archive: downloads (apt-get download, nothing installed) the
#       packages of scripts/gpu-debs.txt into DIR (default .gpu/debs,
#       git-ignored; about 25 MB)
#   scripts/gpu_deps.sh check [DIR]   lists the packages of the list that DIR
#       lacks; exits 1 when any is missing
#
# Carry DIR to the host with the working tree; there, KVWIRE_SKIP_DEPS=1
# KVWIRE_DEPS_DEBS=DIR scripts/quickstart.sh (or scripts/test.sh) unpacks the
# files into KVWIRE_DEPS_PREFIX (default .cache/deps-prefix; dpkg -x, no
# root) and builds against them (scripts/deps_prefix.sh); scripts/gpu_env.sh
# does the same for the scripts/gpu_*.sh benchmarks.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
list=$root/scripts/gpu-debs.txt
cmd=${1:-}
dir=${2:-$root/.gpu/debs}
packages() { grep -vE '^(#|$)' "$list"; }

case "$cmd" in
  fetch)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ "${KVWIRE_DEPS_DRY_RUN:-0}" == 1 ]]; then
      echo "gpu_deps: would download into $dir: $(packages | tr '\n' ' ')"
      exit 0
    fi
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo=sudo
    $sudo apt-get update -qq
    # apt-get download writes into the current directory; as root it warns
    # that the download is unsandboxed, which is harmless here. A package
    # it could not get shows in the check below.
    (cd "$dir" && packages | xargs apt-get download -q 2>&1) |
      grep -vE '^(W: Download is performed unsandboxed|Get:|Fetched)' || true
    "$0" check "$dir"
    echo "gpu_deps: $(find "$dir" -name '*.deb' | wc -l) packages in $dir ($(du -sh "$dir" | cut -f1))"
    ;;
  check)
    missing=()
    while read -r pkg; do
      compgen -G "$dir/${pkg}_*.deb" >/dev/null || missing+=("$pkg")
    done < <(packages)
    if ((${#missing[@]})); then
      echo "gpu_deps: $dir lacks: ${missing[*]}" >&2
      exit 1
    fi
    echo "gpu_deps: $dir holds every package of scripts/gpu-debs.txt"
    ;;
  *)
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
    [[ "$cmd" == -h || "$cmd" == --help ]] || exit 2
    ;;
esac
