#!/usr/bin/env python3
"""CI check of docker-compose.yml with `docker-compose config` (no
Docker engine is needed, nor available on the CI machine): the file is
valid, and the resolved configuration has the sharer, the receiver,
Prometheus and Grafana; the two kvwire services each reserve their own GPU
(overridable per service), run as the non-root user, mount their models
read-only and the TLS material, have gRPC health checks; Prometheus and
Grafana mount deploy/prometheus and deploy/grafana. Exit 77 (skip) without
docker-compose.
"""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import yaml  # noqa: E402

from kvwire_ops import SKIP, log  # noqa: E402


def config(compose_file, env):
    r = subprocess.run(["docker-compose", "-f", compose_file, "config"],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return yaml.safe_load(r.stdout)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..")
    if not shutil.which("docker-compose"):
        log("SKIP: docker-compose (Debian package) is not installed")
        return SKIP
    compose = os.path.join(src, "docker-compose.yml")
    failures = []
    checks = [0]

    def check(ok, message):
        checks[0] += 1
        if not ok:
            failures.append(message)
            log("FAIL:", message)

    env = {k: v for k, v in os.environ.items() if not k.startswith("KVWIRE_")}
    c = config(compose, env)
    services = c["services"]
    check(set(services) == {"kvwire-sharer", "kvwire-receiver", "prometheus", "grafana"},
          f"services: {sorted(services)}")
    gpus = {}
    for name in ("kvwire-sharer", "kvwire-receiver"):
        s = services[name]
        devices = s["deploy"]["resources"]["reservations"]["devices"]
        check(len(devices) == 1 and devices[0]["capabilities"] == ["gpu"] and
              devices[0]["driver"] == "nvidia" and len(devices[0]["device_ids"]) == 1,
              f"{name}: not pinned to one GPU: {devices}")
        gpus[name] = devices[0]["device_ids"][0]
        check(s.get("user") == "10001:10001", f"{name}: user {s.get('user')}")
        vols = s["volumes"]
        targets = {v["target"] if isinstance(v, dict) else v.split(":")[1]: v for v in vols}
        check("/etc/kvwire/tls" in targets, f"{name}: TLS material not mounted")
        model_mounts = [v for t, v in targets.items() if t.startswith("/models")]
        check(model_mounts and all((v.get("read_only") if isinstance(v, dict) else v.endswith(":ro"))
                                   for v in model_mounts), f"{name}: models not mounted read-only")
        hc = s.get("healthcheck", {})
        check("kvwire-health" in " ".join(hc.get("test", [])), f"{name}: no gRPC health check")
        cmd = s["command"]
        check(any(a.startswith("--tls_cert=/etc/kvwire/tls/") for a in cmd),
              f"{name}: serves without TLS")
        # The whole Hugging Face cache, read-only, where HF_HUB_CACHE says.
        env = s.get("environment", {})
        hub = env.get("HF_HUB_CACHE", "")
        cache_mounts = [t for t in targets if t and hub.startswith(t + "/")]
        check(cache_mounts and env.get("HF_HOME") in cache_mounts,
              f"{name}: HF_HOME/HF_HUB_CACHE not on a mounted cache: {env}")
        check(env.get("MALLOC_MMAP_THRESHOLD_") == "268435456" and
              env.get("MALLOC_TRIM_THRESHOLD_") == "1073741824",
              f"{name}: lacks the allocator settings of docs/DEPLOY.md")
        check(s.get("profiles") == ["kvwire"], f"{name}: profiles {s.get('profiles')}")
    check(gpus.get("kvwire-sharer") != gpus.get("kvwire-receiver"),
          f"sharer and receiver share a GPU: {gpus}")
    rcmd = services["kvwire-receiver"]["command"]
    check("--sharer_target=dns:///kvwire-sharer:50051" in rcmd, "receiver does not dial the sharer")
    check(any(a.startswith("--sharer_tls_cert=") for a in rcmd), "receiver -> sharer is not mutual TLS")
    # The monitoring-only profile: Prometheus and Grafana start without the
    # services (no depends_on them); .env selects the whole stack by default.
    for name in ("prometheus", "grafana"):
        check(services[name].get("profiles") == ["kvwire", "monitoring"],
              f"{name}: profiles {services[name].get('profiles')}")
        check(not set(services[name].get("depends_on", {})) & {"kvwire-sharer", "kvwire-receiver"},
              f"{name} depends on the kvwire services")
    with open(os.path.join(src, ".env")) as f:
        check("COMPOSE_PROFILES=kvwire" in f.read().split(), ".env does not select the kvwire profile")
    c3 = config(compose, dict(env, KVWIRE_PROMETHEUS_CONFIG="prometheus-fleet.yml"))
    check("--config.file=/etc/prometheus/prometheus-fleet.yml" in c3["services"]["prometheus"]["command"],
          "the Prometheus config is not selectable")
    check(os.path.exists(os.path.join(src, "deploy/prometheus/prometheus-fleet.yml")),
          "deploy/prometheus/prometheus-fleet.yml missing")
    prom_vols = " ".join(str(v) for v in services["prometheus"]["volumes"])
    check("deploy/prometheus" in prom_vols, "prometheus does not mount deploy/prometheus")
    graf_vols = " ".join(str(v) for v in services["grafana"]["volumes"])
    check("deploy/grafana/provisioning" in graf_vols and "deploy/grafana/dashboards" in graf_vols,
          "grafana does not mount the provisioning and dashboards")

    # Configurable: GPUs, model paths, image.
    env2 = dict(env, KVWIRE_SHARER_GPU="2", KVWIRE_RECEIVER_GPU="3",
                KVWIRE_SHARER_MODEL_DIR="/data/sharer-model", KVWIRE_IMAGE="kvwire:cpu")
    c2 = config(compose, env2)
    s2 = c2["services"]
    check(s2["kvwire-sharer"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["2"]
          and s2["kvwire-receiver"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["3"],
          "GPU ids are not configurable")
    check("/data/sharer-model" in str(s2["kvwire-sharer"]["volumes"]), "model dir not configurable")
    check(s2["kvwire-sharer"]["image"] == "kvwire:cpu", "image not configurable")

    # The Dockerfiles (no engine to build them here): multi-stage, a
    # non-root USER in the final stage, a gRPC HEALTHCHECK, and every file
    # they COPY from the repository exists.
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        with open(os.path.join(src, "docker", name)) as f:
            lines = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
        froms = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
        check(len(froms) >= 2, f"{name}: not multi-stage")
        final = lines[froms[-1]:]
        users = [l for l in final if l.upper().startswith("USER ")]
        check(users and not users[-1].split()[1].startswith(("root", "0")), f"{name}: runs as root")
        check(any(l.upper().startswith("HEALTHCHECK") for l in final), f"{name}: no HEALTHCHECK")
        check(any("kvwire-health" in l for l in final), f"{name}: health check is not kvwire-health")
        for l in lines:
            if l.upper().startswith("COPY ") and "--from=" not in l:
                for part in l.split()[1:-1]:
                    if part != ".":
                        check(os.path.exists(os.path.join(src, part)), f"{name}: COPY {part}: missing")
    log(f"{checks[0] - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
