#!/usr/bin/env python3
"""Helpers of scripts/gpu_e2e_bench.sh (standard library only).

  prompt-tokens ANSWER_JSON
      Prints transfer.prompt_tokens of one `kvwire-cli ask --json` answer
      (L-1 for an L-token prompt); fails if the answer fell back or is not C2C.

  report --cpp-dir DIR [--python JSON] ...
      Reads DIR/run-*.json (`kvwire-cli ask --json` answers) and
      DIR/run-*.wall_us (client wall time of each kvwire-cli process), and
      the JSON of tools/perf/c2c_python_reference.py, and writes one table of
      per-stage medians, C++ vs Python, with the C++/Python ratio, plus a JSON
      with everything.
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def cmd_prompt_tokens(a):
    r = load(a.answer)
    if r.get("fell_back"):
        sys.exit(f"the answer fell back: {r.get('fallback_reason')}")
    mode = r.get("mode", "")
    if mode not in ("ANSWER_MODE_C2C", "ANSWER_MODE_UNSPECIFIED", 1, 0):
        sys.exit(f"the answer's mode is {mode}, not C2C")
    n = int(r.get("transfer", {}).get("prompt_tokens", 0))
    if n <= 0:
        sys.exit("no transfer.prompt_tokens in the answer")
    print(n)


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values),
            "max": max(values), "n": len(values)}


# C++ StageTimings field (seconds) -> row; Python stage -> row.
ROWS = [
    # key, label, C++ field (or callable on an answer), Python key
    ("total", "C2C answer, total", "total_seconds", "answer"),
    ("sharer_prefill", "sharer prefill (L-1 tokens)", "sharer_compute_seconds",
     "sharer_prefill"),
    ("encode", "  encode KV (C++ only)", "encode_seconds", None),
    ("transfer", "  transfer over gRPC (C++ only)", "transfer_seconds", None),
    ("decode_kv", "  decode KV blocks (C++ only)", "decode_seconds", None),
    ("receiver_prefill", "receiver prefill (L-1 tokens)",
     "receiver_prefill_seconds", "receiver_prefill"),
    ("fuse", "fusion, 28 layers", "fuse_seconds", "fuse"),
    ("first_token", "first token (Python only)", None, "first_token"),
    ("ttft", "time to first token", "time_to_first_token_seconds",
     "time_to_first_token"),
    ("generation", "decode, tokens 2..N", "generation_seconds", "decode"),
    ("ms_per_token", "ms per decode token", "ms_per_token", "decode_ms_per_token"),
    ("client_wall", "kvwire-cli process, wall (C++ only)", "client_wall", None),
    ("hf_generate", "receiver alone, HF generate (Python only)", None,
     "hf_generate_receiver_alone"),
]


def cpp_runs(d):
    runs = []
    files = sorted(glob.glob(os.path.join(d, "run-*.json")),
                   key=lambda p: int(re.findall(r"run-(\d+)", p)[-1]))
    for path in files:
        r = load(path)
        t = {k: float(v) * 1e3 for k, v in r.get("timings", {}).items()}
        n = len(r.get("token_ids", []))
        t["ms_per_token"] = (t.get("generation_seconds", 0.0) / (n - 1)
                             if n > 1 else None)
        wall = path[:-len(".json")] + ".wall_us"
        t["client_wall"] = (int(open(wall).read()) / 1e3
                            if os.path.exists(wall) else None)
        tr = r.get("transfer", {})
        runs.append({"timings_ms": t, "tokens": n,
                     "fell_back": bool(r.get("fell_back")),
                     "mode": r.get("mode"),
                     "prompt_tokens": int(tr.get("prompt_tokens", 0)),
                     "wire_bytes": int(tr.get("wire_bytes", 0)),
                     "tokens_sent": int(tr.get("tokens_sent", 0)),
                     "layers_sent": int(tr.get("layers_sent", 0)),
                     "text": r.get("text", "")})
    return runs


def fmt(v, width=10):
    return f"{v:{width}.2f}" if isinstance(v, (int, float)) else f"{'-':>{width}}"


def cmd_report(a):
    runs = cpp_runs(a.cpp_dir)
    if not runs:
        sys.exit(f"no run-*.json in {a.cpp_dir}")
    py = load(a.python) if a.python else None
    out = {"cpp": {"runs": len(runs), "scheme": a.scheme,
                   "prompt_tokens": sorted({r["prompt_tokens"] for r in runs}),
                   "generated_tokens": sorted({r["tokens"] for r in runs}),
                   "any_fell_back": any(r["fell_back"] for r in runs),
                   "modes": sorted({str(r["mode"]) for r in runs}),
                   "wire_bytes": sorted({r["wire_bytes"] for r in runs}),
                   "tokens_sent": sorted({r["tokens_sent"] for r in runs}),
                   "layers_sent": sorted({r["layers_sent"] for r in runs}),
                   "first_answer_text": runs[0]["text"]},
           "rows": {},
           "cpp_runs_ms": [dict(r["timings_ms"], tokens=r["tokens"]) for r in runs]}
    if a.question:
        out["question"] = open(a.question).read().strip()
    if a.graph_log and os.path.exists(a.graph_log):
        out["receiver_graph_lines"] = [
            l.rstrip("\n") for l in open(a.graph_log, errors="replace")
            if "graph" in l.lower()][:20]
    if py:
        out["python"] = {k: py.get(k) for k in (
            "device", "torch", "cuda", "transformers", "attn_implementation",
            "prompt_tokens", "new_tokens", "prefill_logits", "runs", "warmup",
            "generated_tokens", "hf_generate_tokens", "tiny")}
    for key, label, cfield, pkey in ROWS:
        c = stats([r["timings_ms"].get(cfield) for r in runs]) if cfield else None
        p = None
        if py and pkey:
            p = py.get(pkey) if pkey in ("answer", "hf_generate_receiver_alone") \
                else py.get("stages", {}).get(pkey)
        row = {"label": label, "cpp_ms": c,
               "python_ms": ({k: p[k] for k in ("median", "min", "max")}
                             if p else None)}
        if c and p and p["median"] > 0:
            row["cpp_over_python"] = c["median"] / p["median"]
            row["speedup"] = p["median"] / c["median"] if c["median"] > 0 else None
        out["rows"][key] = row

    tot = out["rows"]["total"]
    lines = []
    dev = (py or {}).get("device", "?")
    lines.append(
        f"C2C answer, C++ services (--scheme={a.scheme}, loopback gRPC) vs Python "
        f"reference (HF transformers {(py or {}).get('transformers', '?')}, "
        f"torch {(py or {}).get('torch', '?')}, eager, bf16) on {dev}")
    lines.append(
        f"prompt_tokens (L-1) C++ {out['cpp']['prompt_tokens']}, Python "
        f"{(py or {}).get('prefill_tokens', '-')}; generated tokens C++ "
        f"{out['cpp']['generated_tokens']}, Python {(py or {}).get('generated_tokens', '-')}; "
        f"C++ {len(runs)} timed answers, Python {(py or {}).get('runs', '-')}; medians in ms")
    lines.append(f"{'stage':<44}{'C++':>10}{'C++ min':>10}{'Python':>10}"
                 f"{'Py min':>10}{'C++/Py':>9}{'speedup':>9}")
    for key, label, _, _ in ROWS:
        r = out["rows"][key]
        c, p = r["cpp_ms"], r["python_ms"]
        ratio = r.get("cpp_over_python")
        sp = r.get("speedup")
        lines.append(
            f"{label:<44}{fmt(c and c['median'])}{fmt(c and c['min'])}"
            f"{fmt(p and p['median'])}{fmt(p and p['min'])}"
            f"{(f'{ratio:9.3f}' if ratio is not None else f'{chr(45):>9}')}"
            f"{(f'{sp:8.1f}x' if sp is not None else f'{chr(45):>9}')}")
    lines.append("C++ stages overlap (the receiver prefills while sharer layers "
                 "arrive), so they do not sum to the total; C++ total = the "
                 "receiver's StageTimings.total_seconds (server side).")
    if py:
        lines.append("Python total = the whole answer synchronized only around it; "
                     "its stages come from separate runs synchronized per stage.")
    if tot.get("cpp_over_python") is not None:
        ok = tot["cpp_over_python"] <= 0.1
        out["target_met"] = ok
        lines.append(f"total: C++ / Python = {tot['cpp_over_python']:.3f} "
                     f"(target <= 0.100: {'MET' if ok else 'NOT MET'})")
    if out["cpp"]["any_fell_back"]:
        lines.append("WARNING: some C++ answers fell back to receiver-only")
    want_tokens = py.get("new_tokens") if py else None
    if want_tokens is not None and out["cpp"]["generated_tokens"] != [want_tokens]:
        lines.append("WARNING: C++ answers are not all exactly "
                     f"{want_tokens} tokens (EOS stop?)")
    if out.get("receiver_graph_lines"):
        lines.append("receiver log lines mentioning 'graph':")
        lines += ["  " + l for l in out["receiver_graph_lines"]]
    text = "\n".join(lines) + "\n"
    if a.table:
        with open(a.table, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prompt-tokens")
    p.add_argument("answer")
    p = sub.add_parser("report")
    p.add_argument("--cpp-dir", required=True)
    p.add_argument("--python")
    p.add_argument("--scheme", default="int4")
    p.add_argument("--question")
    p.add_argument("--graph-log")
    p.add_argument("--json")
    p.add_argument("--table")
    a = ap.parse_args()
    if a.cmd == "prompt-tokens":
        cmd_prompt_tokens(a)
    else:
        cmd_report(a)


if __name__ == "__main__":
    main()
