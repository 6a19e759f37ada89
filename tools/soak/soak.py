#!/usr/bin/env python3
"""The soak under faults (scripts/soak.sh runs this; see its --help).

kvwire-sharer and kvwire-receiver run on CPU with small generated models;
kvwire-load drives background load on the receiver, kvwire-soak-client asks
checked questions (every answer is compared with a fault-free baseline), and
a chaos driver injects faults one after another: SIGKILL + restart of the
sharer, SIGSTOP/SIGCONT of the sharer, a sharer that corrupts chunks
(--testing_corrupt_chunk_probability), a slow sharer
(--testing_layer_delay_ms), a degraded and a partitioned link (tc netem, or
tbf and link down where the kernel has no netem, on a veth between the
sharer's network namespace and the receiver's), and
SIGTERM of the receiver with work in flight (drain, then restart). After
each fault it measures the time until the first correct C2C answer.
Everything is judged at the end; summary.json and summary.md go to --out.

Python 3 standard library only. Linux; network namespaces and tc need
root (without them the link faults are skipped and the report says so).
"""
import argparse
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHARER_LAYERS = 6
# Statuses a failed request may end with, each a precise account of a fault:
# the receiver down or draining (UNAVAILABLE), a call cut by shutdown
# (CANCELLED), a deadline (DEADLINE_EXCEEDED), corrupt data (DATA_LOSS),
# overload (RESOURCE_EXHAUSTED, ABORTED).
PRECISE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "CANCELLED",
           "RESOURCE_EXHAUSTED", "ABORTED"}
# With fallback receiver-only (or a receiver-only question) the sharer's
# failures must never surface: only the receiver's own availability may.
RECEIVER_SIDE = {"UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"}


def log(msg):
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw).stdout


class Skip(Exception):
    pass


