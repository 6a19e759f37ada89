#!/usr/bin/env bash
# Serving on one GPU, before and after the changes of issue 16
# (docs/PERFORMANCE.md §5.9), in one run on one card. Service
# configurations, the same binaries:
#   per_layer   the sharer copies each layer to the host and encodes it there
#               (--encode_on_cpu=true); the receiver fuses each layer as it
#               lands (--fusion_schedule=on_arrival); no batched prefill
#   batched     the sharer quantizes on the GPU, every layer ready at once in
#               one batch with one device-to-host copy (--encode_on_cpu=false);
#               the receiver fuses the whole stream in one layer-batched call
#               (--fusion_schedule=when_complete); no batched prefill, one
#               KV block per message
#   scheduled   batched, plus both services prefill concurrent requests'
#               prompts together (--prefill_batch_rows=8) and the sharer
#               sends the blocks waiting behind a write in one message
#               (--sharer_max_blocks_per_message=64): the CUDA defaults
# Parts (KVWIRE_SERVING_PARTS, comma-separated; default all, in this order):
#   test  the CUDA codec parity test (batched GPU encode == CPU stream) and
#         the CUDA graph tests of the batching across requests
#   e2e   one C2C answer (scripts/gpu_e2e_bench.sh: 118 tokens, INT4, 10 new
#         tokens) per configuration; the Python reference once, with the
#         last configuration
#   load  per configuration: a traced answer, then answers/s against
#         concurrency 1, 4, 16, 64, 256 (load_tests/scenarios/
#         gpu_serving.yaml)
# KVWIRE_SERVING_CONFIGS (default "batched scheduled") picks configurations.
# Usage, from the repository root after `source .gpu/device-env.sh`:
#   scripts/gpu_serving_bench.sh TOKENIZER_DIR
# Results go to $OUT (default /tmp/kvwire-serving).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tok=${1:?usage: $0 TOKENIZER_DIR}
export OUT=${OUT:-/tmp/kvwire-serving}
mkdir -p "$OUT"
export KVWIRE_GPU_CMAKE_EXTRA="-DKVWIRE_BUILD_TESTS=ON"
source "$root/scripts/gpu_common.sh"
step() { echo "[$(date -u +%H:%M:%S)] $*"; }
parts=",${KVWIRE_SERVING_PARTS:-test,e2e,load},"
want() { [[ "$parts" == *",$1,"* ]]; }
read -r -a configs <<<"${KVWIRE_SERVING_CONFIGS:-batched scheduled}"
declare -A sharer_flags=(
  [per_layer]="--encode_on_cpu=true --prefill_batch_rows=0"
  [batched]="--encode_on_cpu=false --prefill_batch_rows=0"
  [scheduled]="--encode_on_cpu=false --prefill_batch_rows=8")
declare -A receiver_flags=(
  [per_layer]="--fusion_schedule=on_arrival --prefill_batch_rows=0 --sharer_max_blocks_per_message=0"
  [batched]="--fusion_schedule=when_complete --prefill_batch_rows=0 --sharer_max_blocks_per_message=0"
  [scheduled]="--fusion_schedule=when_complete --prefill_batch_rows=8 --sharer_max_blocks_per_message=64")

step "host: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
step "build"
kvwire_gpu_build kvwire-load kvwire_kv_codec_test kvwire_model_cuda_test || exit 1
kvwire_gpu_models "$tok"

if want test; then
  step "CUDA codec parity"
  "$build/tests/common/codec/kvwire_kv_codec_test" 2>&1 |
    grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) " | tee "$OUT/kv_codec_test.txt"
  step "CUDA graph batching across requests"
  "$build/tests/common/model/kvwire_model_cuda_test" \
    --gtest_filter='*Batched*:*GraphPrefill*' 2>&1 |
    grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) |Failure|Expected|Which is" |
    tee "$OUT/model_cuda_test.txt"
fi

if want e2e; then
  for config in "${configs[@]}"; do
    step "end to end, $config"
    skip_python=1
    [[ $config == "${configs[-1]}" ]] && skip_python=0
    OUT=$OUT/e2e_$config KVWIRE_E2E_RUNS=${KVWIRE_E2E_RUNS:-10} \
      KVWIRE_E2E_SKIP_PYTHON=$skip_python \
      KVWIRE_SHARER_FLAGS="${sharer_flags[$config]}" \
      KVWIRE_RECEIVER_FLAGS="${receiver_flags[$config]}" \
      bash "$root/scripts/gpu_e2e_bench.sh" "$tok" 2>&1 | tail -n 30 |
      tee "$OUT/e2e_$config.txt"
  done
fi

if want load; then
  question=$(cat /tmp/kvwire-e2e/question.txt 2>/dev/null ||
    echo "Which gas do plants release?")
  for config in "${configs[@]}"; do
    step "load, $config"
    KVWIRE_SHARER_FLAGS="--workers=8 --max_batch_size=1 --queue_size=256 ${sharer_flags[$config]}" \
      KVWIRE_RECEIVER_FLAGS="--workers=16 --queue_size=256 ${receiver_flags[$config]}" \
      kvwire_gpu_start_services cuda:0 cuda:0
    for i in 1 2 3; do  # warm-up, then the traced answer
      "$cli" ask --target="127.0.0.1:$receiver_port" --plaintext --scheme=int4 \
        --max_new_tokens=10 --question="$question" \
        --trace_out="$OUT/trace_$config.json" >"$OUT/trace_$config.txt"
    done
    cat "$OUT/trace_$config.txt"
    "$build/load_tests/kvwire-load" \
      --scenario_file="$root/load_tests/scenarios/gpu_serving.yaml" \
      --target="127.0.0.1:$receiver_port" --allow_insecure --progress=false \
      --plots=false --out_dir="$OUT/load_$config" 2>&1 | tail -n 30 |
      tee "$OUT/load_$config.txt"
    # Where one answer's time goes under load: a traced answer while 16
    # others run.
    "$build/load_tests/kvwire-load" \
      --scenario_file="$root/load_tests/scenarios/gpu_serving.yaml" \
      --target="127.0.0.1:$receiver_port" --allow_insecure --progress=false \
      --plots=false --concurrency=16 --warmup_seconds=0 --duration_seconds=6 \
      --out_dir="$OUT/load16_$config" >/dev/null 2>&1 &
    background=$!
    sleep 3
    "$cli" ask --target="127.0.0.1:$receiver_port" --plaintext --scheme=int4 \
      --max_new_tokens=10 --question="$question" \
      --trace_out="$OUT/trace16_$config.json" >"$OUT/trace16_$config.txt"
    wait "$background"
    sed -n '/Stage times/,/^$/p' "$OUT/trace16_$config.txt"
    kvwire_gpu_stop_services
  done
fi
tar czf /tmp/kvwire-serving.tgz -C "$OUT" . && mv /tmp/kvwire-serving.tgz "$OUT/0serving.tgz"
step "done"
