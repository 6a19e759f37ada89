#!/usr/bin/env bash
# Sharer and receiver on "separate hosts": two network namespaces joined by
# a veth pair, the link shaped with tc, kvwire-sharer in one namespace and
# the load (kvwire-load, Share calls: the sharer -> receiver transfer) in the
# other. For every link profile x transfer spec it reports the payload bytes
# the services count, the gRPC wire bytes, and the bytes the veth interfaces
# really carried (TCP/IP, HTTP/2 framing, ACKs, the connection set-up
# included), with latency, time to first block and throughput. --transport
# also streams a large cache (8K-token bf16) on loopback and on the
# unshaped link and compares its payload MB/s with iperf3 on the same path.
# Everything is torn down at exit.
#
# Usage (root, or CAP_NET_ADMIN):
#   scripts/netns_link.sh [--links LIST] [--specs LIST] [--prompt-tokens N]
#       [--requests N] [--concurrency N] [--transport] [--transport-tokens N]
#       [--out DIR] [--build DIR] [--ci]
#   LIST of links: comma-separated NAME or RATE:DELAY[:LOSS] (tc units:
#     10gbit:0.1ms, 1gbit:1ms, 100mbit:10ms:0.1%); "unshaped" adds none.
#   --ci: a short run with assertions (exit 0/1, 77 to skip where network
#     namespaces cannot be created); prints "N passed, N failed".
# Default: unshaped,10gbit:0.1ms,1gbit:1ms,100mbit:10ms x
# bf16,int8,int4,int4@0.5 at 512 tokens, 10 requests each, --transport.
#
# Rate is shaped with netem where the kernel has sch_netem (rate, delay and
# loss together) and with tbf otherwise; without netem, delay and loss
# cannot be applied and the report says so for each link ("delay_applied").
# Only addresses inside the two namespaces are used (198.18.0.0/24, the
# benchmarking range); kvwire-load is told the sharer's namespace with
# --netns and refuses anything else.
set -euo pipefail
# glibc hands large freed blocks (the 4 MiB stream messages) back to the
# kernel and faults fresh zeroed pages in for the next message: on the
# transport stream that page churn was 21-25 % of the busy CPU (perf,
# docs/PERFORMANCE.md). Keep such blocks in the heap for every process here.
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-268435456}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-1073741824}
KVWIRE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

links="unshaped,10gbit:0.1ms,1gbit:1ms,100mbit:10ms"
specs="bf16,int8,int4,int4@0.5"
prompt_tokens=512
requests=10
concurrency=1
transport=1
transport_tokens=2048
transport_requests=2
iperf_seconds=5
out=""
build=${KVWIRE_BUILD_DIR:-$KVWIRE_ROOT/build}
ci=0
while (($#)); do
  case "$1" in
    --links) links=$2; shift 2 ;;
    --specs) specs=$2; shift 2 ;;
    --prompt-tokens) prompt_tokens=$2; shift 2 ;;
    --requests) requests=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --transport) transport=1; shift ;;
    --no-transport) transport=0; shift ;;
    --transport-tokens) transport_tokens=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --ci)
      ci=1
      links="unshaped,100mbit:10ms"
      specs="bf16,int4"
      prompt_tokens=256
      requests=4
      transport_tokens=512
      transport_requests=1
      iperf_seconds=1
      shift ;;
    -h|--help) sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "netns_link: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$out" ]] || out=$KVWIRE_ROOT/load-results/netns-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
out=$(cd "$out" && pwd)

SHARER=$build/sharer_service/kvwire-sharer
LOAD=$build/load_tests/kvwire-load
MKCKPT=$build/tools/make_tiny_checkpoint/kvwire-make-checkpoint
for b in "$SHARER" "$LOAD" "$MKCKPT"; do
  [[ -x "$b" ]] || { echo "netns_link: $b not built (cmake --build $build --target $(basename "$b"))" >&2; exit 2; }
done

