#!/usr/bin/env python3
"""Where the CPU goes while kvwire streams a cache, against iperf3.

Reads `perf script -F comm,pid,tid,time,ip,sym,dso` of a system-wide
`perf record -a` around `scripts/netns_link.sh --transport` and the run's
output folder. The stream phases are the bursts of the transport load
generator (kvwire-load waits idle while the sharer prefills, then receives
the whole cache); for each burst it counts every CPU's samples by process
and by library (the sharer's serialization, gRPC, the kernel, the client's
parse, idle), and compares CPU-seconds per payload GB with iperf3's over its
own run. Usage:
  perf record -a -F 4999 -o perf.data -- scripts/netns_link.sh --transport ...
  perf script -i perf.data -F comm,pid,tid,time,ip,sym,dso > perf.txt
  tools/perf/transport_cpu_profile.py perf.txt RESULTS_DIR --hz 4999 --cpus 2
"""
import argparse
import collections
import json
import os
import re

LINE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+([\d.]+):\s+[0-9a-f]+\s+(.*)\((.*)\)\s*$")


def category(dso, sym):
    base = os.path.basename(dso)
    if "kallsyms" in dso:
        return "kernel"
    for key, name in (("libprotobuf", "protobuf"), ("libgrpc", "grpc"),
                      ("libgpr", "grpc"), ("libabsl", "absl"),
                      ("libtorch", "torch"), ("libc10", "torch"),
                      ("libgomp", "torch"), ("libc.so", "libc (memcpy etc.)"),
                      ("libcrc", "crc")):
        if key in base:
            return name
    if "kvwire" in base or "memmove" in sym or "memcpy" in sym:
        return "kvwire code"
    return base or "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("perf_txt")
    ap.add_argument("results")
    ap.add_argument("--hz", type=float, default=4999)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--gap", type=float, default=0.05,
                    help="seconds without load samples that end a burst")
    args = ap.parse_args()

    samples = []  # (time, comm, pid, dso, sym)
    for line in open(args.perf_txt, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, _, t, sym, dso = m.groups()
        samples.append((float(t), comm.strip(), int(pid), dso, sym.strip()))
    samples.sort()
    # The transport sharer: the kvwire-sharer process started last.
    # Processes by their main thread's name; their other threads (gRPC
    # pollers, executors) count by process id.
    sharers = collections.OrderedDict()
    load_pids = set()
    for t, comm, pid, dso, sym in samples:
        if comm == "kvwire-sharer":
            sharers.setdefault(pid, t)
        elif comm == "kvwire-load":
            load_pids.add(pid)
    loads = collections.defaultdict(list)
    for t, comm, pid, dso, sym in samples:
        if pid in load_pids:
            loads[pid].append(t)
    transport_sharer = list(sharers)[-1] if sharers else None
    # Bursts of the load generators' samples (excluding start-up: the first
    # 0.5 s of each process).
    bursts = []
    for pid, ts in loads.items():
        start = ts[0] + 0.5
        cur = []
        for t in ts:
            if t < start:
                continue
            if cur and t - cur[-1] > args.gap:
                bursts.append((cur[0], cur[-1], pid, len(cur)))
                cur = []
            cur.append(t)
        if cur:
            bursts.append((cur[0], cur[-1], pid, len(cur)))
    # Stream bursts: the busiest per load process (one per call).
    transport = json.load(open(os.path.join(args.results, "transport.json")))
    bytes_per_call = transport[0]["payload_bytes_per_request"]
    streams = sorted(b for b in bursts if b[3] >= 20)
    report = {"hz": args.hz, "cpus": args.cpus, "streams": []}
    for b0, b1, pid, n in streams:
        lo, hi = b0 - 0.002, b1 + 0.002
        counts = collections.Counter()
        symbols = collections.Counter()
        for t, comm, spid, dso, sym in samples:
            if t < lo or t > hi:
                continue
            who = ("sharer" if spid == transport_sharer else
                   "client" if spid == pid else
                   "idle" if comm == "swapper" else "other")
            counts[(who, category(dso, sym) if who != "idle" else "")] += 1
            if who in ("sharer", "client"):
                symbols[f"{who}:{'kernel' if 'kallsyms' in dso else 'user'}:"
                        f"{sym}"] += 1
        total = sum(counts.values())
        seconds = hi - lo
        report["streams"].append({
            "window_s": seconds,
            "samples": total,
            "cpu_busy_fraction": 1 - sum(v for (w, _), v in counts.items()
                                         if w == "idle") / max(1, total),
            "by_process_and_library": {f"{w}:{c}": round(v / max(1, total), 3)
                                       for (w, c), v in counts.most_common()},
            "top_symbols": {k: round(v / max(1, total), 3)
                            for k, v in symbols.most_common(15)},
            "cpu_seconds_per_GB": (total - sum(
                v for (w, _), v in counts.items() if w == "idle")) / args.hz
                                  / (bytes_per_call / 1e9),
        })
    # iperf3: its processes' samples over their runs, per GB moved.
    for path in ("loopback", "veth"):
        f = os.path.join(args.results, f"iperf3-{path}.json")
        if not os.path.exists(f):
            continue
        end = json.load(open(f))["end"]
        report[f"iperf3_{path}"] = {
            "MBps": end["sum_received"]["bits_per_second"] / 8e6,
            "cpu_percent_sender": end["cpu_utilization_percent"]["remote_total"],
            "cpu_percent_receiver": end["cpu_utilization_percent"]["host_total"],
            "cpu_seconds_per_GB": (end["cpu_utilization_percent"]["remote_total"]
                                   + end["cpu_utilization_percent"]["host_total"])
                                  / 100 * end["sum_received"]["seconds"]
                                  / (end["sum_received"]["bytes"] / 1e9),
        }
    report["transport"] = transport
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
