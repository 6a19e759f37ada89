// Drives the receiver's live page (/live) in headless Chromium with
// playwright-core: the page loads and polls, its four charts draw series
// (coloured pixels on each <canvas>), its numbers change between two reads
// while load runs, the recent-requests table lists transfer specs; then a
// screenshot. Run by live_page_test.py, which starts the services and the
// load.
//
// Usage: node live_page_test.js URL SCREENSHOT_PATH USER_DATA_DIR
// Exit 0 on success, 1 on failure. NODE_PATH must reach playwright-core.
"use strict";
const { chromium } = require("playwright-core");

const [url, screenshotPath, userDataDir] = process.argv.slice(2);
const CHROMIUM = process.env.KVWIRE_CHROMIUM || "/usr/bin/chromium";
const failures = [];
function check(ok, message) {
  console.log((ok ? "ok: " : "FAIL: ") + message);
  if (!ok) failures.push(message);
  return ok;
}

async function stats(page) {
  return page.evaluate(() => {
    const out = { polls: Number(document.body.dataset.polls) };
    for (const el of document.querySelectorAll(".stat .value")) {
      out[el.id] = Number(el.dataset.value);
      out[el.id + ".text"] = el.textContent;
    }
    out.rows = document.querySelectorAll("#recent-body tr[data-wire-bytes]").length;
    out.specs = Array.from(document.querySelectorAll("#recent-body td.spec")).map((td) => td.textContent);
    return out;
  });
}

// Coloured (not grey) pixels per canvas: the series, not the axes or grid.
async function canvases(page) {
  return page.evaluate(() => {
    const out = {};
    for (const c of document.querySelectorAll("canvas")) {
      const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      let coloured = 0;
      for (let i = 0; i < data.length; i += 4) {
        const r = data[i], g = data[i + 1], b = data[i + 2];
        if (Math.max(r, g, b) - Math.min(r, g, b) > 60) coloured++;
      }
      out[c.id] = { width: c.width, height: c.height, points: Number(c.dataset.points), coloured };
    }
    return out;
  });
}

async function main() {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1400, height: 1100 },
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    const external = [];
    page.on("request", (r) => { if (!r.url().startsWith(new URL(url).origin)) external.push(r.url()); });
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    const response = await page.goto(url, { waitUntil: "load", timeout: 30000 });
    check(response && response.status() === 200, `GET ${url}: ${response && response.status()}`);
    // A one-minute window: the run is short.
    await page.selectOption("#window", "60");
    // The first polls with transfers in them.
    await page.waitForFunction(() => Number(document.getElementById("stat-total-requests").dataset.value) > 0 &&
                               Number(document.getElementById("chart-wire").dataset.points) > 0 &&
                               Number(document.getElementById("chart-stages").dataset.points) > 0,
                               null, { timeout: 60000, polling: 250 });
    const first = await stats(page);
    console.log("first read:", JSON.stringify(first));
    await page.waitForTimeout(3000);
    const second = await stats(page);
    console.log("second read:", JSON.stringify(second));
    check(second.polls > first.polls, `the page polls (${first.polls} -> ${second.polls})`);
    check(second["stat-total-requests"] > first["stat-total-requests"],
          `requests since start grow during load (${first["stat-total-requests"]} -> ${second["stat-total-requests"]})`);
    check(second["stat-total-wire"] > first["stat-total-wire"],
          `wire bytes since start grow during load (${first["stat-total-wire"]} -> ${second["stat-total-wire"]})`);
    check(second["stat-wire-rate"] > 0, `wire bytes/s shown: ${second["stat-wire-rate.text"]}`);
    check(second["stat-bytes-per-transfer"] > 0, `bytes per transfer shown: ${second["stat-bytes-per-transfer.text"]}`);
    check(second["stat-ratio"] > 1, `compression ratio shown: ${second["stat-ratio.text"]}`);
    check(second["stat-ttft"] > 0, `mean TTFT shown: ${second["stat-ttft.text"]}`);
    check(second.rows > 0, `recent requests listed: ${second.rows}`);
    check(second.specs.some((s) => /^(bf16|int8|int4)\b/.test(s)),
          `recent requests show their transfer spec: ${JSON.stringify(second.specs.slice(0, 4))}`);

    // Let a few more seconds of load land on the charts, then check them.
    await page.waitForTimeout(3000);
    const drawn = await canvases(page);
    console.log("canvases:", JSON.stringify(drawn));
    for (const id of ["chart-wire", "chart-bytes", "chart-ratio", "chart-stages"]) {
      const c = drawn[id];
      check(c && c.width > 0 && c.height > 0, `${id} has a size`);
      check(c && c.points > 0, `${id} drew data points (${c && c.points})`);
      check(c && c.coloured > 200, `${id} has coloured series pixels (${c && c.coloured})`);
    }
    const legend = await page.textContent("#legend-wire");
    check(/int4|int8|bf16/.test(legend), `wire chart legend names schemes: "${legend}"`);
    await page.screenshot({ path: screenshotPath, fullPage: true });
    console.log(`screenshot: ${screenshotPath}`);
    check(external.length === 0, `no requests outside the receiver: ${JSON.stringify(external)}`);
    check(errors.length === 0, `no page errors: ${JSON.stringify(errors)}`);
  } finally {
    await context.close();
  }
}

main().then(() => {
  console.log(failures.length ? `${failures.length} failed` : "all passed");
  process.exit(failures.length ? 1 : 0);
}, (e) => {
  console.log("FAIL: " + (e && e.stack || e));
  process.exit(1);
});
