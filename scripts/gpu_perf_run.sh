#!/usr/bin/env bash
# The GPU performance run (docs/PERFORMANCE.md §5) on one GPU host, in one
# command: builds with CUDA (tests and benchmarks on), runs the CUDA parity
# tests (codec kernels, graph-captured decode), the decoder benchmark (eager
# vs CUDA-graph decode and the weight-streaming floor), the CUDA codec
# benchmark, the end-to-end comparison with the Python reference
# (scripts/gpu_e2e_bench.sh), then a traced answer (the overlap timeline)
# and answers/s against concurrency 1, 4, 16, 64 (kvwire-load). Usage, from
# the repository root after `source .gpu/device-env.sh`:
#   scripts/gpu_perf_run.sh TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]
# Results go to $OUT (default /tmp/kvwire-perf), also packed into
# $OUT/0perf.tgz. KVWIRE_PERF_QUICK=1 runs only the parity tests, the end-to-end
# comparison, the timeline and the concurrency table (e.g. for the two-GPU
# run: SHARER_DEVICE=cuda:0 RECEIVER_DEVICE=cuda:1).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tok=${1:?usage: $0 TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]}
sharer_device=${2:-cuda:0}
receiver_device=${3:-cuda:0}
export OUT=${OUT:-/tmp/kvwire-perf}
mkdir -p "$OUT"
export KVWIRE_GPU_CMAKE_EXTRA="-DKVWIRE_BUILD_TESTS=ON -DKVWIRE_BUILD_BENCHMARKS=ON"
source "$root/scripts/gpu_common.sh"
step() { echo "[$(date -u +%H:%M:%S)] $*"; }

step "host"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
git -C "$root" rev-parse --short HEAD 2>/dev/null || true
step "build"
kvwire_gpu_build kvwire_cuda_quantize_test kvwire_model_cuda_test \
  kvwire_fuser_cuda_test kvwire-model-bench kvwire_cuda_codec_benchmark \
  kvwire-load kvwire-fuser-graph-bench || exit 1

step "CUDA parity tests"
"$build/tests/common/codec/kvwire_cuda_quantize_test" 2>&1 |
  tail -n 3 | tee "$OUT/cuda_quantize_test.txt"
"$build/tests/common/model/kvwire_model_cuda_test" 2>&1 |
  grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) " | tee "$OUT/model_cuda_test.txt"

quick=${KVWIRE_PERF_QUICK:-0}
kvwire_gpu_models "$tok"
"$build/tests/common/fuser/kvwire_fuser_cuda_test" 2>&1 |
  grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) " | tee "$OUT/fuser_cuda_test.txt"
if ((!quick)); then
step "decoder: eager vs CUDA-graph decode (Qwen3-0.6B shape, bf16)"
"$build/tools/model_bench/kvwire-model-bench" --model_dir="$models/receiver" \
  --device="$receiver_device" --dtype=bf16 --prompt_len=118 \
  --decode_tokens=64 --iters=3 | tee "$OUT/model_bench.json"

step "codec: fused CUDA kernels vs ATen on the GPU"
"$build/benchmarks/kvwire_cuda_codec_benchmark" \
  --benchmark_out="$OUT/codec_bench.json" --benchmark_out_format=json 2>&1 |
  tail -n 40 | tee "$OUT/codec_bench.txt"

step "fusion: 28 projectors, 117 tokens: C++ (CUDA graphs) vs Python reference"
python3 "$root/tools/gen_fuser_goldens.py" --real /tmp/kvwire-fuser-real \
  --tokens 117 --runs 30 --warmup 5 --json "$OUT/fuser_python.json" >/dev/null &&
  "$build/tools/fuser/kvwire-fuser-graph-bench" \
    --checkpoint=/tmp/kvwire-fuser-real/ckpt --io=/tmp/kvwire-fuser-real/io.pt \
    --device=cuda --dtype=bf16 --warmup=5 --runs=30 >"$OUT/fuser_cpp_graphs.json"
python3 - "$OUT/fuser_python.json" "$OUT/fuser_cpp_graphs.json" <<'PY'
import json, sys
for f in sys.argv[1:]:
    try:
        d = json.load(open(f))
    except Exception as e:
        print(f, "unreadable", e); continue
    d.pop("parity", None)
    print(f, json.dumps(d.get("real", d))[:600])
PY

fi  # quick

step "end to end vs the Python reference"
KVWIRE_E2E_RUNS=${KVWIRE_E2E_RUNS:-10} bash "$root/scripts/gpu_e2e_bench.sh" \
  "$tok" "$sharer_device" "$receiver_device" 2>&1 | tee "$OUT/e2e.txt"

