"""Helpers shared by the operational tests in load_tests/ops/: starting
kvwire services and Prometheus as child processes on loopback, querying
Prometheus' HTTP API, and collecting every PromQL expression that the
rules and the Grafana dashboard use. Standard library + PyYAML only.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

SKIP = 77  # ctest SKIP_RETURN_CODE.


def log(*args):
    print(*args, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A child process whose stdout is read for a ready line; killed (and
    its process group) on stop() or when the test exits."""

    def __init__(self, argv, log_path, ready_prefix=None, timeout=120,
                 env=None):
        self.argv = argv
        self.log_path = log_path
        self.err = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                     stderr=self.err, env=env,
                                     start_new_session=True)
        self.fields = {}
        if ready_prefix:
            deadline = time.time() + timeout
            while time.time() < deadline:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(
                        f"{argv[0]} exited before '{ready_prefix}':\n"
                        + self.stderr_tail())
                line = line.decode(errors="replace").strip()
                if line.startswith(ready_prefix):
                    for word in line.split():
                        if "=" in word:
                            k, v = word.split("=", 1)
                            self.fields[k] = v
                    break
            else:
                self.stop()
                raise RuntimeError(f"{argv[0]}: no ready line in {timeout}s")

    def stderr_tail(self, n=4000):
        if not self.err.closed:
            self.err.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")[-n:]

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.err.close()


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class Prometheus:
    """A real Prometheus server (Debian's `prometheus`) on a loopback port
    with a temporary data directory."""

    def __init__(self, config_path, data_dir, log_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.child = Child(
            ["prometheus", f"--config.file={config_path}",
             f"--storage.tsdb.path={data_dir}",
             f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            log_path)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                http_get(self.url + "/-/ready", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if not self.child.alive():
                    raise RuntimeError("prometheus exited:\n"
                                       + self.child.stderr_tail())
                time.sleep(0.2)
        raise RuntimeError("prometheus not ready in 60s")

    def api(self, path, **params):
        url = self.url + "/api/v1/" + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            body = http_get(url, timeout=10)
        except urllib.error.HTTPError as e:
            body = e.read().decode()
        return json.loads(body)

    def query(self, expr):
        """The API's answer to an instant query: {'status': 'success' |
        'error', 'data': {'resultType', 'result'}, 'error': ...}."""
        return self.api("query", query=expr)

    def value(self, expr):
        """The value of a single-sample instant query, or None."""
        r = self.query(expr)
        if r.get("status") != "success":
            raise RuntimeError(f"{expr}: {r.get('error')}")
        result = r["data"]["result"]
        if not result:
            return None
        if r["data"]["resultType"] == "scalar":
            return float(result[1])
        if len(result) != 1:
            raise RuntimeError(f"{expr}: {len(result)} series")
        return float(result[0]["value"][1])

    def stop(self):
        self.child.stop()


def rule_expressions(rule_files):
    """(name, expr) of every recording and alerting rule."""
    out = []
    for path in rule_files:
        with open(path) as f:
            doc = yaml.safe_load(f)
        for group in doc["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("record") or rule.get("alert"),
                            rule["expr"]))
    return out


# Grafana variables, replaced the way Grafana would for "All" selections.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "20s",
    "$__interval": "5s",
    "$__range": "5m",
    "${datasource}": "kvwire-prometheus",
    "$job": ".*",
    "$scheme": ".*",
}


def dashboard_expressions(dashboard_path, substitutions=None):
    """(panel title, expr) of every target of every panel, with Grafana's
    variables substituted."""
    subs = dict(GRAFANA_SUBSTITUTIONS)
    if substitutions:
        subs.update(substitutions)
    with open(dashboard_path) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for panel in panels:
            for t in panel.get("targets", []):
                expr = t["expr"]
                for k in sorted(subs, key=len, reverse=True):
                    expr = expr.replace(k, subs[k])
                out.append((panel["title"], expr))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    return out


def metric_names(expr):
    """Metric family names in `expr` (histogram suffixes removed)."""
    names = set()
    for name in re.findall(r"\b(kvwire_[a-z0-9_]+|up)\b", expr):
        names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names
