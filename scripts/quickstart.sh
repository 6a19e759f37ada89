#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (apt-get), builds kvwire in Release and
# runs the main job: the codec report over a Qwen2.5-0.5B-shaped KV cache.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvwire_install_deps
BUILD=${KVWIRE_BUILD_DIR:-$KVWIRE_ROOT/build-release}
cmake -S "$KVWIRE_ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DKVWIRE_BUILD_TESTS=OFF -DKVWIRE_BUILD_BENCHMARKS=OFF
cmake --build "$BUILD" -j "$KVWIRE_JOBS" --target kvwire-cli
"$BUILD/tools/cli/kvwire-cli" codec-report "$@"
