#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (apt-get), builds kvwire with its tests
# and benchmarks, runs every test with ctest, then runs every fuzz target
# for a bounded time (KVWIRE_FUZZ_SECONDS in total, default 240; 0 skips).
#
# On the GPU path (scripts/gpu_detect.sh: an NVIDIA GPU, nvcc and a CUDA
# LibTorch) it then also builds with CUDA (build-cuda, shared with the
# quickstart), runs the CUDA parity suites, the Torch suites of that build
# that need no network, and the quickstart's demo on the GPU (one question).
# KVWIRE_GPU_ONLY=1 runs only that part (offline GPU hosts: with
# KVWIRE_SKIP_DEPS=1, KVWIRE_DEPS_DEBS and KVWIRE_TOKENIZER_DIR; README,
# "With a GPU"). Without a GPU nothing of this runs and nothing changes.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
kvwire_deps_prefix
gpu_only=${KVWIRE_GPU_ONLY:-0}
if [[ "$gpu_only" == 1 ]]; then
  # The GPU path or an error saying why not; its CUDA LibTorch stands in
  # for the distribution's CPU one.
  KVWIRE_GPU=1 kvwire_gpu_detect install
  export KVWIRE_DEPS_NO_CPU_TORCH=1
else
  kvwire_gpu_detect install
fi
kvwire_install_deps build run test
# The CPU build and its suites (KVWIRE_GPU_ONLY=1 skips them and the steps
# after them that need it: soak, engine only, fuzz, sanitizers).
cpu=1
[[ "$gpu_only" == 1 ]] && cpu=0
if ((cpu)); then
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
  kvwire_host_cmake_args
  cmake -S "$KVWIRE_ROOT" -B "$ASAN_BUILD" -G Ninja -DCMAKE_BUILD_TYPE=None \
    -DCMAKE_CXX_FLAGS="-O1 -g1" -DCMAKE_C_FLAGS="-O1 -g1" \
    -DKVWIRE_SANITIZE=ON -DKVWIRE_BUILD_TESTS=ON -DKVWIRE_BUILD_BENCHMARKS=OFF \
    "${KVWIRE_HOST_CMAKE_ARGS[@]}"
  cmake --build "$ASAN_BUILD" -j "$KVWIRE_JOBS" --target kvwire_sharer_e2e_test \
    kvwire_receiver_e2e_test kvwire_aligned_e2e_test
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
    LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$KVWIRE_ROOT/tests/lsan_suppressions.txt} \
    UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$ASAN_BUILD" -R '^(SharerE2eTest|ReceiverE2eTest|AlignedE2eTest)\.' \
    --output-on-failure -j "$KVWIRE_JOBS" --timeout 900
  echo "kvwire: sanitizer e2e step took $((SECONDS - asan_start)) s"
fi
fi  # cpu

# ------------------------------------------------------------------ GPU
if [[ "$KVWIRE_CUDA" == 1 ]]; then
  GPU_BUILD=${KVWIRE_GPU_BUILD_DIR:-$KVWIRE_ROOT/build-cuda}
  # The suites run below: the engine's, the tools' that need no network.
  # Only they and the demo's binaries are built (Ninja's per-directory
  # "all" targets), not the services' suites or the load tools.
  gpu_test_dirs=(tests/common/codec tests/common/model tests/common/fuser
    tests/common/engine tests/common/tokenizer tests/common/protocol
    tests/tools/make_tiny_checkpoint tests/tools/fuser)
  export KVWIRE_BUILD_TESTS=ON  # (the quickstart below keeps them on too)
  kvwire_build_release "$GPU_BUILD" "${gpu_test_dirs[@]/%//all}" kvwire-cli \
    kvwire-sharer kvwire-receiver kvwire-make-checkpoint kvwire-make-fuser
  # The CUDA parity suites: fused codec kernels against the CPU path, graph
  # decode / prefill / batched decode against eager, graph fusion. They skip
  # themselves without a usable GPU; here a skip is a failure.
  # (kvwire_quantizer_test holds QuantizerRoundTripTest.MatchesCpuBitForBitOnCuda.)
  cuda_tests='^kvwire_(cuda_quantize|quantizer)_test$|CudaGraph(Decoder|Fuser)Test\.'
  cuda_tests+='|KvCodecTest\.CudaTensors|TokenSelectionTest\.CudaMatchesCpu'
  junit=$GPU_BUILD/cuda-parity.xml
  ctest --test-dir "$GPU_BUILD" --output-on-failure -j "$KVWIRE_JOBS" --timeout 900 \
    -R "$cuda_tests" --output-junit "$junit"
  if grep -qs '\[  SKIPPED \]' "$junit"; then
    echo "kvwire: CUDA parity tests skipped on a GPU machine (no CUDA device seen?): $junit" >&2
    exit 1
  fi
  # The other suites of those directories on the CUDA build (LibTorch 2.x:
  # the SDPA paths that Debian's 1.13 lacks), less the tests that need
  # Node.js and the npm registry (the reference fixtures and what requires
  # them). The services' suites are the CPU run's (some GPU hosts' civetweb
  # cannot serve /metrics).
  for dir in "${gpu_test_dirs[@]}"; do
    ctest --test-dir "$GPU_BUILD/$dir" --output-on-failure -j "$KVWIRE_JOBS" \
      --timeout 900 -E "_reference_setup\$|ParityTest|AlignedGoldenTest|$cuda_tests"
  done
  # One answer end to end on the GPU(s): the quickstart's demo, both
  # services on CUDA (on two GPUs where there are two).
  KVWIRE_BUILD_DIR=$GPU_BUILD KVWIRE_MAX_NEW_TOKENS=${KVWIRE_MAX_NEW_TOKENS:-8} \
    KVWIRE_QUICKSTART_DIR=$GPU_BUILD/quickstart \
    "$KVWIRE_ROOT/scripts/quickstart.sh"
fi
