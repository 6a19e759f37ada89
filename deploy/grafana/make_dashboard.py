#!/usr/bin/env python3
"""Writes deploy/grafana/dashboards/kvwire.json, the provisioned kvwire
dashboard. Edit the panels here, run this script, commit both; CI checks
that the JSON is what this script writes and that every query evaluates
against a real Prometheus (load_tests/ops/).

Usage: python3 deploy/grafana/make_dashboard.py [--check]
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job"'
RI = "$__rate_interval"
# Physical interfaces only: loopback, veth pairs and container bridges carry
# the same bytes again (or none that leave the host).
NIC = 'device!~"lo|veth.*|docker.*|br-.*|cali.*|flannel.*|cni.*|virbr.*"'

_next_id = [1]


def _id():
    _next_id[0] += 1
    return _next_id[0] - 1


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend,
            "refId": ref, "range": True}


def timeseries(title, description, targets, unit, x, y, w=12, h=8,
               stack=False, decimals=None):
    defaults = {"unit": unit, "custom": {"fillOpacity": 10, "lineWidth": 1,
                                         "showPoints": "never",
                                         "stacking": {"mode": "normal" if stack else "none"}}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "id": _id(), "type": "timeseries", "title": title,
        "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["mean", "max", "lastNotNull"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(targets)],
    }


def stat(title, description, expr, unit, x, y, w=4, h=4, legend=""):
    return {
        "id": _id(), "type": "stat", "title": title,
        "description": description, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                      "values": False},
                    "colorMode": "value", "graphMode": "area",
                    "textMode": "auto"},
        "targets": [target(expr, legend, "A")],
    }


def row(title, y):
    return {"id": _id(), "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def q(quantile, metric, by):
    return (f"histogram_quantile({quantile}, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{SEL}}}[{RI}])))")


def build():
    _next_id[0] = 1
    p = []
    y = 0
    p.append(row("Overview", y)); y += 1
    p.append(stat("Targets up", "Scraped kvwire processes that answer (up == 1) out of all targets.",
                  f'sum(up{{{SEL}}}) / count(up{{{SEL}}})', "percentunit", 0, y))
    p.append(stat("Requests/s", "All kvwire RPCs (Share, Answer, AnswerStream, GetInfo).",
                  f"sum(rate(kvwire_requests_total{{{SEL}}}[{RI}]))", "reqps", 4, y))
    p.append(stat("Error ratio", "Non-OK calls / all calls.",
                  f'sum(rate(kvwire_requests_total{{{SEL}, code!="OK"}}[{RI}])) / sum(rate(kvwire_requests_total{{{SEL}}}[{RI}]))',
                  "percentunit", 8, y))
    p.append(stat("Wire bandwidth (sent)", "KV bytes/s the sharers put on the wire (serialized KvChunks + gRPC framing).",
                  f'sum(rate(kvwire_kv_wire_bytes_total{{{SEL}, role="sharer"}}[{RI}]))', "Bps", 12, y))
    p.append(stat("Compression ratio", "16-bit KV bytes / serialized bytes, byte-weighted, all schemes.",
                  f'sum(rate(kvwire_kv_raw_bytes_total{{{SEL}, role="sharer"}}[{RI}])) / sum(rate(kvwire_kv_serialized_bytes_total{{{SEL}, role="sharer"}}[{RI}]))',
                  "none", 16, y))
    p.append(stat("TTFT p99", "Receiver time to first token, 99th percentile.",
                  q(0.99, "kvwire_time_to_first_token_seconds", "job"), "s", 20, y))
    y += 4

    p.append(row("Bandwidth and bytes", y)); y += 1
    p.append(timeseries(
        "Wire bandwidth by scheme",
        "rate(kvwire_kv_wire_bytes_total): serialized KvChunks plus 5-byte gRPC message prefixes, per scheme. role=sharer is what was sent, role=receiver what arrived.",
        [(f'sum by (role, scheme) (rate(kvwire_kv_wire_bytes_total{{{SEL}, scheme=~"$scheme"}}[{RI}]))', "{{role}} {{scheme}}")],
        "Bps", 0, y, stack=False))
    p.append(timeseries(
        "Raw vs payload vs wire",
        "What the same KV would cost at 16 bits (raw), the encoded values alone (payload), and everything on the wire.",
        [(f'sum(rate(kvwire_kv_raw_bytes_total{{{SEL}, role="sharer", scheme=~"$scheme"}}[{RI}]))', "raw 16-bit"),
         (f'sum(rate(kvwire_kv_payload_bytes_total{{{SEL}, role="sharer", scheme=~"$scheme"}}[{RI}]))', "payload"),
         (f'sum(rate(kvwire_kv_wire_bytes_total{{{SEL}, role="sharer", scheme=~"$scheme"}}[{RI}]))', "wire")],
        "Bps", 12, y))
    y += 8
    p.append(timeseries(
        "Bytes per request by scheme",
        "Wire bytes per transfer: the size of one KV cache on the wire.",
        [(f'sum by (role, scheme) (rate(kvwire_kv_wire_bytes_total{{{SEL}, scheme=~"$scheme"}}[{RI}])) / sum by (role, scheme) (rate(kvwire_transfers_total{{{SEL}, scheme=~"$scheme"}}[{RI}]))',
          "{{role}} {{scheme}}")],
        "bytes", 0, y, w=8))
    p.append(timeseries(
        "Compression ratio by scheme",
        "16-bit KV bytes / serialized bytes (byte-weighted), and the median of the per-transfer ratio histogram.",
        [(f'sum by (scheme) (rate(kvwire_kv_raw_bytes_total{{{SEL}, role="sharer", scheme=~"$scheme"}}[{RI}])) / sum by (scheme) (rate(kvwire_kv_serialized_bytes_total{{{SEL}, role="sharer", scheme=~"$scheme"}}[{RI}]))',
          "{{scheme}} (bytes)"),
         (f'histogram_quantile(0.5, sum by (scheme, le) (rate(kvwire_kv_compression_ratio_bucket{{{SEL}, role="sharer", scheme=~"$scheme"}}[{RI}])))',
          "{{scheme}} (median transfer)")],
        "none", 8, y, w=8, decimals=2))
    p.append(timeseries(
        "Tokens selected",
        "Fraction of prompt tokens whose KV was sent (token selection), and prompt tokens/s.",
        [(f"sum by (role) (rate(kvwire_kv_tokens_selected_total{{{SEL}}}[{RI}])) / sum by (role) (rate(kvwire_prompt_tokens_total{{{SEL}}}[{RI}]))",
          "{{role}} selected fraction"),
         (f"histogram_quantile(0.5, sum by (role, le) (rate(kvwire_kv_tokens_selected_ratio_bucket{{{SEL}}}[{RI}])))",
          "{{role}} median per transfer")],
        "percentunit", 16, y, w=8))
    y += 8

    p.append(row("Latency", y)); y += 1
    p.append(timeseries(
        "Stage latency p50 / p99",
        "kvwire_stage_duration_seconds: sharer_compute, encode, first_layer, stream (sharer); transfer, decode, fuse, receiver_prefill, generation (receiver).",
        [(q(0.5, "kvwire_stage_duration_seconds", "role, stage"), "p50 {{role}} {{stage}}"),
         (q(0.99, "kvwire_stage_duration_seconds", "role, stage"), "p99 {{role}} {{stage}}")],
        "s", 0, y))
    p.append(timeseries(
        "Time to first token",
        "Receiver TTFT percentiles (request start to first generated token).",
        [(q(0.5, "kvwire_time_to_first_token_seconds", "job"), "p50"),
         (q(0.9, "kvwire_time_to_first_token_seconds", "job"), "p90"),
         (q(0.99, "kvwire_time_to_first_token_seconds", "job"), "p99")],
        "s", 12, y))
    y += 8
    p.append(timeseries(
        "Request latency by method",
        "kvwire_request_duration_seconds percentiles per RPC method.",
        [(q(0.5, "kvwire_request_duration_seconds", "role, method"), "p50 {{method}}"),
         (q(0.99, "kvwire_request_duration_seconds", "role, method"), "p99 {{method}}")],
        "s", 0, y))
    p.append(timeseries(
        "Time per output token",
        "Seconds per generated token after the first (kvwire_time_per_output_token_seconds; the first token is in the time to first token), per role: p50, p90, p99.",
        [(q(0.5, "kvwire_time_per_output_token_seconds", "role"), "p50 {{role}}"),
         (q(0.9, "kvwire_time_per_output_token_seconds", "role"), "p90 {{role}}"),
         (q(0.99, "kvwire_time_per_output_token_seconds", "role"), "p99 {{role}}")],
        "s", 12, y, w=6))
    p.append(timeseries(
        "Generated tokens/s",
        "Tokens generated per second (receiver answers; sharer: text-to-text background).",
        [(f"sum by (role) (rate(kvwire_generated_tokens_total{{{SEL}}}[{RI}]))", "{{role}}")],
        "none", 18, y, w=6))
    y += 8

    p.append(row("Requests, errors and capacity", y)); y += 1
    p.append(timeseries(
        "Request rate by status",
        "Calls per second by role, method and status code.",
        [(f"sum by (role, method, code) (rate(kvwire_requests_total{{{SEL}}}[{RI}]))", "{{role}} {{method}} {{code}}")],
        "reqps", 0, y, w=8))
    p.append(timeseries(
        "Error rate",
        "Non-OK calls per second by code; the alert KvwireHighErrorRate watches the server-side codes.",
        [(f'sum by (role, method, code) (rate(kvwire_requests_total{{{SEL}, code!="OK"}}[{RI}]))', "{{role}} {{method}} {{code}}")],
        "reqps", 8, y, w=8))
    p.append(timeseries(
        "Fallbacks",
        "Answers given receiver-only because the sharer was slow, down or corrupt (by reason), and their share of answers.",
        [(f"sum by (reason) (rate(kvwire_fallbacks_total{{{SEL}}}[{RI}]))", "{{reason}}"),
         (f'sum(rate(kvwire_fallbacks_total{{{SEL}}}[{RI}])) / sum(rate(kvwire_requests_total{{{SEL}, role="receiver", method=~"Answer|AnswerStream"}}[{RI}]))',
          "fraction of answers")],
        "short", 16, y, w=8))
    y += 8
    p.append(timeseries(
        "Queue depth and workers",
        "Requests waiting for a model worker, busy workers, and the configured limits.",
        [(f"sum by (role) (kvwire_queue_depth{{{SEL}}})", "{{role}} queued"),
         (f"sum by (role) (kvwire_workers_busy{{{SEL}}})", "{{role}} busy workers"),
         (f"sum by (role) (kvwire_queue_capacity{{{SEL}}})", "{{role}} queue capacity"),
         (f"sum by (role) (kvwire_workers{{{SEL}}})", "{{role}} workers")],
        "short", 0, y, w=8))
    p.append(timeseries(
        "Queue wait p99 and rejections",
        "Time spent waiting for a worker; calls refused with RESOURCE_EXHAUSTED per second.",
        [(q(0.99, "kvwire_queue_wait_seconds", "role"), "p99 wait {{role}}"),
         (f"sum by (role) (rate(kvwire_queue_rejected_total{{{SEL}}}[{RI}]))", "rejected/s {{role}}")],
        "s", 8, y, w=8))
    p.append(timeseries(
        "In flight",
        "Calls in progress by role and method.",
        [(f"sum by (role, method) (kvwire_requests_in_flight{{{SEL}}})", "{{role}} {{method}}")],
        "short", 16, y, w=8))
    y += 8
    p.append(timeseries(
        "Model batch size",
        "Mean requests per computation of the batched prefill, fusion and decode across requests.",
        [(f"sum by (role, stage) (rate(kvwire_model_batch_size_sum{{{SEL}}}[{RI}])) / "
          f"sum by (role, stage) (rate(kvwire_model_batch_size_count{{{SEL}}}[{RI}]))",
          "{{role}} {{stage}}")],
        "short", 0, y, w=8))
    p.append(timeseries(
        "Wait for the model p99",
        "How long a request's step waited for the model's next batch, by stage.",
        [(q(0.99, "kvwire_model_batch_wait_seconds", "role, stage"), "p99 {{role}} {{stage}}")],
        "s", 8, y, w=8))
    p.append(timeseries(
        "KV slot pool",
        "Receiver KV cache slots held by requests, and the pool's size (--decode_batch_slots).",
        [(f"sum by (role) (kvwire_kv_slots_in_use{{{SEL}}})", "{{role}} in use"),
         (f"sum by (role) (kvwire_kv_slots{{{SEL}}})", "{{role}} slots")],
        "short", 16, y, w=8))
    y += 8

    # Exporters beside kvwire: NVIDIA dcgm-exporter (DCGM_FI_*) and
    # node_exporter (node_*), scraped from deploy/prometheus/targets/ (or the
    # cluster's own exporters). Their series carry the exporters' labels, not
    # kvwire's job, so they are grouped by host.
    p.append(row("GPU (dcgm-exporter)", y)); y += 1
    p.append(timeseries(
        "GPU utilization",
        "DCGM_FI_DEV_GPU_UTIL: percent of time a kernel ran, per GPU.",
        [("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} gpu {{gpu}}")],
        "percent", 0, y, w=8))
    p.append(timeseries(
        "GPU memory used",
        "DCGM_FI_DEV_FB_USED: frame buffer in use (weights, KV caches, decode slots), per GPU.",
        [("sum by (Hostname, gpu) (DCGM_FI_DEV_FB_USED) * 1024 * 1024", "{{Hostname}} gpu {{gpu}}")],
        "bytes", 8, y, w=8))
    p.append(timeseries(
        "GPU memory bandwidth (DRAM active)",
        "DCGM_FI_PROF_DRAM_ACTIVE: fraction of cycles the device memory interface was busy (decode is bandwidth-bound). A profiling field: dcgm-exporter must collect it (default counters file of recent versions).",
        [("avg by (Hostname, gpu) (DCGM_FI_PROF_DRAM_ACTIVE)", "{{Hostname}} gpu {{gpu}}")],
        "percentunit", 16, y, w=8))
    y += 8

    p.append(row("Network: NIC bytes beside KV wire bytes", y)); y += 1
    p.append(timeseries(
        "NIC bytes/s vs KV wire bytes/s",
        "node_exporter's node_network_{transmit,receive}_bytes_total per host (physical interfaces; loopback and container bridges left out) beside kvwire_kv_wire_bytes_total. The gap is HTTP/2 and TLS framing, TCP/IP headers and everything else the host sends.",
        [(f'sum by (instance) (rate(node_network_transmit_bytes_total{{{NIC}}}[{RI}]))', "NIC tx {{instance}}"),
         (f'sum by (instance) (rate(node_network_receive_bytes_total{{{NIC}}}[{RI}]))', "NIC rx {{instance}}"),
         (f"sum by (role) (rate(kvwire_kv_wire_bytes_total{{{SEL}}}[{RI}]))", "kvwire wire {{role}}")],
        "Bps", 0, y, w=16))
    p.append(timeseries(
        "KV share of NIC transmit",
        "Wire bytes the sharers sent / bytes all scraped hosts transmitted: how much of the network the KV cache takes.",
        [(f'sum(rate(kvwire_kv_wire_bytes_total{{{SEL}, role="sharer"}}[{RI}])) / sum(rate(node_network_transmit_bytes_total{{{NIC}}}[{RI}]))',
          "KV / NIC tx")],
        "percentunit", 16, y, w=8))
    y += 8

    p.append(row("Processes", y)); y += 1
    p.append(timeseries(
        "CPU",
        "process_cpu_seconds_total: CPU cores each kvwire process uses (user + system).",
        [(f"sum by (job, instance) (rate(process_cpu_seconds_total{{{SEL}}}[{RI}]))", "{{job}} {{instance}}")],
        "none", 0, y, w=8))
    p.append(timeseries(
        "Resident memory",
        "process_resident_memory_bytes per kvwire process (host memory; GPU memory is in the GPU row).",
        [(f"sum by (job, instance) (process_resident_memory_bytes{{{SEL}}})", "{{job}} {{instance}}")],
        "bytes", 8, y, w=8))
    p.append(timeseries(
        "Open file descriptors",
        "process_open_fds / process_max_fds per kvwire process (sockets included).",
        [(f"sum by (job, instance) (process_open_fds{{{SEL}}}) / sum by (job, instance) (process_max_fds{{{SEL}}})",
          "{{job}} {{instance}}")],
        "percentunit", 16, y, w=8))
    y += 8

    return {
        "uid": "kvwire-overview",
        "title": "kvwire: KV transfer",
        "description": "Bandwidth, compression, latency and capacity of kvwire sharers and receivers. Generated by deploy/grafana/make_dashboard.py.",
        "tags": ["kvwire"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "current": {"selected": True, "text": "Prometheus", "value": "kvwire-prometheus"},
             "hide": 0, "refresh": 1, "options": []},
            {"name": "job", "label": "Job", "type": "query", "datasource": DS,
             "query": {"query": "label_values(kvwire_build_info, job)", "refId": "job"},
             "definition": "label_values(kvwire_build_info, job)",
             "includeAll": True, "multi": True, "allValue": ".*",
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
             "refresh": 2, "sort": 1, "hide": 0, "options": []},
            {"name": "scheme", "label": "Scheme", "type": "query", "datasource": DS,
             "query": {"query": "label_values(kvwire_transfers_total, scheme)", "refId": "scheme"},
             "definition": "label_values(kvwire_transfers_total, scheme)",
             "includeAll": True, "multi": True, "allValue": ".*",
             "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
             "refresh": 2, "sort": 1, "hide": 0, "options": []},
        ]},
        "annotations": {"list": []},
        "panels": p,
    }


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "dashboards", "kvwire.json")
    text = json.dumps(build(), indent=2, sort_keys=False) + "\n"
    if "--check" in sys.argv:
        with open(path) as f:
            if f.read() != text:
                print(f"{path} is stale: run python3 deploy/grafana/make_dashboard.py")
                return 1
        print(f"{path} is up to date")
        return 0
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