tag=$$
ns_s=kvwire-sh-$tag
ns_r=kvwire-rx-$tag
if_s=kvs$tag
if_r=kvr$tag
addr_s=198.18.0.1
addr_r=198.18.0.2
pids=()

cleanup() {
  set +e
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  [[ -f "$out/iperf3.pid" ]] && kill "$(cat "$out/iperf3.pid")" 2>/dev/null
  ip netns del "$ns_s" 2>/dev/null
  ip netns del "$ns_r" 2>/dev/null
}
trap cleanup EXIT

skip() {
  echo "SKIP: $*"
  echo "0 passed, 0 failed, 1 skipped"
  exit 77
}

# ------------------------------------------------------------ namespaces
command -v ip >/dev/null || skip "'ip' (iproute2) is not installed"
if ! err=$(ip netns add "$ns_s" 2>&1); then
  skip "cannot create network namespaces here (needs root or CAP_NET_ADMIN): $err"
fi
ip netns add "$ns_r"
ip link add "$if_s" type veth peer name "$if_r"
ip link set "$if_s" netns "$ns_s"
ip link set "$if_r" netns "$ns_r"
ip -n "$ns_s" addr add "$addr_s/24" dev "$if_s"
ip -n "$ns_r" addr add "$addr_r/24" dev "$if_r"
for ns in "$ns_s" "$ns_r"; do ip -n "$ns" link set lo up; done
ip -n "$ns_s" link set "$if_s" up
ip -n "$ns_r" link set "$if_r" up
ip -n "$ns_r" route get "$addr_s" >/dev/null ||
  { echo "netns_link: no route between the namespaces" >&2; exit 1; }

netem=0
if ip netns exec "$ns_s" tc qdisc add dev "$if_s" root netem delay 1ms 2>/dev/null; then
  netem=1
  ip netns exec "$ns_s" tc qdisc del dev "$if_s" root
fi
echo "netns_link: namespaces $ns_s ($addr_s) <-> $ns_r ($addr_r); shaping with $( ((netem)) && echo netem || echo "tbf (no sch_netem in this kernel: rate only, no delay or loss)")"

