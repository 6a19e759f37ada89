# shellcheck shell=bash
# Source this (do not run it) on a GPU host before the scripts/gpu_*.sh
# benchmarks and parity runs: unpacks the .deb files of
# KVWIRE_DEPS_DEBS (default .gpu/debs, from scripts/gpu_deps.sh fetch) into
# KVWIRE_DEPS_PREFIX (default .cache/deps-prefix), finds the CUDA LibTorch,
# nvcc and the GPUs' architectures as scripts/quickstart.sh does
# (scripts/gpu_detect.sh), and exports
#   GPU_CMAKE_ARGS   for `cmake -S . -B build-gpu $GPU_CMAKE_ARGS
#                    -DCMAKE_BUILD_TYPE=Release -DKVWIRE_WITH_CUDA=ON`
#   PATH, LD_LIBRARY_PATH, LIBRARY_PATH, PKG_CONFIG_PATH  for the build and
#                    the binaries.
# scripts/gpu_kit.sh writes .gpu/device-env.sh, which sources this.
# Unlike scripts/common.sh it leaves the shell's options alone.
KVWIRE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KVWIRE_HOST_CMAKE_ARGS=()
# shellcheck source=scripts/deps_prefix.sh
source "$KVWIRE_ROOT/scripts/deps_prefix.sh"
# shellcheck source=scripts/gpu_detect.sh
source "$KVWIRE_ROOT/scripts/gpu_detect.sh"
KVWIRE_DEPS_DEBS=${KVWIRE_DEPS_DEBS:-$KVWIRE_ROOT/.gpu/debs}
if kvwire_deps_prefix && kvwire_find_nvcc && kvwire_cuda_torch; then
  kvwire_gpu_probe || true  # no GPU: KVWIRE_CUDA_ARCHS must be set
  if [[ $(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9]*\).*/\1/p') -ge 4 ]] 2>/dev/null; then
    KVWIRE_HOST_CMAKE_ARGS+=(-DCMAKE_POLICY_VERSION_MINIMUM=3.5)
  fi
  export PATH=${KVWIRE_NVCC%/*}:$PATH
  export LD_LIBRARY_PATH=$KVWIRE_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # One string, split on spaces by its users (no spaces in these paths).
  export GPU_CMAKE_ARGS="-G Ninja ${KVWIRE_HOST_CMAKE_ARGS[*]} -DCMAKE_PREFIX_PATH=$KVWIRE_DEPS_USR;$KVWIRE_TORCH_CMAKE -DCMAKE_CUDA_ARCHITECTURES=${KVWIRE_CUDA_ARCHS:-90} -DCMAKE_CUDA_COMPILER=$KVWIRE_NVCC"
  echo "kvwire GPU env: $KVWIRE_TORCH_DESC, deps in ${KVWIRE_DEPS_USR%/usr}, sm_${KVWIRE_CUDA_ARCHS:-90}"
else
  echo "kvwire GPU env: not set (no .deb files in $KVWIRE_DEPS_DEBS, no nvcc, or no CUDA LibTorch)" >&2
fi
