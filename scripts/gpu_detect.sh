# shellcheck shell=bash disable=SC2034  # sets variables for the sourcing script
# GPU detection shared by scripts/quickstart.sh and scripts/test.sh (sourced
# by scripts/common.sh; do not run it). Decides whether this machine takes
# the CUDA path: an NVIDIA GPU (nvidia-smi), the CUDA compiler and a CUDA
# LibTorch with the C++11 ABI, from
#   KVWIRE_TORCH_DIR   a LibTorch directory (the unpacked libtorch/ zip, or
#                      torch.utils.cmake_prefix_path of a wheel), or else
#   the Python of the venv kvwire_install_cuda_torch makes
#   (KVWIRE_TORCH_VENV, default .cache/torch-venv), then python3:
#   `import torch` with torch.version.cuda set.
# KVWIRE_GPU=0 never takes the CUDA path (today's CPU build and demo);
# KVWIRE_GPU=1 fails where it cannot be taken, and with KVWIRE_CUDA_ARCHS
# set it builds for those architectures on a machine without a GPU (the
# CUDA image: docker/Dockerfile.cuda); auto (default) decides.

KVWIRE_TORCH_VENV=${KVWIRE_TORCH_VENV:-$KVWIRE_ROOT/.cache/torch-venv}

# kvwire_gpu_probe: sets KVWIRE_GPU_COUNT, KVWIRE_GPU_NAMES,
# KVWIRE_CUDA_ARCHS (from compute_cap, e.g. "90" or "80;90", unless set),
# KVWIRE_DRIVER_CUDA (the driver's CUDA version, e.g. 13.0).
# Returns 1 when there is no usable NVIDIA GPU.
kvwire_gpu_probe() {
  KVWIRE_GPU_COUNT=0 KVWIRE_GPU_NAMES="" KVWIRE_DRIVER_CUDA=""
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  local names
  names=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null) || return 1
  KVWIRE_GPU_COUNT=$(grep -c . <<<"$names" || true)
  ((KVWIRE_GPU_COUNT > 0)) || return 1
  KVWIRE_GPU_NAMES=$(sort <<<"$names" | uniq -c | sed 's/^ *\([0-9]*\) /\1x /' | paste -sd, -)
  # compute_cap "9.0" -> CMAKE_CUDA_ARCHITECTURES "90"; one entry per kind.
  KVWIRE_CUDA_ARCHS=${KVWIRE_CUDA_ARCHS:-$(nvidia-smi --query-gpu=compute_cap \
    --format=csv,noheader 2>/dev/null | tr -d ' .' | grep . | sort -un | paste -sd';' -)}
  KVWIRE_DRIVER_CUDA=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -n1)
  return 0
}

# kvwire_find_nvcc: sets KVWIRE_NVCC (nvcc on PATH, else CUDA's default
# place); returns 1 without one.
kvwire_find_nvcc() {
  KVWIRE_NVCC=""
  if command -v nvcc >/dev/null 2>&1; then
    KVWIRE_NVCC=$(command -v nvcc)
  elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
    KVWIRE_NVCC=/usr/local/cuda/bin/nvcc
  fi
  [[ -n "$KVWIRE_NVCC" ]]
}

# kvwire_cuda_torch: finds a CUDA LibTorch; sets KVWIRE_TORCH_CMAKE (for
# CMAKE_PREFIX_PATH), KVWIRE_TORCH_LIB (its lib/, for LD_LIBRARY_PATH) and
# KVWIRE_TORCH_DESC. Returns 1 when there is none.
kvwire_cuda_torch() {
  KVWIRE_TORCH_CMAKE="" KVWIRE_TORCH_LIB="" KVWIRE_TORCH_DESC=""
  if [[ -n "${KVWIRE_TORCH_DIR:-}" ]]; then
    local dir lib
    dir=$(cd "$KVWIRE_TORCH_DIR" && pwd) || return 1
    # libtorch/ (lib/ beside share/) or torch/share/cmake (lib/ two up).
    for lib in "$dir/lib" "$dir/../../lib"; do
      [[ -d "$lib" ]] && break
    done
    if ! compgen -G "$lib/libtorch_cuda.so*" >/dev/null; then
      echo "kvwire: KVWIRE_TORCH_DIR=$KVWIRE_TORCH_DIR has no lib/libtorch_cuda.so (not a CUDA LibTorch)" >&2
      return 1
    fi
    KVWIRE_TORCH_CMAKE=$dir KVWIRE_TORCH_LIB=$(cd "$lib" && pwd)
    KVWIRE_TORCH_DESC="LibTorch at $dir"
    return 0
  fi
  local py out
  for py in "$KVWIRE_TORCH_VENV/bin/python" python3; do
    command -v "$py" >/dev/null 2>&1 || continue
    # Three lines, or nothing: a CPU wheel or the old (pre-C++11) ABI,
    # which cannot link against the system gRPC, protobuf and abseil.
    out=$("$py" - 2>/dev/null <<'PY'
import os, torch
if torch.version.cuda and torch.compiled_with_cxx11_abi():
    print(torch.utils.cmake_prefix_path)
    print(os.path.join(os.path.dirname(torch.__file__), "lib"))
    print("torch %s (CUDA %s, cuda.is_available()=%s)" % (
        torch.__version__, torch.version.cuda, torch.cuda.is_available()))
PY
) || true
    if [[ $(grep -c . <<<"$out") == 3 ]]; then
      KVWIRE_TORCH_CMAKE=$(sed -n 1p <<<"$out")
      KVWIRE_TORCH_LIB=$(sed -n 2p <<<"$out")
      KVWIRE_TORCH_DESC="$(sed -n 3p <<<"$out") from $(command -v "$py")"
      return 0
    fi
  done
  return 1
}

