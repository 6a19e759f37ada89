#!/usr/bin/env bash
# On a GPU host (after `source .gpu/device-env.sh`, see scripts/gpu_kit.sh):
# builds the services with CUDA, writes RANDOM checkpoints at the real
# Qwen3-0.6B / Qwen2.5-0.5B / C2C-fuser shapes, and runs the quickstart round
# trip on the GPU(s). Usage:
#   scripts/gpu_services_run.sh TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]
# TOKENIZER_DIR holds Qwen3's tokenizer.json + tokenizer_config.json.
# Devices default to cuda:0 for both; pass cuda:0 cuda:1 on a two-GPU host.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tok=${1:?usage: $0 TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]}
build=${KVWIRE_BUILD_DIR:-$root/build-gpu}
models=${KVWIRE_GPU_MODELS_DIR:-/tmp/kvwire-gpu-models}
cmake -S "$root" -B "$build" $GPU_CMAKE_ARGS -DCMAKE_BUILD_TYPE=Release \
  -DKVWIRE_WITH_CUDA=ON -DKVWIRE_BUILD_TESTS=OFF -DKVWIRE_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target kvwire-cli kvwire-sharer \
  kvwire-receiver kvwire-make-checkpoint kvwire-make-fuser >/dev/null
mk=$build/tools/make_tiny_checkpoint/kvwire-make-checkpoint
"$mk" --out="$models/receiver" --preset=qwen3-0.6b --seed=1 >/dev/null
"$mk" --out="$models/sharer" --preset=qwen2.5-0.5b --seed=2 >/dev/null
"$build/tools/fuser/kvwire-make-fuser" --out="$models/fuser" \
  --preset=qwen3-0.6b+qwen2.5-0.5b --seed=3 >/dev/null
cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$models/receiver/"
# The services run without their /metrics endpoints here: on the Ubuntu GPU
# hosts Debian's civetweb (under prometheus-cpp) fails to construct its
# server. Metrics are exercised by the CPU tests.
logs=$models/logs
mkdir -p "$logs"
pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait' EXIT
start() {  # NAME READY_PREFIX COMMAND...: start, wait for the ready line
  local name=$1 prefix=$2
  shift 2
  "$@" >"$logs/$name.out" 2>"$logs/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do
    ready=$(grep -m1 "^$prefix" "$logs/$name.out" 2>/dev/null || true)
    [[ -n "$ready" ]] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { tail -n 20 "$logs/$name.log"; return 1; }
    sleep 0.5
  done
  return 1
}
port() { sed -n "s/.* grpc_port=\([0-9]*\).*/\1/p" <<<"$ready"; }
start sharer "kvwire-sharer ready" "$build/sharer_service/kvwire-sharer" \
  --model_dir="$models/sharer" --device="${2:-cuda:0}" \
  --listen_address=127.0.0.1:0 --metrics_address= --allow_insecure
sharer_port=$(port)
start receiver "kvwire-receiver ready" "$build/receiver_service/kvwire-receiver" \
  --model_dir="$models/receiver" --fuser_dir="$models/fuser" \
  --device="${3:-cuda:0}" --listen_address=127.0.0.1:0 --metrics_address= \
  --allow_insecure --sharer_target="127.0.0.1:$sharer_port" --sharer_allow_insecure
receiver_port=$(port)
question="Read the passage and answer the question. Passage: Photosynthesis is \
the process by which green plants use sunlight, water and carbon dioxide to \
make glucose, releasing oxygen as a by-product. It takes place mainly in the \
chloroplasts of leaf cells, where the pigment chlorophyll absorbs light \
energy. Question: Which gas do plants release during photosynthesis?"
cli=$build/tools/cli/kvwire-cli
for round in warm-up measured; do
  echo "== $round"
  "$cli" ask --target="127.0.0.1:$receiver_port" --plaintext \
    --question="$question" --max_new_tokens=10 \
    --compare=receiver-only,bf16,int8,int4,int4@0.5:knorm_topk
done
"$cli" ask --target="127.0.0.1:$receiver_port" --plaintext \
  --question="$question" --max_new_tokens=10 --scheme=int4
