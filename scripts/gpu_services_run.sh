#!/usr/bin/env bash
# On a GPU host (after `source .gpu/device-env.sh`, see scripts/gpu_kit.sh):
# builds the services with CUDA, writes RANDOM checkpoints at the real
# Qwen3-0.6B / Qwen2.5-0.5B / C2C-fuser shapes, and runs the quickstart round
# trip on the GPU(s). Usage:
#   scripts/gpu_services_run.sh TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]
# TOKENIZER_DIR holds Qwen3's tokenizer.json + tokenizer_config.json.
# Devices default to cuda:0 for both; pass cuda:0 cuda:1 on a two-GPU host.
# The build, checkpoints and service start are scripts/gpu_common.sh's (its
# header lists the environment variables); scripts/gpu_e2e_bench.sh times one
# C2C answer against the Python reference on the same setup.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tok=${1:?usage: $0 TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]}
# shellcheck source=scripts/gpu_common.sh
source "$root/scripts/gpu_common.sh"
kvwire_gpu_build
kvwire_gpu_models "$tok"
kvwire_gpu_start_services "${2:-cuda:0}" "${3:-cuda:0}"
question="Read the passage and answer the question. Passage: Photosynthesis is \
the process by which green plants use sunlight, water and carbon dioxide to \
make glucose, releasing oxygen as a by-product. It takes place mainly in the \
chloroplasts of leaf cells, where the pigment chlorophyll absorbs light \
energy. Question: Which gas do plants release during photosynthesis?"
for round in warm-up measured; do
  echo "== $round"
  "$cli" ask --target="127.0.0.1:$receiver_port" --plaintext \
    --question="$question" --max_new_tokens=10 \
    --compare=receiver-only,bf16,int8,int4,int4@0.5:knorm_topk
done
"$cli" ask --target="127.0.0.1:$receiver_port" --plaintext \
  --question="$question" --max_new_tokens=10 --scheme=int4
