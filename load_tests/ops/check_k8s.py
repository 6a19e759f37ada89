#!/usr/bin/env python3
"""CI check of deploy/k8s: renders the base and every overlay with the
offline renderer (deploy/k8s/render.py) and, where `kubectl kustomize`
works, with kubectl too, requiring both to produce the same objects; then
checks what the manifests promise: GPU Deployments for sharer and receiver
on separate node pools, HTTP probes (/healthz, /readyz on the metrics port),
the Hugging Face cache volume and the download Job, a headless sharer Service the
receivers dial with dns:///, PodDisruptionBudgets and NetworkPolicies whose
selectors match the pods (only receivers reach the sharers' gRPC port), a
ServiceMonitor that finds both metrics ports, HPAs on kvwire metrics that
target the Deployments, TLS material from Secrets.
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yaml  # noqa: E402

from kvwire_ops import log  # noqa: E402


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..")
    k8s = os.path.join(src, "deploy/k8s")
    sys.path.insert(0, k8s)
    import render  # noqa: E402

    failures = []
    checks = [0]

    def check(ok, message):
        checks[0] += 1
        if not ok:
            failures.append(message)
            log("FAIL:", message)
        return ok

    kubectl = shutil.which("kubectl")
    overlays = ["base"] + [os.path.join("overlays", d) for d in
                           sorted(os.listdir(os.path.join(k8s, "overlays")))]
    for name in overlays:
        d = os.path.join(k8s, name)
        objs = render.render(d)
        # Round trip through YAML text: the output parses.
        text = yaml.safe_dump_all(objs, sort_keys=False)
        objs = [o for o in yaml.safe_load_all(text) if o]
        by = {(o["kind"], o["metadata"]["name"]): o for o in objs}
        log(f"{name}: {len(objs)} objects")
        if kubectl:
            r = subprocess.run([kubectl, "kustomize", d], capture_output=True, text=True)
            if r.returncode == 0:
                kobjs = {(o["kind"], o["metadata"]["name"]): o
                         for o in yaml.safe_load_all(r.stdout) if o}
                check(sorted(kobjs) == sorted(by), f"{name}: kubectl renders {sorted(kobjs)}")
                for key, obj in by.items():
                    check(kobjs.get(key) == obj, f"{name}: kubectl and render.py differ on {key}")
            else:
                log(f"note: kubectl kustomize failed ({r.stderr.strip()[:200]}); render.py only")

        ns = objs[0]["metadata"].get("namespace")
        if name != "base":
            check(ns and all(o["metadata"].get("namespace") == ns for o in objs),
                  f"{name}: objects not all in one namespace")

        pods = {}
        for role in ("sharer", "receiver"):
            dep = by.get(("Deployment", f"kvwire-{role}"))
            if not check(dep is not None, f"{name}: no kvwire-{role} Deployment"):
                continue
            tmpl = dep["spec"]["template"]
            pods[role] = tmpl["metadata"]["labels"]
            sel = dep["spec"]["selector"]["matchLabels"]
            check(all(pods[role].get(k) == v for k, v in sel.items()),
                  f"{name}: {role} selector does not match its pods")
            spec = tmpl["spec"]
            c = spec["containers"][0]
            res = c["resources"]
            check(str(res["limits"].get("nvidia.com/gpu")) == "1" and
                  str(res["requests"].get("nvidia.com/gpu")) == "1",
                  f"{name}: {role} does not request one nvidia.com/gpu")
            # HTTP probes on the metrics port (kubelet's own httpGet: no exec,
            # no TLS handshake): liveness and startup on /healthz, readiness on
            # /readyz, which mirrors the gRPC health of the service.
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            metrics_port = ports.get("metrics")
            check(any(a == f"--metrics_address=0.0.0.0:{metrics_port}" for a in c["args"]),
                  f"{name}: {role} metrics port {metrics_port} is not where it listens")
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                                ("startupProbe", "/healthz")):
                get = c.get(probe, {}).get("httpGet", {})
                check("exec" not in c.get(probe, {}), f"{name}: {role} {probe} still execs")
                check(get.get("path") == path and get.get("port") in ("metrics", metrics_port),
                      f"{name}: {role} {probe} is not httpGet {path} on the metrics port: {get}")
            # The whole Hugging Face cache, read-only, named by HF_HOME/HF_HUB_CACHE.
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            model_mount = {m["name"]: m for m in c["volumeMounts"]}.get("models", {})
            check(model_mount.get("readOnly") is True and
                  env.get("HF_HUB_CACHE", "").startswith(model_mount.get("mountPath", "?") + "/") and
                  env.get("HF_HOME", "").startswith(model_mount.get("mountPath", "?")),
                  f"{name}: {role} HF_HOME/HF_HUB_CACHE not on the read-only cache volume: {env}")
            check(env.get("MALLOC_MMAP_THRESHOLD_") == "268435456" and
                  env.get("MALLOC_TRIM_THRESHOLD_") == "1073741824",
                  f"{name}: {role} lacks the allocator settings of docs/DEPLOY.md")
            secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
            mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
            check("tls" in secrets and "tls" in mounts, f"{name}: {role} TLS not from a Secret")
            args = c["args"]
            for flag in ("--tls_cert=", "--tls_key="):
                vals = [a.split("=", 1)[1] for a in args if a.startswith(flag)]
                check(len(vals) == 1 and vals[0].startswith(mounts.get("tls", "?") + "/"),
                      f"{name}: {role} {flag} not under the TLS Secret mount")
            check(spec["securityContext"].get("runAsNonRoot") is True,
                  f"{name}: {role} may run as root")
            check(any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])),
                  f"{name}: {role} does not tolerate GPU taints")
            pods[role + "_nodeSelector"] = spec.get("nodeSelector", {})
        if name != "overlays/single-node" and "sharer" in pods and "receiver" in pods:
            check(pods["sharer_nodeSelector"].get("kvwire.io/pool") == "sharer-gpu" and
                  pods["receiver_nodeSelector"].get("kvwire.io/pool") == "receiver-gpu",
                  f"{name}: sharers and receivers not on separate node pools")

        svc = by.get(("Service", "kvwire-sharer"))
        if check(svc is not None, f"{name}: no kvwire-sharer Service"):
            check(svc["spec"].get("clusterIP") == "None", f"{name}: sharer Service not headless")
            check(all(pods.get("sharer", {}).get(k) == v for k, v in svc["spec"]["selector"].items()),
                  f"{name}: sharer Service selects no sharer pod")
            port = {p["name"]: p["port"] for p in svc["spec"]["ports"]}.get("grpc")
            rargs = by[("Deployment", "kvwire-receiver")]["spec"]["template"]["spec"]["containers"][0]["args"]
            check(f"--sharer_target=dns:///kvwire-sharer:{port}" in rargs,
                  f"{name}: receivers do not dial the headless sharer Service")
        for role in ("sharer", "receiver"):
            pdb = by.get(("PodDisruptionBudget", f"kvwire-{role}"))
            if check(pdb is not None, f"{name}: no {role} PDB"):
                check(all(pods.get(role, {}).get(k) == v
                          for k, v in pdb["spec"]["selector"]["matchLabels"].items()),
                      f"{name}: {role} PDB selects no pod")
            hpa = by.get(("HorizontalPodAutoscaler", f"kvwire-{role}"))
            if check(hpa is not None, f"{name}: no {role} HPA"):
                ref = hpa["spec"]["scaleTargetRef"]
                check(("Deployment", ref["name"]) in by, f"{name}: HPA targets {ref}")
                check(all(m["type"] == "Pods" and m["pods"]["metric"]["name"].startswith("kvwire_")
                          for m in hpa["spec"]["metrics"]), f"{name}: {role} HPA not on a kvwire metric")
                check(hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], f"{name}: HPA min > max")

        np = by.get(("NetworkPolicy", "kvwire-sharer-ingress"))
        if check(np is not None, f"{name}: no sharer NetworkPolicy"):
            check(all(pods.get("sharer", {}).get(k) == v
                      for k, v in np["spec"]["podSelector"]["matchLabels"].items()),
                  f"{name}: NetworkPolicy does not select the sharers")
            grpc_rules = [r for r in np["spec"]["ingress"]
                          if any(p["port"] == 50051 for p in r.get("ports", []))]
            check(len(grpc_rules) == 1, f"{name}: sharer gRPC port rules: {grpc_rules}")
            for r in grpc_rules:
                froms = r.get("from", [])
                check(froms and all("podSelector" in f and "namespaceSelector" not in f and
                                    all(pods.get("receiver", {}).get(k) == v
                                        for k, v in f["podSelector"]["matchLabels"].items())
                                    for f in froms),
                      f"{name}: the sharer gRPC port is open to more than receivers: {froms}")

        sm = by.get(("ServiceMonitor", "kvwire"))
        if check(sm is not None, f"{name}: no ServiceMonitor"):
            sel = sm["spec"]["selector"]["matchLabels"]
            matched = [o for o in objs if o["kind"] == "Service" and
                       all(o["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            check({o["metadata"]["name"] for o in matched} == {"kvwire-sharer", "kvwire-receiver"},
                  f"{name}: ServiceMonitor selects {[o['metadata']['name'] for o in matched]}")
            port = sm["spec"]["endpoints"][0]["port"]
            check(all(any(p["name"] == port for p in o["spec"]["ports"]) for o in matched),
                  f"{name}: a Service has no '{port}' port")

    # The download Job fills the same cache volume the Deployments read.
    with open(os.path.join(k8s, "jobs/hf-download.yaml")) as f:
        job = yaml.safe_load(f)
    jc = job["spec"]["template"]["spec"]["containers"][0]
    jenv = {e["name"]: e.get("value") for e in jc.get("env", [])}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
              for v in job["spec"]["template"]["spec"]["volumes"]}
    script = " ".join(jc.get("args", []))
    check(job["kind"] == "Job" and claims.get("models") == "kvwire-models" and
          jenv.get("HF_HUB_CACHE") == "/models/huggingface/hub" and "hf download" in script,
          "jobs/hf-download.yaml does not hf download into the kvwire-models cache")
    with open(os.path.join(k8s, "prometheus-adapter-rules.yaml")) as f:
        adapter = yaml.safe_load(f)
    names = {r["name"]["as"] for r in adapter["rules"]["custom"]}
    check(names == {"kvwire_requests_in_flight", "kvwire_queue_depth"},
          f"prometheus-adapter rules expose {names}")
    log(f"{checks[0] - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
