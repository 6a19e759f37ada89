# shellcheck shell=bash disable=SC2034  # sets variables for the sourcing script
# The build's dependencies from .deb files unpacked into a prefix, for hosts
# without the distribution's packages (no network, no apt; e.g. Ubuntu 24.04
# GPU hosts with CUDA and PyTorch's wheel but no gRPC, abseil,
# prometheus-cpp, glog or GoogleTest). Sourced by scripts/common.sh and
# scripts/gpu_env.sh (do not run it); needs KVWIRE_ROOT and the
# KVWIRE_HOST_CMAKE_ARGS array. scripts/gpu_deps.sh fetches the files.

# kvwire_deps_prefix: for hosts without the distribution's packages (no
# network, no apt): the build's Debian 12 packages as .deb files
# (scripts/gpu_deps.sh fetch DIR, on a networked Debian 12 machine), named
# by KVWIRE_DEPS_DEBS=DIR, are unpacked (dpkg -x, never into /) into
# KVWIRE_DEPS_PREFIX (default .cache/deps-prefix; re-unpacked when the set
# of files changes); KVWIRE_DEPS_PREFIX alone names a prefix unpacked
# before. Exports what the build and the binaries need (PATH,
# LD_LIBRARY_PATH, LIBRARY_PATH, PKG_CONFIG_PATH) and adds the prefix,
# its protobuf and protoc to KVWIRE_HOST_CMAKE_ARGS. Without either
# variable it does nothing. Idempotent.
kvwire_deps_prefix() {
  local debs=${KVWIRE_DEPS_DEBS:-} prefix=${KVWIRE_DEPS_PREFIX:-}
  [[ -z "$debs" && -z "$prefix" ]] && return 0
  [[ -n "${_KVWIRE_DEPS_PREFIX_DONE:-}" ]] && return 0
  prefix=${prefix:-$KVWIRE_ROOT/.cache/deps-prefix}
  mkdir -p "$prefix"
  prefix=$(cd "$prefix" && pwd)
  if [[ -n "$debs" ]]; then
    local files stamp=$prefix/.kvwire-debs deb
    debs=$(cd "$debs" && pwd) || return 1
    files=$(cd "$debs" && ls -- *.deb 2>/dev/null) || true
    if [[ -z "$files" ]]; then
      echo "kvwire: KVWIRE_DEPS_DEBS=$debs holds no .deb files (scripts/gpu_deps.sh fetch $debs)" >&2
      return 1
    fi
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$files" ]]; then
      echo "kvwire: unpacking $(wc -l <<<"$files") packages from $debs into $prefix"
      while read -r deb; do dpkg-deb -x "$debs/$deb" "$prefix"; done <<<"$files"
      # glog's CMake package names its find-modules by absolute path
      # (/usr/share/glog/cmake): point it at the unpacked copy.
      local glog
      for glog in "$prefix"/usr/lib/*/cmake/glog/glog-modules.cmake; do
        [[ -f "$glog" ]] && sed -i "s|\"/usr/share/glog/cmake\"|\"$prefix/usr/share/glog/cmake\"|" "$glog"
      done
      echo "$files" >"$stamp"
    fi
  fi
  local usr=$prefix/usr lib
  lib=$(find "$usr/lib" -maxdepth 1 -name '*-linux-gnu' -type d 2>/dev/null | head -n1)
  lib=${lib:-$usr/lib}
  export PATH=$usr/bin:$PATH
  export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LIBRARY_PATH=$lib${LIBRARY_PATH:+:$LIBRARY_PATH}
  export PKG_CONFIG_PATH=$lib/pkgconfig:$usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  # The prefix's protobuf headers must win over the old copy in PyTorch's
  # wheel: CMakeLists.txt finds Protobuf first and hides that copy
  # (cmake/KvwireTorchIncludes.cmake).
  KVWIRE_HOST_CMAKE_ARGS+=("-DCMAKE_PREFIX_PATH=$usr"
    "-DProtobuf_INCLUDE_DIR=$usr/include"
    "-DProtobuf_PROTOC_EXECUTABLE=$usr/bin/protoc")
  KVWIRE_DEPS_USR=$usr
  _KVWIRE_DEPS_PREFIX_DONE=1
}
