#!/usr/bin/env bash
# Builds the libFuzzer target for the KvChunk stream decoder with clang
# (address + undefined sanitizers) and runs it for SECONDS (default 60) from
# seeds that kvwire_make_fuzz_corpus encodes from a synthetic cache. Skips, saying so, when clang is absent.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SECONDS_TO_RUN=${1:-60}
if ! command -v clang++ >/dev/null; then
  echo "kvwire fuzz: clang++ not found; skipping the fuzzer"
  exit 0
fi
BUILD=${KVWIRE_FUZZ_BUILD_DIR:-$KVWIRE_ROOT/build-fuzz}
CC=clang CXX=clang++ cmake -S "$KVWIRE_ROOT" -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVWIRE_BUILD_TESTS=OFF \
  -DKVWIRE_BUILD_BENCHMARKS=OFF -DKVWIRE_BUILD_FUZZERS=ON -DKVWIRE_BUILD_SERVICES=OFF
cmake --build "$BUILD" -j "$KVWIRE_JOBS" --target kvwire_chunk_decoder_fuzzer \
  kvwire_make_fuzz_corpus
corpus=$(mktemp -d)
"$BUILD/fuzz/kvwire_make_fuzz_corpus" "$corpus"
"$BUILD/fuzz/kvwire_chunk_decoder_fuzzer" -max_total_time="$SECONDS_TO_RUN" \
  -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 "$corpus"
echo "kvwire fuzz: no crash in ${SECONDS_TO_RUN}s"
