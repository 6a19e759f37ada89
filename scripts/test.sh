#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (apt-get), builds kvwire with its tests
# and benchmarks, runs every test with ctest, then runs every fuzz target
# for a bounded time (KVWIRE_FUZZ_SECONDS in total, default 240; 0 skips).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvwire_install_deps build run test
BUILD=${KVWIRE_BUILD_DIR:-$KVWIRE_ROOT/build}
kvwire_build "$BUILD" -DKVWIRE_BUILD_TESTS=ON -DKVWIRE_BUILD_BENCHMARKS=ON
ctest --test-dir "$BUILD" --output-on-failure -j "$KVWIRE_JOBS" --timeout 900
# A short soak under faults (sharer killed, stalled, corrupting chunks, link
# shaped, receiver SIGTERMed) with its assertions; 77 (skipped: no python3)
# passes. KVWIRE_SOAK=0 skips it; docs/RELIABILITY.md has the long run.
if [[ "${KVWIRE_SOAK:-1}" != 0 ]]; then
  "$KVWIRE_ROOT/scripts/soak.sh" --ci --build "$BUILD" --out "$BUILD/soak-ci" ||
    [[ $? == 77 ]]
fi
# The engine alone, as a build without gRPC sees it: engine libraries, the
# tools that need no network and their tests, configured with gRPC made
# unfindable (KVWIRE_ENGINE_ONLY=0 skips). ccache serves most objects from
# the build above.
if [[ "${KVWIRE_ENGINE_ONLY:-1}" != 0 ]]; then
  ENGINE_BUILD=${KVWIRE_ENGINE_BUILD_DIR:-$KVWIRE_ROOT/build-engine}
  kvwire_build "$ENGINE_BUILD" -DKVWIRE_BUILD_SERVICES=OFF \
    -DCMAKE_DISABLE_FIND_PACKAGE_gRPC=ON -DKVWIRE_BUILD_TESTS=ON \
    -DKVWIRE_BUILD_BENCHMARKS=OFF
  if grep -qi 'grpc' "$ENGINE_BUILD/build.ninja"; then
    echo "kvwire: the engine-only build links gRPC" >&2
    exit 1
  fi
  ctest --test-dir "$ENGINE_BUILD" --output-on-failure -j "$KVWIRE_JOBS" \
    --timeout 900
fi
if [[ "${KVWIRE_FUZZ_SECONDS:-60}" != 0 ]]; then
  "$KVWIRE_ROOT/scripts/fuzz.sh" "${KVWIRE_FUZZ_SECONDS:-240}"
fi
# The service end-to-end suites (real kvwire-sharer and kvwire-receiver
# processes on loopback) again under AddressSanitizer + UBSan, in their own
# build directory, only those targets (KVWIRE_SANITIZE_E2E=0 skips).
if [[ "${KVWIRE_SANITIZE_E2E:-1}" != 0 ]]; then
  ASAN_BUILD=${KVWIRE_ASAN_BUILD_DIR:-$KVWIRE_ROOT/build-asan}
  asan_start=$SECONDS
  # -O1 -g1: quicker to compile than Release on CI's two cores, with line
  # numbers in the sanitizers' reports.
  cmake -S "$KVWIRE_ROOT" -B "$ASAN_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_CXX_FLAGS="-O1 -g1" -DCMAKE_C_FLAGS="-O1 -g1" \
    -DKVWIRE_SANITIZE=ON -DKVWIRE_BUILD_TESTS=ON -DKVWIRE_BUILD_BENCHMARKS=OFF
  cmake --build "$ASAN_BUILD" -j "$KVWIRE_JOBS" --target kvwire_sharer_e2e_test \
    kvwire_receiver_e2e_test kvwire_aligned_e2e_test
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
    LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$KVWIRE_ROOT/tests/lsan_suppressions.txt} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$ASAN_BUILD" -R '^(SharerE2eTest|ReceiverE2eTest|AlignedE2eTest)\.' \
    --output-on-failure -j "$KVWIRE_JOBS" --timeout 900
  echo "kvwire: sanitizer e2e step took $((SECONDS - asan_start)) s"
fi
