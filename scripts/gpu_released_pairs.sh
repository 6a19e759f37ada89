#!/usr/bin/env bash
# On a GPU host (after `source .gpu/device-env.sh`, see scripts/gpu_kit.sh):
# loads the shapes of every fuser pair C2C released (c2c-spec §3) into the
# real services and answers one question over gRPC per pair. For each pair
# it writes RANDOM checkpoints at the real shapes (kvwire-make-checkpoint
# --preset, kvwire-make-fuser --preset=RECEIVER+SHARER: the released
# projector widths, token alignment for the Llama-3.2 and Gemma-3 sharers),
# starts kvwire-sharer and kvwire-receiver on the GPU(s) in bf16, asks a C2C
# question with INT4 on the wire and a receiver-only one, and prints the
# answer lines (bytes, timings). Usage:
#   scripts/gpu_released_pairs.sh TOKENIZERS [SHARER_DEVICE RECEIVER_DEVICE] [PAIR...]
# TOKENIZERS holds qwen3/, llama3_2/ and gemma3/, each with tokenizer.json and
# tokenizer_config.json. PAIR is RECEIVER+SHARER (default: all seven).
# Checkpoints go to $KVWIRE_GPU_MODELS_DIR (default /tmp/kvwire-gpu-models);
# a pair's sharer is deleted before the next one is written (the 8B+7B pair
# is ~31 GB in bf16).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tok=${1:?usage: $0 TOKENIZERS [SHARER_DEVICE RECEIVER_DEVICE] [PAIR...]}
sharer_device=${2:-cuda:0}
receiver_device=${3:-cuda:0}
shift $(($# < 3 ? $# : 3))
pairs=("$@")
if [[ ${#pairs[@]} -eq 0 ]]; then
  pairs=(qwen3-0.6b+qwen2.5-0.5b qwen3-0.6b+llama-3.2-1b qwen3-0.6b+qwen2.5-1.5b
         qwen3-0.6b+qwen3-4b qwen3-1.7b+qwen2.5-1.5b qwen3-8b+qwen2.5-7b
         qwen3-0.6b+gemma-3-1b)
fi
# shellcheck source=scripts/gpu_common.sh
source "$root/scripts/gpu_common.sh"
kvwire_gpu_build
mk=$build/tools/make_tiny_checkpoint/kvwire-make-checkpoint
mkf=$build/tools/fuser/kvwire-make-fuser
question="Which gas do plants release during photosynthesis? Answer in one word."
have_receiver=""
for pair in "${pairs[@]}"; do
  receiver_preset=${pair%%+*}
  sharer_preset=${pair#*+}
  echo "== $pair"
  start=$(date +%s%N)
  if [[ "$have_receiver" != "$receiver_preset" ]]; then
    rm -rf "$models/receiver"
    "$mk" --out="$models/receiver" --preset="$receiver_preset" --seed=1 >/dev/null
    cp "$tok/qwen3/tokenizer.json" "$tok/qwen3/tokenizer_config.json" "$models/receiver/"
    have_receiver=$receiver_preset
  fi
  rm -rf "$models/sharer" "$models/fuser"
  "$mk" --out="$models/sharer" --preset="$sharer_preset" --seed=2 >/dev/null
  "$mkf" --out="$models/fuser" --preset="$pair" --seed=3 >/dev/null
  echo "checkpoints written in $(( ($(date +%s%N) - start) / 1000000 )) ms:" \
    "$(du -sh "$models/receiver" | cut -f1) receiver," \
    "$(du -sh "$models/sharer" | cut -f1) sharer, $(du -sh "$models/fuser" | cut -f1) fuser"
  KVWIRE_SHARER_FLAGS=""
  KVWIRE_RECEIVER_FLAGS=""
  case "$sharer_preset" in
    llama-3.2-*) KVWIRE_RECEIVER_FLAGS="--sharer_tokenizer_dir=$tok/llama3_2" ;;
    gemma-3-*)
      KVWIRE_RECEIVER_FLAGS="--sharer_tokenizer_dir=$tok/gemma3"
      KVWIRE_SHARER_FLAGS="--sliding_window_override=4096" ;;  # As C2C loads it.
  esac
  start=$(date +%s%N)
  kvwire_gpu_start_services "$sharer_device" "$receiver_device"
  echo "services ready in $(( ($(date +%s%N) - start) / 1000000 )) ms"
  grep -h "token_alignment\|fuser" "$logs/receiver.out" | head -n 3 || true
  for mode in c2c receiver-only; do
    "$cli" ask --target="127.0.0.1:$receiver_port" --plaintext --question="$question" \
      --max_new_tokens=8 --mode="$mode" --scheme=int4 --request_id="released-$pair"
  done
  kvwire_gpu_stop_services
done
