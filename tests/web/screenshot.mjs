// A screenshot of a page once a selector shows:
//   node screenshot.mjs --url URL --out FILE.png [--wait CSS] [--width 1280 --height 800]
import { withPage, args } from "./browser.mjs";

const a = args();
await withPage(async (page) => {
  await page.goto(a.url, { waitUntil: "load" });
  if (a.wait) await page.waitForSelector(a.wait, { state: "visible", timeout: 30000 });
  await page.waitForTimeout(Number(a.settle ?? 500)); // let a chart finish its transition
  await page.screenshot({ path: a.out, fullPage: false });
  console.log(`screenshot ${a.out}`);
}, { width: Number(a.width ?? 1280), height: Number(a.height ?? 800) });