# shape LINK: applies LINK to both ends' egress; prints the applied qdiscs.
shape() {
  local link=$1 rate delay loss
  for pair in "$ns_s:$if_s" "$ns_r:$if_r"; do
    local ns=${pair%%:*} dev=${pair##*:}
    ip netns exec "$ns" tc qdisc del dev "$dev" root 2>/dev/null || true
    [[ "$link" == unshaped ]] && continue
    IFS=: read -r rate delay loss <<<"$link"
    if ((netem)); then
      local args=(rate "$rate")
      [[ -n "$delay" ]] && args+=(delay "$delay")
      [[ -n "${loss:-}" ]] && args+=(loss "$loss")
      # A queue long enough for a bandwidth-delay product at 10 Gbit/s.
      ip netns exec "$ns" tc qdisc add dev "$dev" root netem "${args[@]}" limit 100000
    else
      # tbf: the bucket must hold at least one GSO super-packet (64 KiB) and
      # about 4 ms of traffic at the rate.
      local bps burst
      bps=$(python3 -c "
import re,sys
m=re.fullmatch(r'([0-9.]+)([kmg]?)bit','$rate'.lower())
print(int(float(m.group(1))*{'':1,'k':1e3,'m':1e6,'g':1e9}[m.group(2)]))")
      burst=$(( bps / 8 / 250 ))
      (( burst < 262144 )) && burst=262144
      ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" latency 200ms
    fi
  done
  ip netns exec "$ns_s" tc qdisc show dev "$if_s" | head -n1
}

counters() {  # NS DEV: "tx_bytes rx_bytes tx_packets rx_packets"
  ip netns exec "$1" sh -c "cd /sys/class/net/$2/statistics && echo \$(cat tx_bytes) \$(cat rx_bytes) \$(cat tx_packets) \$(cat rx_packets)"
}

# ---------------------------------------------------------------- sharer
model=$out/model
# A Qwen2-architecture random model whose KV is 4 KiB per token at 16 bits
# (8 layers x K,V x 2 heads x 64 dims), small enough to prefill fast on CPU.
"$MKCKPT" --out="$model" --arch=qwen2 --layers=8 --hidden=128 --heads=4 \
  --kv_heads=2 --head_dim=64 --intermediate=256 --vocab=512 --dtype=bf16 \
  --max_position=32768 --seed=1 >/dev/null

start_sharer() {  # NAME MODEL LISTEN: starts a sharer in ns_s, prints its ready line
  local name=$1 model_dir=$2 listen=$3
  ip netns exec "$ns_s" "$SHARER" --model_dir="$model_dir" --listen_address="$listen" \
    --metrics_address=127.0.0.1:0 --allow_insecure --workers=1 \
    --max_prompt_tokens=16384 --drain_timeout_seconds=5 \
    >"$out/$name.out" 2>"$out/$name.log" &
  pids+=($!)
  for _ in $(seq 600); do
    if grep -q "^kvwire-sharer ready" "$out/$name.out" 2>/dev/null; then
      grep -m1 "^kvwire-sharer ready" "$out/$name.out"
      return 0
    fi
    sleep 0.2
  done
  echo "netns_link: $name did not start; see $out/$name.log" >&2
  tail -n 20 "$out/$name.log" >&2
  return 1
}
start_sharer sharer "$model" "0.0.0.0:50051" >/dev/null
echo "netns_link: kvwire-sharer in $ns_s on $addr_s:50051"

results=$out/runs.jsonl
: >"$results"

# run_load NAME LINK SPEC TOKENS REQUESTS NS TARGET [extra kvwire-load flags]
run_load() {
  local name=$1 link=$2 spec=$3 tokens=$4 n=$5 ns=$6 target=$7
  shift 7
  local before after count_if=${COUNT_IF:-$if_s}
  before=$(counters "$ns_s" "$count_if")
  ip netns exec "$ns" "$LOAD" --target="$target" --netns="$ns_s" --allow_insecure \
    --rpc=share --spec="$spec" --prompt_tokens="$tokens" --concurrency="$concurrency" \
    --requests="$n" --duration_seconds=600 --warmup_seconds=0 --deadline_seconds=300 \
    --max_total_seconds=900 --plots=false --progress=false \
    --out_dir="$out/runs/$name" "$@" >"$out/runs-$name.txt" 2>&1 || {
      echo "netns_link: kvwire-load failed for $name:" >&2
      tail -n 20 "$out/runs-$name.txt" >&2
      return 1
    }
  after=$(counters "$ns_s" "$count_if")
  python3 - "$out/runs/$name/report.json" "$name" "$link" "$spec" "$before" "$after" "$netem" >>"$results" <<'EOF'
import json, sys
path, name, link, spec, before, after, netem = sys.argv[1:]
r = json.load(open(path))
b = [int(x) for x in before.split()]
a = [int(x) for x in after.split()]
p = r["points"][0]
s = p["all"]
print(json.dumps({
    "name": name, "link": link, "spec": r["scenarios"][0]["spec"],
    "delay_applied": link == "unshaped" or netem == "1",
    "prompt_tokens": p["scenarios"][0]["prompt_tokens"],
    "requests": s["requests"], "ok": s["ok"], "errors": s["errors_by_status"],
    "payload_bytes": s["payload_bytes"], "wire_bytes": r["totals_including_warmup"]["wire_bytes"],
    "link_tx_bytes": a[0] - b[0], "link_rx_bytes": a[1] - b[1],
    "link_tx_packets": a[2] - b[2], "link_rx_packets": a[3] - b[3],
    "latency_p50_s": s["latency_seconds"]["p50"], "latency_p99_s": s["latency_seconds"]["p99"],
    "ttfb_p50_s": s["ttft_seconds"]["p50"], "stream_p50_s": s["stream_seconds"]["p50"],
    "throughput_rps": s["throughput_rps"],
    "stream_payload_MBps": s["stream_payload_bytes_per_second_p50"] / 1e6,
    "compression_ratio": s["compression_ratio"],
}))
EOF
}

spec_flag() {  # "int4@0.5" -> a YAML spec for --spec
  case "$1" in
    *@*) echo "{scheme: ${1%@*}, selection: {mode: knorm_topk, proportion: ${1#*@}}}" ;;
    *) echo "$1" ;;
  esac
}

