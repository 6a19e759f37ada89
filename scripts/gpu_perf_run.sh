#!/usr/bin/env bash
# The GPU performance run (docs/PERFORMANCE.md §5) on one GPU host: builds
# with CUDA (tests and benchmarks on), then runs the parts named in
# KVWIRE_PERF_PARTS (comma-separated; default all, in this order):
#   tests      CUDA parity tests (codec kernels, graph decode/prefill/batched
#              decode, graph fusion)
#   decode     kvwire-model-bench: eager vs CUDA-graph decode and the floor
#   codec      the CUDA codec kernel benchmark
#   fusion     28 projectors, 117 tokens: C++ (per layer / batched, eager /
#              graphs) vs the Python reference
#   e2e        one C2C answer vs the Python reference (scripts/gpu_e2e_bench.sh)
#   load       a traced answer (the overlap timeline) and answers/s against
#              concurrency 1, 4, 16, 64 (kvwire-load)
#   transport  8K-token bf16 stream vs iperf3 on loopback
#   metrics    the /metrics (civetweb) diagnosis
# Usage, from the repository root after `source .gpu/device-env.sh`:
#   scripts/gpu_perf_run.sh TOKENIZER_DIR [SHARER_DEVICE RECEIVER_DEVICE]
# Results go to $OUT (default /tmp/kvwire-perf), also packed into
# $OUT/0perf.tgz. A device command may run 600 s: split the parts over two
# back-to-back calls (the build is incremental), e.g.
#   KVWIRE_PERF_PARTS=tests,codec,fusion,decode ... then
#   KVWIRE_PERF_PARTS=e2e,load ...
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

parts=",${KVWIRE_PERF_PARTS:-tests,decode,codec,fusion,e2e,load,transport,metrics},"
want() { [[ "$parts" == *",$1,"* ]]; }

if want tests; then
step "CUDA parity tests"
"$build/tests/common/codec/kvwire_cuda_quantize_test" 2>&1 |
  tail -n 3 | tee "$OUT/cuda_quantize_test.txt"
"$build/tests/common/model/kvwire_model_cuda_test" 2>&1 |
  grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) " | tee "$OUT/model_cuda_test.txt"

fi
kvwire_gpu_models "$tok"
if want tests; then
"$build/tests/common/fuser/kvwire_fuser_cuda_test" 2>&1 |
  grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) " | tee "$OUT/fuser_cuda_test.txt"
fi
if want decode; then
step "decoder: eager vs CUDA-graph decode (Qwen3-0.6B shape, bf16)"
"$build/tools/model_bench/kvwire-model-bench" --model_dir="$models/receiver" \
  --device="$receiver_device" --dtype=bf16 --prompt_len=118 \
  --decode_tokens=64 --iters=3 | tee "$OUT/model_bench.json"
fi

if want codec; then
step "codec: fused CUDA kernels vs ATen on the GPU"
"$build/benchmarks/kvwire_cuda_codec_benchmark" \
  --benchmark_out="$OUT/codec_bench.json" --benchmark_out_format=json 2>&1 |
  tail -n 40 | tee "$OUT/codec_bench.txt"
fi

if want fusion; then
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
    print(f, json.dumps(d.get("summary", d.get("real", d)))[:1500])
PY
fi

if want e2e; then
step "end to end vs the Python reference"
KVWIRE_E2E_RUNS=${KVWIRE_E2E_RUNS:-10} bash "$root/scripts/gpu_e2e_bench.sh" \
  "$tok" "$sharer_device" "$receiver_device" 2>&1 | tee "$OUT/e2e.txt"

if [[ "$sharer_device" != "$receiver_device" ]]; then
  step "end to end with both services on $receiver_device (same host, no Python)"
  OUT=$OUT/one_gpu KVWIRE_E2E_SKIP_PYTHON=1 KVWIRE_E2E_RUNS=${KVWIRE_E2E_RUNS:-10} \
    bash "$root/scripts/gpu_e2e_bench.sh" "$tok" "$receiver_device" \
    "$receiver_device" 2>&1 | tail -n 25 | tee "$OUT/e2e_one_gpu.txt"
fi
fi

if want load || want transport; then
step "timeline and concurrency"
export KVWIRE_RECEIVER_FLAGS="--workers=16 --queue_size=128 ${KVWIRE_RECEIVER_FLAGS:-}"
# Batch-1 graph prefills (~1.6 ms each) beat the sharer's eager batched
# prefill of several requests, so the sharer does not batch here.
export KVWIRE_SHARER_FLAGS="--workers=8 --max_batch_size=1 --queue_size=128 ${KVWIRE_SHARER_FLAGS:-}"
kvwire_gpu_start_services "$sharer_device" "$receiver_device"
fi
if want load; then
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
fi
if want transport; then
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
fi
if want load || want transport; then
  kvwire_gpu_stop_services
  tail -n 100 "$logs/receiver.log" >"$OUT/receiver_tail.log"
fi

if want metrics; then
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
fi
tar czf /tmp/kvwire-perf.tgz -C "$OUT" . && mv /tmp/kvwire-perf.tgz "$OUT/0perf.tgz"
step "done"
