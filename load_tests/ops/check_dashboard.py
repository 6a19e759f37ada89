#!/usr/bin/env python3
"""CI check of the Grafana provisioning in deploy/grafana/: the dashboard
JSON parses and is what make_dashboard.py writes; panel ids are unique and
panels fit the 24-column grid without overlapping; every panel queries the
provisioned Prometheus datasource; every PromQL expression (Grafana
variables substituted) parses, checked offline with `promtool check rules`
(the live evaluation is in prometheus_e2e_test.py); the template variables
the queries use exist; the provisioning YAML files parse and agree with the
dashboard (datasource uid, dashboard path).
"""
import json
import os
import re
import subprocess
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yaml  # noqa: E402

from kvwire_ops import dashboard_expressions, log  # noqa: E402


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..")
    gdir = os.path.join(src, "deploy/grafana")
    failures = []
    checks = [0]

    def check(ok, message):
        checks[0] += 1
        if not ok:
            failures.append(message)
            log("FAIL:", message)

    path = os.path.join(gdir, "dashboards/kvwire.json")
    with open(path) as f:
        dash = json.load(f)  # Parses, or raises.
    gen = subprocess.run([sys.executable, os.path.join(gdir, "make_dashboard.py"), "--check"],
                         capture_output=True, text=True)
    check(gen.returncode == 0, f"dashboard JSON stale: {gen.stdout}{gen.stderr}")

    with open(os.path.join(gdir, "provisioning/datasources/prometheus.yml")) as f:
        ds = yaml.safe_load(f)
    uids = {d["uid"] for d in ds["datasources"]}
    check(ds.get("apiVersion") == 1 and len(ds["datasources"]) == 1,
          "datasource provisioning: one datasource, apiVersion 1")
    check(ds["datasources"][0]["type"] == "prometheus", "datasource type")
    with open(os.path.join(gdir, "provisioning/dashboards/kvwire.yml")) as f:
        prov = yaml.safe_load(f)
    check(prov["providers"][0]["type"] == "file" and
          prov["providers"][0]["options"]["path"].startswith("/var/lib/grafana/dashboards"),
          "dashboard provider path")

    variables = {v["name"]: v for v in dash["templating"]["list"]}
    check(variables.get("datasource", {}).get("current", {}).get("value") in uids,
          f"datasource variable default is not one of {uids}")
    check(dash.get("uid") and dash.get("title") and dash.get("schemaVersion", 0) >= 36,
          "dashboard uid/title/schemaVersion")

    ids = set()
    occupied = {}
    panels = dash["panels"]
    for p in panels:
        check(p["id"] not in ids, f"duplicate panel id {p['id']}")
        ids.add(p["id"])
        g = p["gridPos"]
        check(0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0,
              f"panel '{p['title']}' outside the grid: {g}")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                other = occupied.get((x, y))
                if other is not None:
                    check(False, f"panels '{other}' and '{p['title']}' overlap at {x},{y}")
                    break
                occupied[(x, y)] = p["title"]
            else:
                continue
            break
        if p["type"] == "row":
            continue
        check(p.get("datasource", {}).get("uid") == "${datasource}",
              f"panel '{p['title']}' does not use the datasource variable")
        check(len(p.get("targets", [])) > 0, f"panel '{p['title']}' has no query")
        check(bool(p.get("description")), f"panel '{p['title']}' has no description")
        for t in p.get("targets", []):
            check(t.get("expr"), f"panel '{p['title']}' has an empty query")
            for var in re.findall(r"\$(\w+)", t["expr"]):
                if var.startswith("__"):
                    continue
                check(var in variables, f"panel '{p['title']}' uses unknown ${var}")
    titles = " | ".join(p["title"] for p in panels).lower()
    for needle in ["bandwidth by scheme", "bytes per request", "compression ratio",
                   "tokens selected", "stage latency", "time to first token",
                   "request rate", "error", "fallbacks", "queue depth"]:
        check(needle in titles, f"no panel about '{needle}'")

    # Offline PromQL parse: every expression as a recording rule.
    exprs = dashboard_expressions(path)
    if shutil.which("promtool"):
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:expr_{i}", "expr": e} for i, (_, e) in enumerate(exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as tf:
            yaml.safe_dump(rules, tf)
        r = subprocess.run(["promtool", "check", "rules", tf.name],
                           capture_output=True, text=True)
        os.unlink(tf.name)
        check(r.returncode == 0, f"promtool rejects a dashboard query:\n{r.stdout}{r.stderr}")
    else:
        log("note: promtool not installed; PromQL not parsed offline")
    log(f"{len(panels)} panels, {len(exprs)} queries")
    log(f"{checks[0] - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
