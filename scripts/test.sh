#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (apt-get), builds kvwire with its tests
# and benchmarks, runs every test with ctest, then fuzzes the chunk decoder
# for a bounded time (KVWIRE_FUZZ_SECONDS, default 60; 0 skips).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvwire_install_deps
BUILD=${KVWIRE_BUILD_DIR:-$KVWIRE_ROOT/build}
kvwire_build "$BUILD" -DKVWIRE_BUILD_TESTS=ON -DKVWIRE_BUILD_BENCHMARKS=ON
ctest --test-dir "$BUILD" --output-on-failure -j "$KVWIRE_JOBS" --timeout 900
if [[ "${KVWIRE_FUZZ_SECONDS:-60}" != 0 ]]; then
  "$KVWIRE_ROOT/scripts/fuzz.sh" "${KVWIRE_FUZZ_SECONDS:-60}"
fi