IFS=, read -r -a link_list <<<"$links"
IFS=, read -r -a spec_list <<<"$specs"
for link in "${link_list[@]}"; do
  applied=$(shape "$link")
  echo "netns_link: link $link: ${applied:-no qdisc}"
  for spec in "${spec_list[@]}"; do
    name="${link//[:.%]/_}-${spec//[@.]/_}"
    run_load "$name" "$link" "$(spec_flag "$spec")" "$prompt_tokens" "$requests" \
      "$ns_r" "$addr_s:50051"
  done
done
shape unshaped >/dev/null

# ------------------------------------------------------------- transport
transport_json=$out/transport.json
echo '[]' >"$transport_json"
if ((transport)); then
  command -v iperf3 >/dev/null || { echo "netns_link: iperf3 not installed (apt-get install iperf3)" >&2; exit 1; }
  # A model with a large KV per token (16 KiB at 16 bits: 4 layers x K,V x
  # 8 heads x 128 dims). A shared KNORM selection of 99.9% of the tokens
  # makes the sharer hold every layer before sending any, so the stream
  # (first block -> trailer) runs at transport speed, not prefill speed;
  # the report's stream_payload rate is payload bytes / that time.
  big=$out/model-transport
  "$MKCKPT" --out="$big" --arch=qwen2 --layers=4 --hidden=64 --heads=8 \
    --kv_heads=8 --head_dim=128 --intermediate=128 --vocab=512 --dtype=bf16 \
    --max_position=32768 --seed=2 >/dev/null
  start_sharer sharer-transport "$big" "0.0.0.0:50061" >/dev/null
  spec="{scheme: bf16, chunk_size_bytes: 4194304, selection: {mode: knorm_topk, proportion: 0.999, shared_across_layers: true}}"
  ip netns exec "$ns_s" iperf3 -s -p 5201 -D --pidfile "$out/iperf3.pid" >/dev/null 2>&1
  sleep 0.5
  for path in loopback veth; do
    if [[ $path == loopback ]]; then
      ns=$ns_s; target=127.0.0.1; count_if=lo
    else
      ns=$ns_r; target=$addr_s; count_if=$if_s
    fi
    # iperf3 -R: the server (the sharer's side) sends, as the sharer does.
    ip netns exec "$ns" iperf3 -c "$target" -p 5201 -R -t "$iperf_seconds" -J >"$out/iperf3-$path.json"
    COUNT_IF=$count_if run_load "transport-$path" "$path" "$spec" "$transport_tokens" \
      "$transport_requests" "$ns" "$target:50061"
    python3 - "$out/iperf3-$path.json" "$path" "$transport_json" "$results" <<'EOF'
import json, sys
iperf, path, out, runs = sys.argv[1:]
bps = json.load(open(iperf))["end"]["sum_received"]["bits_per_second"]
run = [json.loads(l) for l in open(runs) if json.loads(l)["name"] == f"transport-{path}"][-1]
rows = json.load(open(out))
iperf_MBps = bps / 8 / 1e6
rows.append({"path": path, "iperf3_MBps": iperf_MBps,
             "kvwire_stream_payload_MBps": run["stream_payload_MBps"],
             "ratio": run["stream_payload_MBps"] / iperf_MBps if iperf_MBps else 0,
             "payload_bytes_per_request": run["payload_bytes"] / max(1, run["ok"]),
             "stream_p50_s": run["stream_p50_s"], "latency_p50_s": run["latency_p50_s"],
             "prompt_tokens": run["prompt_tokens"]})
