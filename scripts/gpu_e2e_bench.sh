#!/usr/bin/env bash
# End to end on a GPU host, in one run on one card: one C2C answer through
# kvwire's C++ services (kvwire-sharer -> INT4 KV over loopback gRPC ->
# kvwire-receiver, random weights at the real Qwen3-0.6B / Qwen2.5-0.5B /
# C2C-fuser shapes) against the Python reference flow (HF transformers + the
# projector in PyTorch, eager; tools/perf/c2c_python_reference.py), same
# prompt length (118 tokens), 10 generated tokens, per-stage medians and the
# C++/Python ratio. Usage (after `source .gpu/device-env.sh`):
#   scripts/gpu_e2e_bench.sh TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]
# TOKENIZER_DIR holds Qwen3's tokenizer.json + tokenizer_config.json. The
# Python reference runs on RECEIVER_DEVICE after the services have stopped.
#
# Environment (besides scripts/gpu_common.sh's KVWIRE_BUILD_DIR,
# KVWIRE_GPU_MODELS_DIR, KVWIRE_SHARER_FLAGS, KVWIRE_RECEIVER_FLAGS):
#   KVWIRE_E2E_RUNS=15 KVWIRE_E2E_WARMUP=3   timed / warm-up answers, each side
#   KVWIRE_E2E_PROMPT_TOKENS=118             L (the C++ side reports L-1)
#   KVWIRE_E2E_NEW_TOKENS=10                 generated tokens
#   KVWIRE_E2E_SCHEME=int4                   kvwire-cli ask --scheme
#   KVWIRE_E2E_SKIP_PYTHON=1                 C++ side only
#   KVWIRE_E2E_PYTHON_ARGS                   extra c2c_python_reference.py flags
#   KVWIRE_E2E_DIR=/tmp/kvwire-e2e           work files
#   OUT                                      if set, results are copied there
# e.g. KVWIRE_CUDA_GRAPH_DECODE=0 KVWIRE_RECEIVER_FLAGS="--flag=x" scripts/...
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tok=${1:?usage: $0 TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]}
sharer_device=${2:-cuda:0}
receiver_device=${3:-cuda:0}
runs=${KVWIRE_E2E_RUNS:-15}
warmup=${KVWIRE_E2E_WARMUP:-3}
prompt_len=${KVWIRE_E2E_PROMPT_TOKENS:-118}
new_tokens=${KVWIRE_E2E_NEW_TOKENS:-10}
scheme=${KVWIRE_E2E_SCHEME:-int4}
work=${KVWIRE_E2E_DIR:-/tmp/kvwire-e2e}
report=$root/tools/perf/e2e_report.py
# shellcheck source=scripts/gpu_common.sh
source "$root/scripts/gpu_common.sh"
rm -rf "$work"
mkdir -p "$work/cpp"
step() { echo "[$(date +%H:%M:%S)] $*"; }

step "build ($build)"
kvwire_gpu_build
step "random checkpoints ($models)"
kvwire_gpu_models "$tok"
step "services: sharer on $sharer_device, receiver on $receiver_device" \
  "(KVWIRE_CUDA_GRAPH_DECODE=${KVWIRE_CUDA_GRAPH_DECODE-unset}," \
  "receiver flags: ${KVWIRE_RECEIVER_FLAGS:-none}, sharer flags: ${KVWIRE_SHARER_FLAGS:-none})"
kvwire_gpu_start_services "$sharer_device" "$receiver_device"

ask() {  # ask REQUEST_ID MAX_NEW_TOKENS QUESTION: the answer's JSON on stdout
  "$cli" ask --target="127.0.0.1:$receiver_port" --plaintext --json \
    --mode=c2c --scheme="$scheme" --fallback=fail --request_id="$1" \
    --max_new_tokens="$2" --question="$3"
}

