# shellcheck shell=bash disable=SC2034  # sets variables for the sourcing script
# Sourced (not run) by scripts/gpu_services_run.sh and scripts/gpu_e2e_bench.sh:
# on a GPU host (after `source .gpu/device-env.sh`, see scripts/gpu_kit.sh),
# builds the services with CUDA, writes RANDOM checkpoints at the real
# Qwen3-0.6B / Qwen2.5-0.5B / C2C-fuser shapes and starts kvwire-sharer and
# kvwire-receiver on loopback.
#
# Environment:
#   KVWIRE_BUILD_DIR        build directory (default ROOT/build-gpu)
#   KVWIRE_GPU_MODELS_DIR   checkpoints and logs (default /tmp/kvwire-gpu-models)
#   KVWIRE_SHARER_FLAGS     extra kvwire-sharer flags (split on spaces)
#   KVWIRE_RECEIVER_FLAGS   extra kvwire-receiver flags (split on spaces)
#   KVWIRE_GPU_CMAKE_EXTRA  extra configure arguments (e.g. tests and
#                           benchmarks on, as scripts/gpu_perf_run.sh does)
# The services inherit the environment (e.g. KVWIRE_CUDA_GRAPH_DECODE=0).
#
# After kvwire_gpu_start_services: $sharer_port, $receiver_port, $logs/{sharer,
# receiver}.{out,log} (stdout, stderr); an EXIT trap stops both services.

: "${GPU_CMAKE_ARGS?source .gpu/device-env.sh first (GPU_CMAKE_ARGS is not set)}"
root=${root:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
build=${KVWIRE_BUILD_DIR:-$root/build-gpu}
models=${KVWIRE_GPU_MODELS_DIR:-/tmp/kvwire-gpu-models}
logs=$models/logs
cli=$build/tools/cli/kvwire-cli
mkdir -p "$logs"
pids=()

# kvwire_gpu_build [EXTRA_TARGET...]: configure and build (incremental).
# shellcheck disable=SC2120  # the extra targets are optional
kvwire_gpu_build() {
  local log=$logs/build.log
  # shellcheck disable=SC2086  # GPU_CMAKE_ARGS is a list of arguments.
  if ! { cmake -S "$root" -B "$build" $GPU_CMAKE_ARGS -DCMAKE_BUILD_TYPE=Release \
           -DKVWIRE_WITH_CUDA=ON -DKVWIRE_BUILD_TESTS=OFF \
           -DKVWIRE_BUILD_BENCHMARKS=OFF ${KVWIRE_GPU_CMAKE_EXTRA:-} &&
         cmake --build "$build" -j "$(nproc)" --target kvwire-cli kvwire-sharer \
           kvwire-receiver kvwire-make-checkpoint kvwire-make-fuser "$@"; } \
       >"$log" 2>&1; then
    echo "build failed; the end of $log:" >&2
    tail -n 40 "$log" >&2
    return 1
  fi
}

# kvwire_gpu_models TOKENIZER_DIR: random checkpoints (fixed seeds) at the
# real shapes; the receiver gets Qwen3's tokenizer files.
kvwire_gpu_models() {
  local tok=$1 mk=$build/tools/make_tiny_checkpoint/kvwire-make-checkpoint
  "$mk" --out="$models/receiver" --preset=qwen3-0.6b --seed=1 >/dev/null
  "$mk" --out="$models/sharer" --preset=qwen2.5-0.5b --seed=2 >/dev/null
  "$build/tools/fuser/kvwire-make-fuser" --out="$models/fuser" \
    --preset=qwen3-0.6b+qwen2.5-0.5b --seed=3 >/dev/null
  cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$models/receiver/"
}

_kvwire_gpu_stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# _kvwire_gpu_start NAME READY_PREFIX COMMAND...: start, wait for the ready
# line (sets $ready).
_kvwire_gpu_start() {
  local name=$1 prefix=$2 _
  shift 2
  "$@" >"$logs/$name.out" 2>"$logs/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do
    ready=$(grep -m1 "^$prefix" "$logs/$name.out" 2>/dev/null || true)
    [[ -n "$ready" ]] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { tail -n 20 "$logs/$name.log" >&2; return 1; }
    sleep 0.5
  done
  echo "$name: no ready line in 300 s" >&2
  return 1
}

_kvwire_gpu_port() { sed -n "s/.* grpc_port=\([0-9]*\).*/\1/p" <<<"$ready"; }

# kvwire_gpu_start_services [SHARER_DEVICE RECEIVER_DEVICE] (default cuda:0).
# The services run without their /metrics endpoints here: on the Ubuntu GPU
# hosts Debian's civetweb (under prometheus-cpp) fails to construct its
# server. Metrics are exercised by the CPU tests.
kvwire_gpu_start_services() {
  local sharer_device=${1:-cuda:0} receiver_device=${2:-cuda:0}
  local -a sharer_extra receiver_extra
  read -r -a sharer_extra <<<"${KVWIRE_SHARER_FLAGS:-}"
  read -r -a receiver_extra <<<"${KVWIRE_RECEIVER_FLAGS:-}"
  trap _kvwire_gpu_stop_all EXIT
  _kvwire_gpu_start sharer "kvwire-sharer ready" "$build/sharer_service/kvwire-sharer" \
    --model_dir="$models/sharer" --device="$sharer_device" \
    --listen_address=127.0.0.1:0 --metrics_address= --allow_insecure \
    "${sharer_extra[@]}"
  sharer_port=$(_kvwire_gpu_port)
  _kvwire_gpu_start receiver "kvwire-receiver ready" \
    "$build/receiver_service/kvwire-receiver" \
    --model_dir="$models/receiver" --fuser_dir="$models/fuser" \
    --device="$receiver_device" --listen_address=127.0.0.1:0 --metrics_address= \
    --allow_insecure --sharer_target="127.0.0.1:$sharer_port" --sharer_allow_insecure \
    "${receiver_extra[@]}"
  receiver_port=$(_kvwire_gpu_port)
}

# kvwire_gpu_stop_services: stop both now (the EXIT trap does it otherwise).
kvwire_gpu_stop_services() { _kvwire_gpu_stop_all; }
