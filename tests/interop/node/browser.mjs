// Drives the system's Chromium for tests/interop/test_chromium.py.
//
//   node browser.mjs [extra Chromium flags...]
//
// Launches one headless Chromium, prints {"ready": true, "version": ...} on a
// line, then reads commands from stdin, one JSON object a line:
//
//   {"url": "http://127.0.0.1:PORT/", "timeout_ms": 20000}
//
// For each, it opens the URL in a fresh browser context, awaits the promise
// the page keeps in `window.__scenario`, and prints one line:
//
//   {"ok": true, "result": <the promise's value>, "console": [...]}
//   {"ok": false, "error": "...", "console": [...]}
//
// It closes the browser and exits when stdin ends.

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const executablePath = process.env.TIDINGS_CHROMIUM || "/usr/bin/chromium";
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function reply(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function withTimeout(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

async function runPage(browser, { url, timeout_ms: timeout = 20000 }) {
  const log = [];
  const context = await browser.newContext();
  try {
    const page = await context.newPage();
    page.on("console", (message) => log.push(`${message.type()}: ${message.text()}`));
    page.on("pageerror", (error) => log.push(`pageerror: ${error.message}`));
    await page.goto(url, { timeout });
    const result = await withTimeout(
      page.evaluate(() => window.__scenario),
      timeout,
      "the page's scenario",
    );
    return { ok: true, result, console: log };
  } catch (error) {
    return { ok: false, error: String(error?.stack ?? error), console: log };
  } finally {
    await context.close().catch(() => {});
  }
}

let browser;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [...FLAGS, ...process.argv.slice(2)],
    timeout: 30000,
  });
} catch (error) {
  reply({ ready: false, error: String(error?.stack ?? error) });
  process.exit(1);
}
reply({ ready: true, version: browser.version() });

for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === "") continue;
  let command;
  try {
    command = JSON.parse(line);
  } catch (error) {
    reply({ ok: false, error: `bad command: ${error.message}`, console: [] });
    continue;
  }
  reply(await runPage(browser, command));
}
await browser.close();