json.dump(rows, open(out, "w"), indent=2)
EOF
  done
  kill "$(cat "$out/iperf3.pid")" 2>/dev/null || true
fi

# ---------------------------------------------------------------- report
python3 - "$results" "$transport_json" "$out/summary.md" "$netem" "$ci" <<'EOF'
import json, sys
runs_path, transport_path, summary_path, netem, ci = sys.argv[1:]
runs = [json.loads(l) for l in open(runs_path)]
transport = json.load(open(transport_path))
lines = []
lines.append("| link | spec | tokens | payload B/req | gRPC wire B/req | link B/req (sharer tx) | link/wire | TTFB p50 ms | latency p50 ms | p99 ms | req/s |")
lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
for r in runs:
    if r["name"].startswith("transport-"):
        continue
    ok = max(1, r["ok"])
    link = r["link"] + ("" if r["delay_applied"] else " (rate only)")
    lines.append(
        f"| {link} | {r['spec']} | {r['prompt_tokens']} | "
        f"{r['payload_bytes']/ok:,.0f} | {r['wire_bytes']/ok:,.0f} | {r['link_tx_bytes']/ok:,.0f} | "
        f"{r['link_tx_bytes']/max(1,r['wire_bytes']):.3f} | {r['ttfb_p50_s']*1e3:.1f} | "
        f"{r['latency_p50_s']*1e3:.1f} | {r['latency_p99_s']*1e3:.1f} | {r['throughput_rps']:.2f} |")
if transport:
    lines.append("")
    lines.append("| path | prompt tokens | payload MiB/req | kvwire stream payload MB/s | iperf3 MB/s | ratio |")
    lines.append("|---|---|---|---|---|---|")
    for t in transport:
        lines.append(f"| {t['path']} | {t['prompt_tokens']} | {t['payload_bytes_per_request']/2**20:.1f} | "
                     f"{t['kvwire_stream_payload_MBps']:.1f} | {t['iperf3_MBps']:.1f} | {t['ratio']:.2f} |")
text = "\n".join(lines) + "\n"
open(summary_path, "w").write(text)
print(text)

if ci == "1":
    passed = failed = 0
    def check(cond, msg):
        global passed, failed
        if cond:
            passed += 1
        else:
            failed += 1
            print("FAIL:", msg)
    for r in runs:
        check(r["ok"] == r["requests"] and r["ok"] > 0, f"{r['name']}: {r['errors']}")
        if r["name"] == "transport-loopback":
            continue  # lo counts both directions and every other process.
        # True bytes on the wire: at least the gRPC bytes, plus TCP/IP and
        # HTTP/2 framing (a few %), never wildly more.
        check(r["link_tx_bytes"] >= r["wire_bytes"], f"{r['name']}: link {r['link_tx_bytes']} < wire {r['wire_bytes']}")
        check(r["link_tx_bytes"] <= 1.25 * r["wire_bytes"] + 100000,
              f"{r['name']}: link {r['link_tx_bytes']} >> wire {r['wire_bytes']}")
        check(r["wire_bytes"] >= r["payload_bytes"], f"{r['name']}: wire < payload")
    shaped = [r for r in runs if r["link"].startswith("100mbit")]
    for r in shaped:
        # 100 Mbit/s = 12.5 MB/s: the stream cannot beat the shaper.
        check(r["stream_payload_MBps"] < 12.5 * 1.15,
              f"{r['name']}: {r['stream_payload_MBps']:.1f} MB/s through a 100 Mbit/s link")
    for t in transport:
        check(t["iperf3_MBps"] > 0 and t["kvwire_stream_payload_MBps"] > 0, f"transport {t['path']}: {t}")
        # The hold-every-layer spec makes the stream a pure transfer: it
        # must take far less than the whole call (the prefill).
        check(t["stream_p50_s"] < 0.5 * t["latency_p50_s"],
              f"transport {t['path']}: the stream overlapped the prefill: {t}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
EOF
echo "netns_link: results in $out (summary.md, runs.jsonl, transport.json, runs/*/report.json)"