if [[ "$sharer_device" != "$receiver_device" ]]; then
  step "end to end with both services on $receiver_device (same host, no Python)"
  OUT=$OUT/one_gpu KVWIRE_E2E_SKIP_PYTHON=1 KVWIRE_E2E_RUNS=${KVWIRE_E2E_RUNS:-10} \
    bash "$root/scripts/gpu_e2e_bench.sh" "$tok" "$receiver_device" \
    "$receiver_device" 2>&1 | tail -n 25 | tee "$OUT/e2e_one_gpu.txt"
fi

step "timeline and concurrency"
export KVWIRE_RECEIVER_FLAGS="--workers=16 --queue_size=128 ${KVWIRE_RECEIVER_FLAGS:-}"
export KVWIRE_SHARER_FLAGS="--workers=4 --max_batch_size=8 --queue_size=128 ${KVWIRE_SHARER_FLAGS:-}"
kvwire_gpu_start_services "$sharer_device" "$receiver_device"
question=$(cat /tmp/kvwire-e2e/question.txt 2>/dev/null || echo "Which gas do plants release?")
for i in 1 2 3; do  # warm-up, then the traced answer
  "$cli" ask --target="127.0.0.1:$receiver_port" --plaintext --scheme=int4 \
    --max_new_tokens=10 --question="$question" --trace_out="$OUT/trace.json" \
    >"$OUT/trace.txt"
done
cat "$OUT/trace.txt"
"$build/load_tests/kvwire-load" \
  --scenario_file="$root/load_tests/scenarios/gpu_concurrency.yaml" \
  --target="127.0.0.1:$receiver_port" --allow_insecure --progress=false \
  --plots=false --out_dir="$OUT/load" 2>&1 | tail -n 30 | tee "$OUT/load.txt"
if ((!quick)); then
step "transport efficiency on loopback: 8K-token bf16 stream vs iperf3"
"$build/load_tests/kvwire-load" \
  --scenario_file="$root/load_tests/scenarios/transport_8k.yaml" \
  --target="127.0.0.1:$sharer_port" --allow_insecure --progress=false \
  --plots=false --out_dir="$OUT/transport" 2>&1 | tail -n 12 | tee "$OUT/transport.txt"
if command -v iperf3 >/dev/null; then
  iperf3 -s -p 5299 -D --pidfile /tmp/kvwire-iperf3.pid >/dev/null 2>&1
  sleep 0.5
  iperf3 -c 127.0.0.1 -p 5299 -R -t 5 -J >"$OUT/iperf3.json" || true
  kill "$(cat /tmp/kvwire-iperf3.pid)" 2>/dev/null || true
  python3 - "$OUT/iperf3.json" <<'PY'
import json, sys
bps = json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]
print(f"iperf3 loopback -R: {bps / 8 / 1e6:.0f} MB/s")
PY
else
  echo "iperf3 not found (scripts/gpu_kit.sh fetches it)"
fi
kvwire_gpu_stop_services
tail -n 100 "$logs/receiver.log" >"$OUT/receiver_tail.log"

step "metrics endpoint on this host (civetweb diagnosis)"
timeout 20 "$build/sharer_service/kvwire-sharer" --model_dir="$models/sharer" \
  --device=cpu --listen_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 \
  --allow_insecure >"$OUT/metrics_probe.out" 2>"$OUT/metrics_probe.log" &
probe=$!
sleep 8
kill -TERM "$probe" 2>/dev/null; wait "$probe" 2>/dev/null
head -c 600 "$OUT/metrics_probe.out"; grep -i -E "metric|civet|exposer|error|bind" "$OUT/metrics_probe.log" | head -n 10
else
  kvwire_gpu_stop_services
fi  # quick

step "metrics endpoint: what civetweb loads (LD_DEBUG)"
LD_DEBUG=files timeout 15 "$build/sharer_service/kvwire-sharer" \
  --model_dir="$models/sharer" --device=cpu --listen_address=127.0.0.1:0 \
  --metrics_address=127.0.0.1:9777 --allow_insecure >/dev/null \
  2>"$OUT/metrics_ld_debug.log" &
probe=$!
sleep 8
kill -TERM "$probe" 2>/dev/null; wait "$probe" 2>/dev/null
grep -E "ssl|crypto|civet" "$OUT/metrics_ld_debug.log" | grep -v "^\s*$" | head -n 15
grep -E "failed to start|ready" "$OUT/metrics_ld_debug.log" | head -n 3
tar czf /tmp/kvwire-perf.tgz -C "$OUT" . && mv /tmp/kvwire-perf.tgz "$OUT/0perf.tgz"
step "done"
