#!/usr/bin/env bash
# Builds every libFuzzer target (fuzz/CMakeLists.txt) with clang (address +
# undefined sanitizers; UB halts), seeds their corpora and runs them one
# after another within TOTAL_SECONDS (default 240) in all, split evenly.
# Exits non-zero if any target crashes, leaks, times out or runs out of
# memory (crashing inputs are kept under KVWIRE_FUZZ_ARTIFACTS). Skips,
# saying so, when clang is absent. docs/RELIABILITY.md ("Fuzzing") lists the
# targets and records the long runs.
#
# Usage: scripts/fuzz.sh [TOTAL_SECONDS]
#   KVWIRE_FUZZ_TARGETS    space-separated subset of the targets below
#   KVWIRE_FUZZ_CORPUS_DIR keep (and reuse) the corpora there instead of a
#                          temporary directory
#   KVWIRE_FUZZ_LOG_DIR    keep each target's libFuzzer log there
#   KVWIRE_FUZZ_ARTIFACTS  crash/timeout/OOM inputs (default
#                          <build>/fuzz-artifacts)
#   KVWIRE_FUZZ_TOKENIZER_DIR  a directory with the real Qwen3
#                          tokenizer.json + tokenizer_config.json (default:
#                          .tok/ if present, else fetched with
#                          scripts/fetch_qwen3_tokenizer.sh)
#
# Seeds: kvwire_make_fuzz_corpus (streams, tiny checkpoints written by
# WriteRandomCheckpoint, torch.save files written by SerializeTorchStateDict,
# fuser json, the real Qwen3 tokenizer shrunk to a small vocabulary, layer
# schedules, serialized requests) plus the repository's real files
# (tests/data model configs, .pt files and fuser json, the eval grids, the
# load-test scenarios). Inputs under fuzz/regressions/<target>/ (crashes
# found and fixed) are replayed before fuzzing and join the corpus.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
TOTAL_SECONDS=${1:-240}
ALL_TARGETS=(chunk_decoder safetensors torch_pickle model_config fuser_config
  tokenizer layer_schedule request_validation grid scenario)
read -r -a TARGETS <<<"${KVWIRE_FUZZ_TARGETS:-${ALL_TARGETS[*]}}"
if ! command -v clang++ >/dev/null; then
  echo "kvwire fuzz: clang++ not found; skipping the fuzzers"
  exit 0
fi
BUILD=${KVWIRE_FUZZ_BUILD_DIR:-$KVWIRE_ROOT/build-fuzz}
CC=clang CXX=clang++ cmake -S "$KVWIRE_ROOT" -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVWIRE_BUILD_TESTS=OFF \
  -DKVWIRE_BUILD_BENCHMARKS=OFF -DKVWIRE_BUILD_FUZZERS=ON -DKVWIRE_BUILD_SERVICES=OFF
cmake --build "$BUILD" -j "$KVWIRE_JOBS" --target kvwire_fuzzers \
  kvwire_make_fuzz_corpus

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
CORPUS=${KVWIRE_FUZZ_CORPUS_DIR:-$work/corpus}
LOGS=${KVWIRE_FUZZ_LOG_DIR:-$work/logs}
ARTIFACTS=${KVWIRE_FUZZ_ARTIFACTS:-$BUILD/fuzz-artifacts}
mkdir -p "$CORPUS" "$LOGS" "$ARTIFACTS"

# --- Seeds -----------------------------------------------------------------
tokenizer_dir=${KVWIRE_FUZZ_TOKENIZER_DIR:-}
if [[ -z "$tokenizer_dir" && -f "$KVWIRE_ROOT/.tok/tokenizer.json" ]]; then
  tokenizer_dir=$KVWIRE_ROOT/.tok
fi
if [[ -z "$tokenizer_dir" ]]; then
  if "$KVWIRE_ROOT/scripts/fetch_qwen3_tokenizer.sh" "$work/qwen3" >/dev/null 2>&1; then
    tokenizer_dir=$work/qwen3
  else
    echo "kvwire fuzz: could not fetch the real Qwen3 tokenizer (offline?);" \
      "the tokenizer corpus is seeded with the generated tokenizer.json only"
  fi
