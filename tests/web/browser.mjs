// Starting Debian's Chromium (headless) through playwright-core: the flags
// this machine needs (root, no GPU, no network beside loopback) and a fresh
// profile per run.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const CHROMIUM = process.env.DBMUX_CHROMIUM || "/usr/bin/chromium";

/** @param {(page: import("playwright-core").Page) => Promise<void>} body */
export async function withPage(body, { width = 1280, height = 1000 } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "dbmux-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    viewport: { width, height },
    args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = context.pages()[0] ?? (await context.newPage());
    await body(page);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

/** `--name value` pairs from argv. */
export function args() {
  /** @type {Record<string, string>} */
  const out = {};
  const a = process.argv.slice(2);
  for (let i = 0; i < a.length; i += 2) out[a[i].replace(/^--/, "")] = a[i + 1];
  return out;
}