# kvwire_torch_wheel_index: the PyTorch wheel index for the driver's CUDA
# (the newest CUDA build the driver runs), e.g.
# https://download.pytorch.org/whl/cu130; KVWIRE_TORCH_INDEX overrides.
kvwire_torch_wheel_index() {
  if [[ -n "${KVWIRE_TORCH_INDEX:-}" ]]; then
    echo "$KVWIRE_TORCH_INDEX"
    return
  fi
  local major minor tag
  IFS=. read -r major minor <<<"${KVWIRE_DRIVER_CUDA:-0.0}"
  local v=$((major * 10 + ${minor:-0}))
  if ((v >= 130)); then tag=cu130
  elif ((v >= 128)); then tag=cu128
  elif ((v >= 126)); then tag=cu126
  elif ((v >= 118)); then tag=cu118
  else return 1
  fi
  echo "https://download.pytorch.org/whl/$tag"
}

# kvwire_install_cuda_torch: on a GPU machine without a CUDA LibTorch that
# reaches the wheel index, says what it installs and pip-installs PyTorch's
# wheel for the driver's CUDA into KVWIRE_TORCH_VENV (KVWIRE_TORCH_VERSION
# pins it, e.g. 2.11.0). KVWIRE_DEPS_DRY_RUN=1 only says it;
# KVWIRE_SKIP_DEPS=1 skips it.
kvwire_install_cuda_torch() {
  [[ "${KVWIRE_SKIP_DEPS:-0}" == 1 ]] && return 1
  local index spec=torch${KVWIRE_TORCH_VERSION:+==$KVWIRE_TORCH_VERSION}
  index=$(kvwire_torch_wheel_index) || {
    echo "kvwire: the driver's CUDA (${KVWIRE_DRIVER_CUDA:-unknown}) is older than any PyTorch wheel's" >&2
    return 1
  }
  command -v python3 >/dev/null || {
    echo "kvwire: no CUDA LibTorch here, and no python3 to install PyTorch's wheel with" >&2
    return 1
  }
  # Only where the index answers (offline hosts bring KVWIRE_TORCH_DIR).
  if ! python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=10)' \
      "$index" >/dev/null 2>&1; then
    echo "kvwire: no CUDA LibTorch here and $index is not reachable;" \
      "set KVWIRE_TORCH_DIR, or install a CUDA PyTorch wheel" >&2
    return 1
  fi
  echo "kvwire: will install PyTorch's wheel $spec${KVWIRE_DRIVER_CUDA:+ for CUDA $KVWIRE_DRIVER_CUDA} from $index" \
    "into $KVWIRE_TORCH_VENV (pip, a virtualenv; about 3 GB with its NVIDIA libraries)"
  if [[ "${KVWIRE_DEPS_DRY_RUN:-0}" == 1 ]]; then
    echo "kvwire: (KVWIRE_DEPS_DRY_RUN=1: not installed)"
    return 1
  fi
  if [[ ! -x "$KVWIRE_TORCH_VENV/bin/python" ]]; then
    # Debian and Ubuntu keep venv's pip bootstrap in python3-venv.
    if ! python3 -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
      local sudo=""
      [[ $(id -u) -ne 0 ]] && sudo=sudo
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
    python3 -m venv "$KVWIRE_TORCH_VENV" || {
      echo "kvwire: python3 -m venv failed (install python3-venv)" >&2
      return 1
    }
  fi
  "$KVWIRE_TORCH_VENV/bin/python" -m pip install -q --upgrade pip || return 1
  "$KVWIRE_TORCH_VENV/bin/python" -m pip install -q "$spec" --index-url "$index" || return 1
  kvwire_cuda_torch
}

# kvwire_gpu_detect [install]: decides the path and says why, on one line.
# Sets KVWIRE_CUDA=1 (and the variables above) for the CUDA path, 0 for
# today's CPU path. With "install", a missing CUDA LibTorch is installed
# (kvwire_install_cuda_torch) where the wheel index is reachable.
kvwire_gpu_detect() {
  KVWIRE_CUDA=0
  local mode=${KVWIRE_GPU:-auto} why
  if [[ "$mode" == 0 ]]; then
    return 0
  elif ! kvwire_gpu_probe && [[ "$mode" != 1 || -z "${KVWIRE_CUDA_ARCHS:-}" ]]; then
    why="no NVIDIA GPU (nvidia-smi)"
  elif ! kvwire_find_nvcc; then
    why="${KVWIRE_GPU_NAMES:-no GPU}, but no CUDA compiler (nvcc on PATH or /usr/local/cuda/bin)"
  elif kvwire_cuda_torch || { [[ "${1:-}" == install ]] && kvwire_install_cuda_torch; }; then
    KVWIRE_CUDA=1
    echo "kvwire: GPU path: ${KVWIRE_GPU_NAMES:-no GPU here} (sm_${KVWIRE_CUDA_ARCHS//;/, sm_}," \
      "driver CUDA ${KVWIRE_DRIVER_CUDA:-?}), $KVWIRE_TORCH_DESC, nvcc $KVWIRE_NVCC"
    return 0
  else
    why="${KVWIRE_GPU_NAMES:-no GPU}, but no CUDA LibTorch (KVWIRE_TORCH_DIR, or python3's torch with CUDA)"
  fi
  if [[ "$mode" == 1 ]]; then
    echo "kvwire: KVWIRE_GPU=1 but the CUDA path is not available: $why" >&2
    return 1
  fi
  # Only worth a line where a GPU was seen: CPU machines stay silent.
  ((KVWIRE_GPU_COUNT > 0)) && echo "kvwire: CPU path: $why"
  return 0
}
