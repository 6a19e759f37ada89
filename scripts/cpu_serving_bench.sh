#!/usr/bin/env bash
# The receiver's batching across requests on the CPU, measured with
# kvwire-load (docs/PERFORMANCE.md §5.9): the quickstart's random models
# (real Qwen3 vocabulary, small widths), both services on loopback, 8
# workers, answers/s against concurrency 1, 4, 8
# (load_tests/scenarios/cpu_serving.yaml), in two configurations of the
# same binaries:
#   alone     every request prefills and decodes on its own (the CPU default)
#   batched   --prefill_batch_rows=8 --decode_batch_slots=8
#             --decode_slot_capacity=256 --fusion_batch_requests=8 on the
#             receiver
# Usage, after scripts/quickstart.sh has written its models:
#   scripts/cpu_serving_bench.sh [BUILD_DIR]   (default: build)
# Results go to $OUT (default /tmp/kvwire-cpu-serving).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
models=${KVWIRE_QUICKSTART_DIR:-$root/.cache/quickstart}
out=${OUT:-/tmp/kvwire-cpu-serving}
mkdir -p "$out"
pids=()
stop() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop EXIT
# start NAME PREFIX COMMAND...: starts it and sets $port from its ready line.
start() {
  local name=$1 prefix=$2 ready=""
  shift 2
  "$@" >"$out/$name.out" 2>"$out/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do
    ready=$(grep -m1 "^$prefix" "$out/$name.out" || true)
    [[ -n "$ready" ]] && break
    kill -0 "${pids[-1]}" || { tail -n 20 "$out/$name.log" >&2; exit 1; }
    sleep 0.2
  done
  port=$(sed -n 's/.* grpc_port=\([0-9]*\).*/\1/p' <<<"$ready")
}
declare -A receiver_flags=(
  [alone]="--prefill_batch_rows=0 --decode_batch_slots=0"
  [batched]="--prefill_batch_rows=8 --decode_batch_slots=8 --decode_slot_capacity=256 --fusion_batch_requests=8")
for config in ${KVWIRE_CPU_SERVING_CONFIGS:-alone batched}; do
  start sharer "kvwire-sharer ready" "$build/sharer_service/kvwire-sharer" \
    --model_dir="$models/sharer-qwen2-random" --listen_address=127.0.0.1:0 \
    --metrics_address= --allow_insecure --workers=8 --queue_size=64
  sharer_port=$port
  # shellcheck disable=SC2086  # the flags are a list
  start receiver "kvwire-receiver ready" \
    "$build/receiver_service/kvwire-receiver" \
    --model_dir="$models/receiver-qwen3-random" --fuser_dir="$models/fuser-random" \
    --listen_address=127.0.0.1:0 --metrics_address= --allow_insecure \
    --sharer_target="127.0.0.1:$sharer_port" --sharer_allow_insecure \
    --workers=8 --queue_size=64 \
    ${receiver_flags[$config]}
  echo "== $config: ${receiver_flags[$config]}"
  "$build/load_tests/kvwire-load" \
    --scenario_file="$root/load_tests/scenarios/cpu_serving.yaml" \
    --target="127.0.0.1:$port" --allow_insecure --progress=false \
    --plots=false --out_dir="$out/load_$config" 2>&1 | tail -n 12 |
    tee "$out/load_$config.txt"
  stop
done
