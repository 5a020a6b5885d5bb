// Loads dbmux's status page in headless Chromium while a workload runs and
// checks what a person would look at: every replica has a row with figures,
// the figures move without a reload, the ping chart draws a line per proxy
// backend. Prints what it saw as JSON; exits non-zero on any failure.
//   node status-page.mjs --url http://ADMIN/ --replicas a,b --backends master,a --out FILE.png
import { withPage, args } from "./browser.mjs";

const a = args();
const replicas = (a.replicas ?? "").split(",").filter(Boolean);
const backends = (a.backends ?? "").split(",").filter(Boolean);
const deadline = Date.now() + Number(a.timeout ?? 60000);
const seen = { replicas: {}, last_seq: [], ping_points: {}, live: "" };

function fail(msg) {
  console.error(`status page: ${msg}\nseen: ${JSON.stringify(seen)}`);
  process.exit(1);
}

await withPage(async (page) => {
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(a.url, { waitUntil: "load" });
  for (const r of replicas) {
    await page.waitForSelector(`#replicas tr[data-replica="${r}"] td[data-field="applied_seq"]`, { timeout: 30000 });
  }
  // Figures move while the workload runs: the log's last seq changes at
  // least twice, with no navigation in between.
  const text = async (sel) => (await page.textContent(sel))?.trim() ?? "";
  seen.last_seq.push(await text("#log-last-seq"));
  while (new Set(seen.last_seq).size < 3) {
    if (Date.now() > deadline) fail("the log's last seq did not move");
    await page.waitForTimeout(500);
    const v = await text("#log-last-seq");
    if (v !== seen.last_seq[seen.last_seq.length - 1]) seen.last_seq.push(v);
  }
  // Every backend gets a line of several points.
  for (const b of backends) {
    for (;;) {
      const n = Number(await page.getAttribute(`#ping-chart path[data-backend="${b}"]`, "data-points").catch(() => 0));
      seen.ping_points[b] = n;
      if (n >= 3) break;
      if (Date.now() > deadline) fail(`no ping line for ${b}`);
      await page.waitForTimeout(500);
    }
  }
  for (const r of replicas) {
    const row = `#replicas tr[data-replica="${r}"]`;
    seen.replicas[r] = {
      applied_seq: await text(`${row} td[data-field="applied_seq"]`),
      lag_events: await text(`${row} td[data-field="lag_events"]`),
      state: await text(`${row} .badge`),
    };
    if (!/^[0-9,]+$/.test(seen.replicas[r].applied_seq)) fail(`replica ${r} shows no applied seq`);
  }
  seen.live = await text("#live");
  if (seen.live !== "live") fail("the page is not live");
  if (errors.length) fail(`script errors: ${errors.join("; ")}`);
  const foreign = requests.filter((u) => !u.startsWith(new URL(a.url).origin));
  if (foreign.length) fail(`requests outside dbmux (must work offline): ${foreign.join(", ")}`);
  if (a.out) await page.screenshot({ path: a.out, fullPage: true });
  console.log(JSON.stringify(seen));
}, { width: Number(a.width ?? 1280), height: Number(a.height ?? 900) });
