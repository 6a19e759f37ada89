#!/bin/bash
# The fuser's GPU-host run (see docs/perf/fuser.md): from the repo root, with
# .gpu/ carried and $OUT set. Generates the tiny goldens and the real-shape
# reference with tools/gen_fuser_goldens.py (PyTorch), builds the fuser
# targets with CUDA, runs the C++ tests (CPU and CUDA) against the goldens,
# and measures parity and fusion time at the real shapes for the C++ fuser
# (eager and CUDA graphs) against the Python reference timed on the same GPU.
# Writes <= 8 files to $OUT.
set -u
OUT=${OUT:-/tmp/fuser-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
date -u +"%Y-%m-%dT%H:%M:%SZ"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== python: tiny goldens and the real-shape reference"
python3 tools/gen_fuser_goldens.py --tiny tests/data/fuser --real /tmp/real \
  --tokens 117 --runs 30 --warmup 5 --json "$OUT/python.json" > /dev/null
tar czf "$OUT/goldens.tgz" tests/data/fuser
python3 - "$OUT/python.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(json.dumps({k: v for k, v in d.get("real", {}).items()}, indent=1))
print("tiny:", json.dumps(d.get("tiny"))[:400])
PY

echo "== build"
source .gpu/device-env.sh
s=$(date +%s)
{ cmake -S . -B build-gpu $GPU_CMAKE_ARGS -DCMAKE_BUILD_TYPE=Release \
    -DKVWIRE_WITH_CUDA=ON -DKVWIRE_BUILD_TESTS=ON -DKVWIRE_BUILD_BENCHMARKS=OFF &&
  cmake --build build-gpu -j16 --target kvwire-make-fuser kvwire-fuser-bench \
    kvwire-fuser-graph-bench kvwire_fuser_test kvwire_fuser_cuda_test -- -k 0; } \
  > "$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - s )) s"
grep -E "error|FAILED" "$OUT/build.log" | head -40
B=build-gpu

echo "== C++ tests (CPU, then goldens and graphs on CUDA)"
$B/tests/common/fuser/kvwire_fuser_test 2>&1 | grep -E "FAILED|PASSED|bf16 golden|Failure|Expected|Which is|actual" | head -60
KVWIRE_TEST_DEVICE=cuda $B/tests/common/fuser/kvwire_fuser_test --gtest_filter='FuserGolden*' 2>&1 | grep -E "FAILED|PASSED|bf16 golden|Failure" | head -30
$B/tests/common/fuser/kvwire_fuser_cuda_test 2>&1 | grep -E "FAILED|PASSED|SKIPPED|Failure|Expected|Which is" | head -30

echo "== C++ at the real shapes (eager, then CUDA graphs)"
$B/tools/fuser/kvwire-fuser-bench --checkpoint=/tmp/real/ckpt --io=/tmp/real/io.pt \
  --device=cuda --dtype=bf16 --warmup=5 --runs=30 > "$OUT/cpp_real.json"
echo "eager rc=$?"
$B/tools/fuser/kvwire-fuser-graph-bench --checkpoint=/tmp/real/ckpt --io=/tmp/real/io.pt \
  --device=cuda --dtype=bf16 --warmup=5 --runs=30 > "$OUT/cpp_real_graphs.json"
echo "graphs rc=$?"
python3 - "$OUT/cpp_real.json" "$OUT/cpp_real_graphs.json" <<'PY'
import json, sys
for f in sys.argv[1:]:
    try:
        d = json.load(open(f))
    except Exception as e:
        print(f, "unreadable", e); continue
    d.pop("parity", None)
    print(f, json.dumps(d, indent=1))
PY

echo "== C++ -> Python: files written by LibTorch read with torch.load(weights_only=True)"
$B/tools/fuser/kvwire-make-fuser --out=/tmp/cpp211 --dtype=bf16 --open_gates=0.8
$B/tools/fuser/kvwire-fuser-bench --checkpoint=/tmp/cpp211 --tokens=9 --dtype=bf16 \
  --write_io=/tmp/cpp211_io.pt --runs=0 > /dev/null
python3 tools/gen_fuser_goldens.py \
  --check-cpp tests/data/fuser/cpp_written tests/data/fuser/cpp_written_io.pt \
  --check-cpp /tmp/cpp211 /tmp/cpp211_io.pt --json "$OUT/check_cpp.json"
date -u +"%Y-%m-%dT%H:%M:%SZ"