# ------------------------------------------------------------------ network
class Link:
    """The sharer's network namespace, joined to the root namespace by a veth
    pair; faults are tc qdiscs on both ends (or both ends set down)."""

    def __init__(self, enabled):
        self.ns = None
        self.shaper = None
        self.note = ""
        tag = os.getpid() % 100000
        self.sharer_addr = "127.0.0.1"
        if not enabled:
            self.note = "link faults disabled (--no-netns)"
            return
        if shutil.which("ip") is None or shutil.which("tc") is None:
            self.note = "no 'ip'/'tc' (iproute2): link faults skipped"
            return
        ns = f"kvwire-soak-{tag}"
        r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
        if r.returncode != 0:
            self.note = ("cannot create network namespaces (needs root or CAP_NET_ADMIN): "
                         + r.stderr.strip() + "; link faults skipped")
            return
        self.ns = ns
        self.dev_host, self.dev_ns = f"ksh{tag}", f"ksn{tag}"
        octet = 1 + tag % 250
        self.host_addr, self.sharer_addr = f"198.19.{octet}.2", f"198.19.{octet}.1"
        try:
            run(["ip", "link", "add", self.dev_host, "type", "veth", "peer", "name", self.dev_ns])
            run(["ip", "link", "set", self.dev_ns, "netns", ns])
            run(["ip", "addr", "add", f"{self.host_addr}/30", "dev", self.dev_host])
            run(["ip", "-n", ns, "addr", "add", f"{self.sharer_addr}/30", "dev", self.dev_ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", self.dev_ns, "up"])
            run(["ip", "link", "set", self.dev_host, "up"])
        except subprocess.CalledProcessError as e:
            self.close()
            self.note = f"veth set-up failed: {e.stdout.strip()}; link faults skipped"
            self.sharer_addr = "127.0.0.1"
            return
        self.shaper = None
        for kind, args in (("netem", ["netem", "delay", "1ms"]),
                           ("tbf", ["tbf", "rate", "1gbit", "burst", "262144", "latency", "200ms"])):
            r = subprocess.run(["tc", "qdisc", "add", "dev", self.dev_host, "root"] + args,
                               capture_output=True, text=True)
            if r.returncode == 0:
                self.shaper = kind
                break
        self.clear()
        self.note = (f"sharer in netns {ns} ({self.sharer_addr}), veth to the root namespace; link "
                     + {"netem": "degraded with tc netem (rate, delay, loss), partitioned with netem loss 100%",
                        "tbf": "degraded with tc tbf (rate only: this kernel has no sch_netem, so no delay "
                               "or loss), partitioned by setting both veth ends down",
                        None: "not shaped (no sch_netem, no sch_tbf), partitioned by setting both veth ends down"}
                     [self.shaper])

    def prefix(self):
        return ["ip", "netns", "exec", self.ns] if self.ns else []

    def tc(self, *args):
        for pre, dev in (([], self.dev_host), (self.prefix(), self.dev_ns)):
            subprocess.run(pre + ["tc", "qdisc", "replace", "dev", dev, "root"] + list(args),
                           check=True, capture_output=True)

    def degrade(self, rate, delay, loss):
        """Returns what was applied."""
        if self.shaper == "netem":
            self.tc("netem", "rate", rate, "delay", delay, "loss", loss, "limit", "100000")
            return f"netem rate {rate} delay {delay} loss {loss}"
        if self.shaper == "tbf":
            self.tc("tbf", "rate", rate, "burst", "262144", "latency", "200ms")
            return f"tbf rate {rate} (no delay or loss: no sch_netem)"
        return None

    def partition(self, down):
        if self.shaper == "netem":
            if down:
                self.tc("netem", "loss", "100%")
            else:
                self.clear()
            return "netem loss 100%"
        state = "down" if down else "up"
        run(["ip", "link", "set", self.dev_host, state])
        run(self.prefix() + ["ip", "link", "set", self.dev_ns, state])
        return "veth ends down"

    def clear(self):
        for pre, dev in (([], self.dev_host), (self.prefix(), self.dev_ns)):
            subprocess.run(pre + ["tc", "qdisc", "del", "dev", dev, "root"],
                           capture_output=True)

    def close(self):
        if self.ns:
            subprocess.run(["ip", "link", "del", self.dev_host], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
            self.ns = None


# ----------------------------------------------------------------- services
class Service:
    """One service, restartable on the same port; every incarnation is kept
    (pid, start, end, exit code, flags) for the report."""

    def __init__(self, name, out, argv_fn, prefix=None):
        self.name, self.out, self.argv_fn = name, out, argv_fn
        self.prefix = prefix or []
        self.proc = None
        self.incarnations = []
        self.lock = threading.Lock()
        self.unexpected_exits = []

    def start(self, extra=(), timeout=120):
        n = len(self.incarnations)
        argv = self.prefix + self.argv_fn() + list(extra)
        outp = os.path.join(self.out, "logs", f"{self.name}-{n}.out")
        errp = os.path.join(self.out, "logs", f"{self.name}-{n}.log")
        t = time.time()
        # Port still held by a dying predecessor: retry.
        for attempt in range(30):
            with open(outp, "w") as o, open(errp, "w") as e:
                proc = subprocess.Popen(argv, stdout=o, stderr=e)
            inc = {"n": n, "pid": proc.pid, "spawned": t, "ready": None, "end": None,
                   "exit": None, "extra": list(extra), "expected_exit": False}
            deadline = time.time() + timeout
            while time.time() < deadline:
                if proc.poll() is not None:
                    break
                with open(outp) as f:
                    if any(l.startswith(f"kvwire-{self.name} ready") for l in f):
                        inc["ready"] = time.time()
                        break
                time.sleep(0.05)
            if inc["ready"]:
                with self.lock:
                    self.proc = proc
                    self.incarnations.append(inc)
                return inc
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{self.name} did not become ready; see {errp}")
            with open(errp) as f:
                err = f.read()
            if "address" in err.lower() and ("use" in err.lower() or "bind" in err.lower()):
                time.sleep(0.5)
                continue
            raise RuntimeError(f"{self.name} exited at start-up (rc {proc.returncode}); see {errp}:\n"
                               + err[-2000:])
        raise RuntimeError(f"{self.name}: port still busy after 30 attempts; see {errp}")

    def pid(self):
        with self.lock:
            return self.proc.pid if self.proc and self.proc.poll() is None else None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig, timeout=60):
        """Sends `sig` and waits for the exit; returns (rc, seconds)."""
        with self.lock:
            proc, inc = self.proc, self.incarnations[-1]
            inc["expected_exit"] = True
        t = time.time()
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            inc["hung"] = True
        inc["end"], inc["exit"] = time.time(), rc
        return rc, inc["end"] - t

    def check_alive(self):
        with self.lock:
            proc = self.proc
            inc = self.incarnations[-1] if self.incarnations else None
        if proc and proc.poll() is not None and inc and not inc["expected_exit"] and inc["exit"] is None:
            inc["end"], inc["exit"] = time.time(), proc.returncode
            self.unexpected_exits.append(dict(inc))
            return False
        return True


def proc_sample(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds
    except (OSError, StopIteration):
        return None


# ------------------------------------------------------------------- driver
class Soak:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        for d in ("logs", "load", "models", "bin"):
            os.makedirs(os.path.join(self.out, d), exist_ok=True)
        self.stop_event = threading.Event()
        self.faults = []
        self.samples = []
        self.load_segments = []
        self.failures = []
        self.notes = []
        self.probe_path = os.path.join(self.out, "probes.jsonl")
        self.probe_offset = 0
        self.probe_seen = []

    # ---------------------------------------------------------------- set-up
    def binaries(self):
        b = self.a.build
        src = {"kvwire-sharer": f"{b}/sharer_service/kvwire-sharer",
               "kvwire-receiver": f"{b}/receiver_service/kvwire-receiver",
               "kvwire-load": f"{b}/load_tests/kvwire-load",
               "kvwire-make-checkpoint": f"{b}/tools/make_tiny_checkpoint/kvwire-make-checkpoint",
               "kvwire-make-fuser": f"{b}/tools/fuser/kvwire-make-fuser",
               "kvwire-soak-client": self.a.client or f"{b}/tools/soak/kvwire-soak-client"}
        self.bin = {}
        for name, path in src.items():
            if not os.access(path, os.X_OK):
                raise Skip(f"{path} is not built")
            # A private copy: a rebuild during the soak must not change what
            # a restart runs.
            dst = os.path.join(self.out, "bin", name)
            shutil.copy2(path, dst)
            self.bin[name] = dst

    def models(self):
        m = os.path.join(self.out, "models")
        self.recv_dir, self.sharer_dir, self.fuser_dir = (f"{m}/receiver", f"{m}/sharer", f"{m}/fuser")
        common = ["--hidden=128", "--heads=4", "--kv_heads=2", "--head_dim=32",
                  "--intermediate=256", "--vocab=320", "--eos_ids=258",
                  "--init_std=0.2", "--dtype=fp32"]
        run([self.bin["kvwire-make-checkpoint"], f"--out={self.recv_dir}", "--arch=qwen3",
             "--layers=8", "--seed=1"] + common)
        run([self.bin["kvwire-make-checkpoint"], f"--out={self.sharer_dir}", "--arch=qwen2",
             f"--layers={SHARER_LAYERS}", "--seed=2"] + common)
        run([self.bin["kvwire-make-fuser"], f"--out={self.fuser_dir}", "--receiver_layers=8",
             f"--sharer_layers={SHARER_LAYERS}", "--source_heads=2", "--source_dim=32",
             "--target_heads=2", "--target_dim=32", "--hidden=32", "--intermediate=48",
             "--dtype=fp32", "--seed=3"])
        run([sys.executable, os.path.join(ROOT, "tools/soak/make_tokenizer.py"), self.recv_dir,
             os.path.join(ROOT, "tests/data/chat_template_goldens.json")])
        qsrc = os.path.join(ROOT, "load_tests/data/questions.txt")
        qs = [l.strip() for l in open(qsrc) if l.strip() and not l.startswith("#")]
        self.questions_file = os.path.join(self.out, "questions.txt")
        with open(self.questions_file, "w") as f:
            f.write("\n".join(qs[: self.a.questions]) + "\n")

    def services(self):
        a = self.a
        self.link = Link(not a.no_netns)
        self.notes.append(self.link.note)
        log(self.link.note)
        self.sharer_port = free_port()
        self.receiver_port = free_port()
        listen = f"{'0.0.0.0' if self.link.ns else '127.0.0.1'}:{self.sharer_port}"
        self.sharer_flags = [
            f"--model_dir={self.sharer_dir}", f"--listen_address={listen}",
            "--metrics_address=127.0.0.1:0", "--allow_insecure", "--intra_op_threads=1",
            "--workers=1", "--drain_timeout_seconds=5", "--stream_stall_timeout_seconds=10",
            f"--testing_layer_delay_ms={a.layer_delay_ms}"]
        self.sharer = Service("sharer", self.out, lambda: [self.bin["kvwire-sharer"]] + self.sharer_flags,
                              self.link.prefix())
        self.receiver = Service("receiver", self.out, lambda: [
            self.bin["kvwire-receiver"], f"--model_dir={self.recv_dir}", f"--fuser_dir={self.fuser_dir}",
            f"--listen_address=127.0.0.1:{self.receiver_port}", "--metrics_address=127.0.0.1:0",
            "--allow_insecure", "--intra_op_threads=1", "--workers=2",
            f"--sharer_target={self.link.sharer_addr}:{self.sharer_port}", "--sharer_allow_insecure",
            f"--sharer_timeout_seconds={a.sharer_timeout}", "--drain_timeout_seconds=10",
            "--fallback=receiver-only"])
        self.sharer.start()
        self.receiver.start()
        log(f"sharer {self.link.sharer_addr}:{self.sharer_port} (pid {self.sharer.pid()}), "
            f"receiver 127.0.0.1:{self.receiver_port} (pid {self.receiver.pid()})")

    def client_argv(self, *extra):
        return [self.bin["kvwire-soak-client"], f"--target=127.0.0.1:{self.receiver_port}",
                f"--questions={self.questions_file}", f"--specs={self.a.specs}",
                f"--max_new_tokens={self.a.max_new_tokens}", "--deadline_seconds=30"] + list(extra)

    def baseline(self):
        """Two fault-free passes (the second checks determinism)."""
        self.base = {}
        passes = []
        for i in range(2):
            out = subprocess.run(self.client_argv("--baseline", f"--id_prefix=base{i}"),
                                 check=True, capture_output=True, text=True).stdout
            passes.append([json.loads(l) for l in out.splitlines() if l.strip()])
        for r0, r1 in zip(*passes):
            for r in (r0, r1):
                if r["code"] != "OK" or r.get("fell_back"):
                    raise RuntimeError(f"baseline request failed: {r}")
            if r0["ids"] != r1["ids"]:
                raise RuntimeError(f"answers are not deterministic: {r0} vs {r1}")
            self.base[(r0["q"], r0["spec"])] = r0
        specs = self.a.specs.split(",")
        nq = len({q for q, _ in self.base})
        same = [(q, s) for q in range(nq) for s in specs
                if self.base[(q, s)]["ids"] == self.base[(q, "receiver-only")]["ids"]]
        self.indistinct = same
        if same:
            self.notes.append(f"{len(same)} (question, spec) pairs whose C2C baseline equals "
                              f"the receiver-only one: {same}")
        log(f"baseline: {len(self.base)} answers ({nq} questions x receiver-only + {specs}), "
            f"deterministic over 2 passes; C2C differs from receiver-only in "
            f"{nq * len(specs) - len(same)}/{nq * len(specs)}")

    # ------------------------------------------------------------ background
    def sampler(self):
        while not self.stop_event.is_set():
            t = time.time()
            for svc in (self.sharer, self.receiver):
                svc.check_alive()
                pid = svc.pid()
                if pid:
                    s = proc_sample(pid)
                    if s:
                        self.samples.append({"t": t, "svc": svc.name, "inc": len(svc.incarnations) - 1,
                                             "pid": pid, "rss_kb": s[0], "fds": s[1]})
            self.stop_event.wait(self.a.sample_seconds)

    def load(self):
        n = 0
        while not self.stop_event.is_set():
            remaining = self.end_load - time.time()
            if remaining < 5:
                break
            seg = min(self.a.load_segment_seconds, remaining)
            d = os.path.join(self.out, "load", f"seg{n:03d}")
            cmd = [self.bin["kvwire-load"], f"--target=127.0.0.1:{self.receiver_port}",
                   "--allow_insecure", "--rpc=answer", f"--spec={self.a.load_specs}",
                   "--prompt_tokens=48", f"--rate={self.a.load_rate}", "--max_in_flight=4",
                   f"--duration_seconds={seg:.0f}", "--warmup_seconds=0", "--deadline_seconds=30",
                   "--max_total_seconds=900", "--plots=false", "--progress=false",
                   f"--seed={n + 1}", f"--out_dir={d}"]
            t0 = time.time()
            with open(os.path.join(self.out, "logs", f"load-{n:03d}.txt"), "w") as f:
                rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
            seg_info = {"n": n, "t0": t0, "t1": time.time(), "rc": rc}
            try:
                rep = json.load(open(os.path.join(d, "report.json")))
                p = rep["points"][0]["all"]
                seg_info.update(requests=p["requests"], ok=p["ok"], fallbacks=p["fallbacks"],
                                errors=p["errors_by_status"], examples=p["error_examples"])
            except (OSError, ValueError, KeyError, IndexError) as e:
                seg_info["report_error"] = str(e)
            self.load_segments.append(seg_info)
            n += 1
            if rc != 0:
                time.sleep(1)

    def read_probes(self):
        """New probe results since the last call."""
        try:
            with open(self.probe_path, "rb") as f:
                f.seek(self.probe_offset)
                data = f.read()
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1
        self.probe_offset += cut
        new = [json.loads(l) for l in data[:cut].decode("utf-8", "replace").splitlines() if l.strip()]
        self.probe_seen.extend(new)
        return new

    def good_c2c(self, r):
        b = self.base.get((r["q"], r["spec"]))
        return (r["code"] == "OK" and r["spec"] != "receiver-only" and r.get("mode") == "c2c"
                and not r.get("fell_back") and b is not None and r["ids"] == b["ids"])

    def wait_recovery(self, t_end):
        """Seconds from t_end to the first correct C2C answer completed after it."""
        cap = self.a.recovery_cap
        while time.time() - t_end < cap:
            self.read_probes()
            hits = [r["t1"] for r in self.probe_seen if r["t1"] > t_end and self.good_c2c(r)]
            if hits:
                return min(hits) - t_end
            time.sleep(0.2)
        return None

    # ----------------------------------------------------------------- faults
    def fault(self, kind):
        a = self.a
        f = {"kind": kind, "t_start": time.time()}
        if kind == "sharer_kill":
            rc, _ = self.sharer.stop(signal.SIGKILL)
            time.sleep(a.down_seconds)
            f["t_end"] = time.time()
            f["ready_s"] = self.sharer.start()["ready"] - f["t_end"]
        elif kind == "sharer_stall":
            self.sharer.signal(signal.SIGSTOP)
            time.sleep(a.stall_seconds)
            self.sharer.signal(signal.SIGCONT)
            f["t_end"] = time.time()
        elif kind in ("sharer_corrupt", "sharer_slow"):
            extra = ([f"--testing_corrupt_chunk_probability={a.corrupt_probability}"]
                     if kind == "sharer_corrupt" else [f"--testing_layer_delay_ms={a.slow_layer_ms}"])
            rc1, d1 = self.sharer.stop(signal.SIGTERM)
            self.sharer.start(extra)
            time.sleep(a.window_seconds)
            rc2, d2 = self.sharer.stop(signal.SIGTERM)
            f["t_end"] = time.time()
            f["ready_s"] = self.sharer.start()["ready"] - f["t_end"]
            f["sigterm_exit_codes"] = [rc1, rc2]
            f["drain_seconds"] = [round(d1, 2), round(d2, 2)]
            if rc1 != 0 or rc2 != 0:
                self.failures.append(f"{kind}: kvwire-sharer exited {rc1}/{rc2} on SIGTERM (want 0)")
        elif kind == "link_degrade":
            f["applied"] = self.link.degrade(a.degrade_rate, a.degrade_delay, a.degrade_loss)
            time.sleep(a.window_seconds)
            self.link.clear()
            f["t_end"] = time.time()
        elif kind == "link_partition":
            f["applied"] = self.link.partition(True)
            time.sleep(a.stall_seconds)
            self.link.partition(False)
            f["t_end"] = time.time()
        elif kind == "receiver_sigterm":
            # With work in flight: wait until a checked request has been
            # running for a moment, so the drain has something to finish.
            self.read_probes()
            time.sleep(0.3)
            rc, drain = self.receiver.stop(signal.SIGTERM, timeout=60)
            f["exit_code"], f["drain_seconds"] = rc, round(drain, 2)
            if rc != 0:
                self.failures.append(f"receiver_sigterm: kvwire-receiver exited {rc} on SIGTERM (want 0)")
            f["t_end"] = time.time()
            f["ready_s"] = self.receiver.start()["ready"] - f["t_end"]
        else:
            raise ValueError(kind)
        f["recovery_s"] = self.wait_recovery(f["t_end"])
        self.faults.append(f)
        rec = "NOT RECOVERED" if f["recovery_s"] is None else f"recovered in {f['recovery_s']:.2f} s"
        log(f"fault {len(self.faults):3d} {kind:17s} {f['t_end'] - f['t_start']:5.1f} s, {rec}")

    def schedule(self):
        cycle = ["sharer_kill", "link_degrade", "sharer_stall", "link_partition",
                 "receiver_sigterm", "sharer_corrupt", "sharer_slow"]
        if self.a.faults != "all":
            chosen = set(self.a.faults.split(",")) - {"none"}
            cycle = [k for k in cycle if k in chosen]
            if not cycle:
                return
        if not self.link.ns:
            cycle = [k for k in cycle if not k.startswith("link_")]
        elif not self.link.shaper:
            cycle.remove("link_degrade")
        n = 0
        while True:
            for k in cycle:
                if k == "receiver_sigterm" and n % self.a.receiver_sigterm_every != self.a.receiver_sigterm_every - 1:
                    continue
                yield k
            n += 1

    # ----------------------------------------------------------------- main
    def run(self):
        a = self.a
        t_begin = time.time()
        self.binaries()
        self.models()
        self.services()
        self.baseline()
        self.t_start = time.time()
        self.end_chaos = self.t_start + a.minutes * 60 - a.cooldown_seconds
        self.end_load = self.t_start + a.minutes * 60
        stop_file = os.path.join(self.out, "stop-probes")
        if os.path.exists(stop_file):
            os.remove(stop_file)
        threads = [threading.Thread(target=self.sampler, daemon=True),
                   threading.Thread(target=self.load, daemon=True)]
        for t in threads:
            t.start()
        probe_out = open(self.probe_path, "w")
        probe_err = open(os.path.join(self.out, "logs", "client.log"), "w")
        client = subprocess.Popen(self.client_argv(f"--threads={a.probe_threads}", f"--stop_file={stop_file}",
                                                   f"--seed={a.seed}"), stdout=probe_out, stderr=probe_err)
        log(f"load + checked requests running; warm-up {a.warmup_seconds} s, faults until "
            f"+{(self.end_chaos - self.t_start) / 60:.1f} min, run ends at +{a.minutes:.1f} min")
        time.sleep(a.warmup_seconds)
        self.t_warm = time.time()
        try:
            for kind in self.schedule():
                if time.time() + a.min_fault_room > self.end_chaos:
                    break
                self.fault(kind)
                if not self.sharer.check_alive() or not self.receiver.check_alive():
                    break
                time.sleep(a.gap_seconds)
            remaining = self.end_load - time.time()
            if remaining > 0:
                log(f"faults done; {remaining:.0f} s of fault-free load to finish")
                time.sleep(remaining)
        finally:
            open(stop_file, "w").close()
            try:
                client_rc = client.wait(timeout=60)
            except subprocess.TimeoutExpired:
                client.kill()
                client_rc = "hung"
            self.stop_event.set()
            for t in threads:
                t.join(timeout=120)
            # Idle: the services' fds and RSS with no calls in flight.
            time.sleep(3)
            self.final_idle = {}
            for svc in (self.sharer, self.receiver):
                svc.check_alive()
                pid = svc.pid()
                self.final_idle[svc.name] = proc_sample(pid) if pid else None
            self.shutdown = {}
            for svc in (self.receiver, self.sharer):
                if svc.pid():
                    rc, secs = svc.stop(signal.SIGTERM)
                    self.shutdown[svc.name] = {"exit": rc, "seconds": round(secs, 2)}
            self.link.close()
        self.read_probes()
        self.client_rc = client_rc
        self.wall = time.time() - t_begin
        return self.judge()

    # ----------------------------------------------------------------- judge
    def classify(self, r):
        """(outcome label, problem or None)."""
        spec, policy, code = r["spec"], r["policy"], r["code"]
        ro = self.base[(r["q"], "receiver-only")]["ids"]
        if code == "OK":
            if spec == "receiver-only":
                if r["mode"] == "receiver-only" and r["ids"] == ro and not r["fell_back"]:
                    return "ok receiver-only", None
                return "WRONG", "receiver-only answer differs from the baseline"
            if r["fell_back"]:
                if policy == "fail":
                    return "WRONG", "fell back although the request's policy is fail"
                if not r["reason"]:
                    return "WRONG", "fell back without a fallback_reason"
                if r["mode"] != "receiver-only" or r["ids"] != ro:
                    return "WRONG", "fallback answer differs from the receiver-only baseline"
                return "fallback (" + r["reason"].split(":")[0] + ")", None
            b = self.base[(r["q"], spec)]
            if r["mode"] != "c2c":
                return "WRONG", f"mode {r['mode']} without fell_back"
            if r["layers_sent"] != b["layers_sent"] or r["tokens_sent"] != b["tokens_sent"]:
                return "WRONG", "C2C answer from a partial transfer"
            if r["ids"] != b["ids"]:
                return "WRONG", ("C2C answer matches neither baseline (half-fused?)" if r["ids"] != ro
                                 else "C2C answer equals the receiver-only one")
            return "ok c2c", None
        if not r.get("message"):
            return f"error {code}", "status without a message"
        if code not in PRECISE:
            return f"error {code}", f"imprecise status {code}"
        if (policy == "receiver-only" or spec == "receiver-only") and code not in RECEIVER_SIDE:
            return f"error {code}", f"sharer failure {code} surfaced despite receiver-only fallback"
        return f"error {code}", None

    def judge(self):
        a = self.a
        probes = self.probe_seen
        res = {"date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(self.t_start)),
               "minutes": a.minutes, "ci": a.ci, "wall_seconds": round(self.wall, 1),
               "machine": f"{os.cpu_count()} CPUs, {platform_line()}", "notes": self.notes,
               "recovery_bound_s": a.recovery_bound}
        # --- checked requests
        outcomes, problems = {}, []
        by_thread = {}
        for r in probes:
            label, problem = self.classify(r)
            outcomes[label] = outcomes.get(label, 0) + 1
            if problem:
                problems.append({"id": r["id"], "problem": problem, "result": r})
            t, n = r["id"].rsplit("-", 2)[-2:]
            by_thread.setdefault(t, []).append(int(n))
        lost = 0
        for t, ns in by_thread.items():
            lost += (max(ns) + 1) - len(set(ns))
        if self.client_rc != 0:
            self.failures.append(f"kvwire-soak-client exited {self.client_rc}")
        wrong = outcomes.get("WRONG", 0)
        res["checked"] = {"requests": len(probes), "outcomes": dict(sorted(outcomes.items())),
                          "wrong": wrong, "lost": lost, "problems": problems[:50],
                          "problem_count": len(problems)}
        if problems:
            self.failures.append(f"{len(problems)} checked requests failed the check "
                                 f"(first: {problems[0]['problem']}: {problems[0]['id']})")
        if lost:
            self.failures.append(f"{lost} checked requests lost (no outcome)")
        if len(probes) == 0:
            self.failures.append("no checked requests ran")
        # --- kvwire-load
        tot = {"segments": len(self.load_segments), "requests": 0, "ok": 0, "fallbacks": 0, "errors": {}}
        for s in self.load_segments:
            for k in ("requests", "ok", "fallbacks"):
                tot[k] += s.get(k, 0)
            for code, n in s.get("errors", {}).items():
                tot["errors"][code] = tot["errors"].get(code, 0) + n
        # GENERATOR_BACKLOG: kvwire-load's own count of arrivals it did not
        # send (open loop, --max_in_flight reached): not a server status.
        bad_load = {c: n for c, n in tot["errors"].items() if c not in PRECISE | {"GENERATOR_BACKLOG"}}
        examples = {}
        for s in self.load_segments:
            examples.update(s.get("examples", {}))
        tot["error_examples"] = examples
        res["load"] = tot
        if bad_load:
            self.failures.append(f"kvwire-load saw imprecise statuses {bad_load}: {examples}")
        # --- faults and recovery
        kinds = {}
        for f in self.faults:
            k = kinds.setdefault(f["kind"], {"count": 0, "recovery_s": [], "not_recovered": 0, "ready_s": []})
            k["count"] += 1
            if "ready_s" in f:
                k["ready_s"].append(round(f["ready_s"], 2))
            if f["recovery_s"] is None:
                k["not_recovered"] += 1
            else:
                k["recovery_s"].append(round(f["recovery_s"], 2))
        all_rec = [f["recovery_s"] for f in self.faults if f["recovery_s"] is not None]
        for name, k in kinds.items():
            r = k["recovery_s"]
            k["min"], k["median"], k["max"] = (min(r), round(statistics.median(r), 2), max(r)) if r else (None,) * 3
            rd = k["ready_s"]
            after = [round(f["recovery_s"] - f["ready_s"], 2) for f in self.faults
                     if f["kind"] == name and "ready_s" in f and f["recovery_s"] is not None]
            k["after_ready_median"], k["after_ready_max"] = (
                (round(statistics.median(after), 2), max(after)) if after else (None, None))
            k["ready_median"], k["ready_max"] = (round(statistics.median(rd), 2), max(rd)) if rd else (None, None)
            if k["not_recovered"]:
                self.failures.append(f"{name}: {k['not_recovered']} faults not recovered within "
                                     f"{a.recovery_cap} s")
            if r and max(r) > a.recovery_bound:
                self.failures.append(f"{name}: recovery {max(r):.1f} s > bound {a.recovery_bound} s")
        res["faults"] = {"total": len(self.faults), "by_kind": kinds, "list": self.faults,
                         "recovery_all": ({"min": round(min(all_rec), 2),
                                           "median": round(statistics.median(all_rec), 2),
                                           "max": round(max(all_rec), 2)} if all_rec else None)}
        if not self.faults and a.faults != "none":
            self.failures.append("no faults were injected")
        # In-flight work at each receiver SIGTERM: checked requests that
        # started before it and ended after it.
        for f in self.faults:
            if f["kind"] == "receiver_sigterm":
                infl = [r for r in probes if r["t0"] < f["t_start"] < r["t1"]]
                f["in_flight_checked"] = len(infl)
                f["in_flight_outcomes"] = {}
                for r in infl:
                    lab = self.classify(r)[0]
                    f["in_flight_outcomes"][lab] = f["in_flight_outcomes"].get(lab, 0) + 1
        # Errors outside any fault: from a fault's start to its recovery
        # (+ the deadline of a call that started inside it) is "inside".
        windows = []
        for f in self.faults:
            end = f["t_end"] + (f["recovery_s"] if f["recovery_s"] is not None else a.recovery_cap)
            windows.append((f["t_start"] - 0.5, end + 1.0))
        outside = [r for r in probes if r["code"] != "OK" or r.get("fell_back")
                   if not any(s <= r["t1"] and r["t0"] <= e for s, e in windows)]
        res["checked"]["failed_or_fell_back_outside_faults"] = len(outside)
        res["checked"]["outside_examples"] = outside[:5]
        if outside:
            self.failures.append(f"{len(outside)} checked requests failed or fell back outside any fault window")
        # --- processes
        procs = {}
        for svc in (self.sharer, self.receiver):
            procs[svc.name] = self.memory(svc)
            if svc.unexpected_exits:
                self.failures.append(f"{svc.name} died unexpectedly: {svc.unexpected_exits}")
            for inc in svc.incarnations:
                if inc.get("hung"):
                    self.failures.append(f"{svc.name} incarnation {inc['n']} did not exit on signal")
        res["processes"] = procs
        res["shutdown"] = self.shutdown
        for name, s in self.shutdown.items():
            if s["exit"] != 0:
                self.failures.append(f"{name} exited {s['exit']} on the final SIGTERM")
        res["failures"] = self.failures
        res["passed"] = not self.failures
        return res

    def memory(self, svc):
        a = self.a
        out = {"incarnations": len(svc.incarnations), "checked": []}
        first = last = None
        for inc in svc.incarnations:
            ss = [s for s in self.samples if s["svc"] == svc.name and s["inc"] == inc["n"]
                  and s["t"] >= inc["ready"] + a.mem_warmup_seconds]
            if not ss:
                continue
            if first is None:
                first = ss[0]
            last = ss[-1]
            span = ss[-1]["t"] - ss[0]["t"]
            if span < a.mem_min_span_seconds or len(ss) < 8:
                continue
            q = max(2, len(ss) // 4)
            rss0 = statistics.median(s["rss_kb"] for s in ss[:q])
            rss1 = statistics.median(s["rss_kb"] for s in ss[-q:])
            fd0 = max(s["fds"] for s in ss[:q])
            fd1 = max(s["fds"] for s in ss[-q:])
            c = {"n": inc["n"], "span_s": round(span), "rss_first_q_mib": round(rss0 / 1024, 1),
                 "rss_last_q_mib": round(rss1 / 1024, 1), "rss_growth": round(rss1 / rss0 - 1, 4),
                 "fds_first_q_max": fd0, "fds_last_q_max": fd1,
                 "rss_max_mib": round(max(s["rss_kb"] for s in ss) / 1024, 1)}
            c["flat"] = rss1 <= rss0 * (1 + a.rss_tolerance) and fd1 <= fd0 + a.fd_slack
            out["checked"].append(c)
            if not c["flat"]:
                self.failures.append(f"{svc.name} incarnation {inc['n']} not flat: {c}")
        if first:
            out["start"] = {"rss_mib": round(first["rss_kb"] / 1024, 1), "fds": first["fds"]}
            out["end"] = {"rss_mib": round(last["rss_kb"] / 1024, 1), "fds": last["fds"]}
        idle = self.final_idle.get(svc.name)
        if idle:
            out["idle_after_load"] = {"rss_mib": round(idle[0] / 1024, 1), "fds": idle[1]}
        if not out["checked"]:
            self.failures.append(f"{svc.name}: no incarnation long enough ({a.mem_min_span_seconds} s) "
                                 "to judge memory")
        return out


def platform_line():
    try:
        model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        model = "?"
    try:
        mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    except (OSError, StopIteration):
        mem = 0
    return f"{model}, {mem / 2**20:.0f} GiB RAM, Linux {os.uname().release}"


def summary_md(res):
    L = []
    c, ld, fl = res["checked"], res["load"], res["faults"]
    L.append(f"Soak {'(CI) ' if res['ci'] else ''}of {res['minutes']} min, started {res['date_utc']}: "
             f"**{'PASS' if res['passed'] else 'FAIL'}**")
    L.append("")
    L.append("| requests | count |")
    L.append("|---|---|")
    L.append(f"| checked requests (kvwire-soak-client) | {c['requests']} |")
    for k, v in c["outcomes"].items():
        L.append(f"| &nbsp;&nbsp;{k} | {v} |")
    L.append(f"| &nbsp;&nbsp;wrong answers | {c['wrong']} |")
    L.append(f"| &nbsp;&nbsp;lost (no outcome) | {c['lost']} |")
    L.append(f"| &nbsp;&nbsp;failed or fell back outside a fault | {c['failed_or_fell_back_outside_faults']} |")
    L.append(f"| background requests (kvwire-load, {ld['segments']} segments) | {ld['requests']} |")
    L.append(f"| &nbsp;&nbsp;ok (of which fell back) | {ld['ok']} ({ld['fallbacks']}) |")
    for k, v in sorted(ld["errors"].items()):
        L.append(f"| &nbsp;&nbsp;error {k} | {v} |")
    L.append("")
    L.append(f"| fault | injected | recovery min / median / max (s) | not recovered | of which restart to ready, median / max (s) | ready to correct C2C, median / max (s) |")
    L.append("|---|---|---|---|---|---|")
    for k, v in fl["by_kind"].items():
        rng = "-" if v["min"] is None else f"{v['min']:.2f} / {v['median']:.2f} / {v['max']:.2f}"
        rdy = "-" if v["ready_median"] is None else f"{v['ready_median']:.2f} / {v['ready_max']:.2f}"
        aft = "-" if v["after_ready_median"] is None else f"{v['after_ready_median']:.2f} / {v['after_ready_max']:.2f}"
        L.append(f"| {k} | {v['count']} | {rng} | {v['not_recovered']} | {rdy} | {aft} |")
    ra = fl["recovery_all"]
    rng_all = "-" if not ra else f"{ra['min']:.2f} / {ra['median']:.2f} / {ra['max']:.2f}"
    not_rec = sum(v["not_recovered"] for v in fl["by_kind"].values())
    L.append(f"| **all** | {fl['total']} | {rng_all} | {not_rec} | | |")
    L.append("")
    L.append("| service | incarnations | RSS MiB start -> end | fds start -> end | idle after load (RSS MiB, fds) | longest incarnation checked: RSS 1st -> last quarter median, fds max |")
    L.append("|---|---|---|---|---|---|")
    for name, p in res["processes"].items():
        best = max(p["checked"], key=lambda x: x["span_s"]) if p["checked"] else None
        idle = p.get("idle_after_load")
        L.append(f"| {name} | {p['incarnations']} | {p.get('start', {}).get('rss_mib')} -> {p.get('end', {}).get('rss_mib')} | "
                 f"{p.get('start', {}).get('fds')} -> {p.get('end', {}).get('fds')} | "
                 f"{'-' if not idle else str(idle['rss_mib']) + ', ' + str(idle['fds'])} | "
                 + ("-" if not best else
                    f"#{best['n']} ({best['span_s']} s): {best['rss_first_q_mib']} -> {best['rss_last_q_mib']} "
                    f"({best['rss_growth'] * 100:+.1f} %), fds {best['fds_first_q_max']} -> {best['fds_last_q_max']}; "
                    f"{sum(1 for x in p['checked'] if x['flat'])}/{len(p['checked'])} checked incarnations flat")
                 + " |")
    L.append("")
    for n in res["notes"]:
        L.append(f"- {n}")
    if res["failures"]:
        L.append("")
        L.append("Failures:")
        for f in res["failures"]:
            L.append(f"- {f}")
    return "\n".join(L) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=25)
    p.add_argument("--ci", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--build", required=True)
    p.add_argument("--client", default="")
    p.add_argument("--no-netns", action="store_true")
    p.add_argument("--recovery-bound", type=float, default=15.0,
                   help="largest accepted recovery time (s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--faults", default="all",
                   help="comma-separated fault kinds to inject (default all; 'none': load only)")
    a = p.parse_args()
    # Fixed knobs (documented in docs/RELIABILITY.md).
    a.questions, a.specs, a.max_new_tokens = 10, "bf16,int8,int4,int4@0.5", 16
    a.load_specs, a.load_rate, a.load_segment_seconds = "int8,int4", 1.0, 120
    a.probe_threads, a.layer_delay_ms, a.sharer_timeout = 2, 30, 4
    a.down_seconds, a.corrupt_probability, a.slow_layer_ms = 2.0, 0.5, 1000
    a.degrade_rate, a.degrade_delay, a.degrade_loss = "2mbit", "25ms", "1%"
    a.recovery_cap = max(60.0, 3 * a.recovery_bound)
    a.sample_seconds, a.rss_tolerance, a.fd_slack = 2.0, 0.10, 8
    if a.ci:
        a.minutes = min(a.minutes, 3.5)
        a.warmup_seconds, a.cooldown_seconds, a.gap_seconds = 15, 20, 4
        a.stall_seconds, a.window_seconds, a.min_fault_room = 6, 10, 15
        a.receiver_sigterm_every = 1
        a.mem_warmup_seconds, a.mem_min_span_seconds = 30, 20
    else:
        a.warmup_seconds, a.cooldown_seconds, a.gap_seconds = 60, 60, 10
        a.stall_seconds, a.window_seconds, a.min_fault_room = 8, 20, 45
        a.receiver_sigterm_every = 3
        a.mem_warmup_seconds, a.mem_min_span_seconds = 30, 60
    os.makedirs(a.out, exist_ok=True)
    a.out = os.path.abspath(a.out)
    random.seed(a.seed)
    soak = Soak(a)
    try:
        res = soak.run()
    except Skip as e:
        print(f"SKIP: {e}")
        return 77
    except Exception:
        try:
            soak.stop_event.set()
            for svc in (getattr(soak, "sharer", None), getattr(soak, "receiver", None)):
                if svc and svc.pid():
                    svc.stop(signal.SIGKILL)
            if getattr(soak, "link", None):
                soak.link.close()
        finally:
            raise
    json.dump(res, open(os.path.join(a.out, "summary.json"), "w"), indent=1)
    json.dump(soak.samples, open(os.path.join(a.out, "samples.json"), "w"))
    md = summary_md(res)
    open(os.path.join(a.out, "summary.md"), "w").write(md)
    print(md)
    print(f"soak: results in {a.out} (summary.md, summary.json, probes.jsonl, samples.json, logs/)")
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