# A question whose templated prompt is exactly L tokens for the receiver (the
# transfer report's prompt_tokens is L-1, what both models prefill): a passage
# of the first k words of the text below (repeated if need be), with k
# adjusted until the count matches.
want=$((prompt_len - 1))
head="Read the passage and answer the question. Passage:"
tail="Question: Which gas do plants release during photosynthesis?"
read -r -a filler <<<"Photosynthesis is the process by which green plants use \
sunlight, water and carbon dioxide to make glucose, releasing oxygen as a \
by-product. It takes place mainly in the chloroplasts of leaf cells, where the \
pigment chlorophyll absorbs light energy. Most of this work happens in the \
upper part of the leaf where the cells are packed close to the light and each \
cell holds many small green bodies that take in the light and pass its energy \
on to make sugar for the whole plant which it then uses to grow and to store \
food in its roots and seeds for the cold months of the year when there is less \
sun."
question_with() {  # question_with K
  local k=$1 i words=() body
  for ((i = 0; i < k; i++)); do words+=("${filler[i % ${#filler[@]}]}"); done
  body=${words[*]}
  if ((k > 0)); then
    printf '%s %s. %s' "$head" "${body%[.,]}" "$tail"
  else
    printf '%s %s' "$head" "$tail"
  fi
}
count_tokens() {  # count_tokens K: prompt_tokens the receiver reports
  ask "e2e-count-$1" 1 "$(question_with "$1")" >"$work/count.json"
  python3 "$report" prompt-tokens "$work/count.json"
}
step "finding a question with prompt_tokens == $want (L = $prompt_len)"
# The count grows with k (a word is one token or more): interpolation search
# for k in [lo, hi) with n(lo) < want < n(hi).
lo=0
n_lo=$(count_tokens 0)
k=0 n=$n_lo
if ((n_lo < want)); then
  hi=$((want - n_lo))  # n(k) >= n(0) + k, so n(hi) >= want
  n_hi=$(count_tokens "$hi")
  k=$hi n=$n_hi
  while ((n != want && hi - lo > 1)); do
    k=$((lo + (want - n_lo) * (hi - lo) / (n_hi - n_lo)))
    ((k <= lo)) && k=$((lo + 1))
    ((k >= hi)) && k=$((hi - 1))
    n=$(count_tokens "$k")
    if ((n < want)); then lo=$k n_lo=$n; elif ((n > want)); then hi=$k n_hi=$n; fi
  done
  if ((n != want)); then  # No k gives exactly want: the closer side.
    if ((want - n_lo <= n_hi - want)); then k=$lo n=$n_lo; else k=$hi n=$n_hi; fi
  fi
fi
if ((n != want)); then
  echo "WARNING: no question with exactly $want prompt tokens; using $n" \
    "(the Python reference gets the same length: $((n + 1)) tokens)" >&2
fi
question=$(question_with "$k")
prompt_len=$((n + 1))
step "question: $k filler words, prompt_tokens $n (L = $prompt_len)"
printf '%s\n' "$question" >"$work/question.txt"

step "C++: $warmup warm-up + $runs timed answers (--scheme=$scheme, $new_tokens tokens)"
for ((i = 0; i < warmup; i++)); do
  ask "e2e-warmup-$i" "$new_tokens" "$question" >"$work/cpp/warmup-$i.json"
done
for ((i = 0; i < runs; i++)); do
  a=$(date +%s%N)
  ask "e2e-run-$i" "$new_tokens" "$question" >"$work/cpp/run-$i.json"
  b=$(date +%s%N)
  echo "$(((b - a) / 1000))" >"$work/cpp/run-$i.wall_us"
done
echo "receiver stderr lines mentioning 'graph':"
grep -i graph "$logs/receiver.log" | head -n 20 || echo "  (none)"
step "stopping the services"
kvwire_gpu_stop_services
cp "$logs/receiver.log" "$work/receiver.log"
cp "$logs/sharer.log" "$work/sharer.log"

py_json=
if [[ "${KVWIRE_E2E_SKIP_PYTHON:-0}" != 1 ]]; then
  step "Python reference on $receiver_device ($warmup warm-up + $runs timed, each part)"
  # shellcheck disable=SC2086  # extra flags, split on spaces
  if python3 "$root/tools/perf/c2c_python_reference.py" --device="$receiver_device" \
      --prompt-tokens="$prompt_len" --new-tokens="$new_tokens" --runs="$runs" \
      --warmup="$warmup" --json="$work/python.json" ${KVWIRE_E2E_PYTHON_ARGS:-} \
      >"$work/python.out"; then
    py_json=$work/python.json
  else
    echo "WARNING: the Python reference failed; the report has the C++ side only" >&2
    tail -n 20 "$work/python.out" >&2
  fi
fi

step "report"
python3 "$report" report --cpp-dir="$work/cpp" ${py_json:+--python="$py_json"} \
  --scheme="$scheme" --question="$work/question.txt" \
  --graph-log="$work/receiver.log" \
  --json="$work/e2e.json" --table="$work/e2e_table.txt"
cat "$work/e2e_table.txt"
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  cp "$work/e2e.json" "$work/e2e_table.txt" "$work/question.txt" "$OUT/"
  [[ -n "$py_json" ]] && cp "$py_json" "$OUT/"
  [[ -f "$work/python.out" ]] && cp "$work/python.out" "$OUT/"
  tail -n 300 "$work/receiver.log" >"$OUT/receiver.log"
  tail -n 300 "$work/sharer.log" >"$OUT/sharer.log"
  echo "results copied to $OUT"
fi