fi
seeds=$work/seeds
"$BUILD/fuzz/kvwire_make_fuzz_corpus" "$seeds" ${tokenizer_dir:+"$tokenizer_dir"}
data=$KVWIRE_ROOT/tests/data
# config.json NUL generation_config.json, as model_config_fuzzer splits them.
for dir in "$data"/models/* "$data"/pipeline/sharer "$data"/pipeline/receiver; do
  [[ -f "$dir/config.json" ]] || continue
  name=$(basename "$dir")
  cp "$dir/config.json" "$seeds/model_config/tests_${name}_config"
  if [[ -f "$dir/generation_config.json" ]]; then
    { cat "$dir/config.json"; printf '\0'; cat "$dir/generation_config.json"; } \
      >"$seeds/model_config/tests_${name}_config_generation"
  fi
done
# Whole .pt files take flag byte 0 (torch_pickle_fuzzer).
for pt in "$data"/fuser/strided.pt "$data"/fuser/legacy.pt \
  "$data"/fuser/tiny_bf16_io.pt; do
  [[ -f "$pt" ]] || continue
  { printf '\0'; cat "$pt"; } >"$seeds/torch_pickle/tests_$(basename "$pt")"
done
for json in "$data"/fuser/*/config.json "$data"/fuser/*/final/projector_0.json \
  "$data"/fuser/*/final/projector_config.json; do
  [[ -f "$json" ]] || continue
  rel=${json#"$data"/fuser/}
  cp "$json" "$seeds/fuser_config/tests_${rel//\//_}"
done
mkdir -p "$seeds/grid" "$seeds/scenario"
for yaml in "$KVWIRE_ROOT"/tools/eval/grids/*.yaml; do
  [[ -f "$yaml" ]] && cp "$yaml" "$seeds/grid/"
done
for yaml in "$KVWIRE_ROOT"/load_tests/scenarios/*.yaml "$KVWIRE_ROOT"/load_tests/ops/*.yaml; do
  [[ -f "$yaml" ]] && cp "$yaml" "$seeds/scenario/"
done

# --- Run -------------------------------------------------------------------
# UBSan reports are failures too, with a stack. fuzz/lsan_suppressions.txt
# names the one known leak inside LibTorch.
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$KVWIRE_ROOT/fuzz/lsan_suppressions.txt:print_suppressions=0}
echo "kvwire fuzz: ${#TARGETS[@]} targets sharing ${TOTAL_SECONDS}s"
failed=()
# Each target gets an even share of what is left, so that the start-up and
# corpus-loading time of the earlier ones (several seconds each: LibTorch
# under ASan) comes out of the budget instead of adding to it.
fuzz_start=$SECONDS
left=${#TARGETS[@]}
for t in "${TARGETS[@]}"; do
  PER_TARGET=$(((TOTAL_SECONDS - (SECONDS - fuzz_start)) / left))
  ((PER_TARGET >= 1)) || PER_TARGET=1
  left=$((left - 1))
  bin=$BUILD/fuzz/kvwire_${t}_fuzzer
  # Suppressing the LibTorch leak needs stacks through LibTorch's frames.
  asan=${ASAN_OPTIONS:-}
  [[ $t == torch_pickle ]] && asan=${asan:+$asan:}fast_unwind_on_malloc=0
  mkdir -p "$CORPUS/$t"
  [[ -d "$seeds/$t" ]] && cp -n "$seeds/$t"/* "$CORPUS/$t/" 2>/dev/null || true
  regressions=("$KVWIRE_ROOT/fuzz/regressions/$t"/*)
  if [[ -e "${regressions[0]}" ]]; then
    if ! ASAN_OPTIONS=$asan "$bin" -rss_limit_mb=4096 -timeout=10 \
      "${regressions[@]}" >"$LOGS/$t.regressions.log" 2>&1; then
      echo "kvwire fuzz: $t: a regression input fails again:" >&2
      tail -n 60 "$LOGS/$t.regressions.log" >&2
      failed+=("$t")
      continue
    fi
    cp -n "${regressions[@]}" "$CORPUS/$t/"
  fi
  log=$LOGS/$t.log
  started=$SECONDS
  if ASAN_OPTIONS=$asan "$bin" -max_total_time="$PER_TARGET" \
    -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$ARTIFACTS/$t-" "$CORPUS/$t" >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    echo "kvwire fuzz: $t: ${runs:-?} runs in $((SECONDS - started))s," \
      "corpus $(find "$CORPUS/$t" -type f | wc -l) files, no crash"
  else
    echo "kvwire fuzz: $t FAILED (inputs under $ARTIFACTS/$t-*):" >&2
    tail -n 80 "$log" >&2
    failed+=("$t")
  fi
done
if ((${#failed[@]})); then
  echo "kvwire fuzz: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "kvwire fuzz: no crash in ${#TARGETS[@]} targets," \
  "$((SECONDS - fuzz_start))s in all"
