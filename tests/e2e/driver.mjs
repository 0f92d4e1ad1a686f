// Drives the system's Chromium for tests/e2e/test_demo.py, through the
// playwright-core that tests/interop/node installs (one copy for the repo).
//
//   node driver.mjs
//
// Launches one headless Chromium and prints {"ready": true, "version": ...}
// on a line (or {"ready": false, "error": ...} and exits). Then it reads
// requests from stdin, one JSON object a line, and answers each with one
// line carrying the same id:
//
//   {"id": 1, "op": "newContext", "width": 1000, "height": 700}
//                                     -> {"id": 1, "ok": true, "result": "c1"}
//   {"id": 2, "op": "newPage", "context": "c1"}         -> ... "result": "p2"
//   {"id": 3, "op": "goto", "page": "p2", "url": "http://127.0.0.1:8000/chat"}
//   {"id": 4, "op": "evaluate", "page": "p2", "fn": "(x) => x + 1", "arg": 1}
//   {"id": 5, "op": "waitFor", "page": "p2", "fn": "(x) => ...", "arg": null,
//    "timeout_ms": 10000}     -> the function's first truthy value
//   {"id": 6, "op": "fill" | "press" | "click", "page": "p2", "selector": "#text", "value": "..."}
//   {"id": 7, "op": "screenshot", "page": "p2", "path": "/tmp/x.png"}
//   {"id": 8, "op": "setOffline", "context": "c1", "offline": true}
//   {"id": 9, "op": "console", "page": "p2"}  -> the page's console lines so far
//   {"id": 10, "op": "closeContext", "context": "c1"}
//
// Failures answer {"id": n, "ok": false, "error": "..."}. Requests run
// concurrently. The browser closes when stdin ends.

import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const require = createRequire(new URL("../interop/node/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const executablePath = process.env.TIDINGS_CHROMIUM || "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  // Pages of other origins than the hub's (conftest.py, PAGE_HOSTS): names
  // that are not this machine's, served by a hub on 127.0.0.1.
  "--host-resolver-rules=MAP *.tidings.test 127.0.0.1",
];

function send(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

const contexts = new Map();
const pages = new Map();
let counter = 0;

function lookup(table, key, what) {
  const value = table.get(key);
  if (value === undefined) throw new Error(`no ${what} ${key}`);
  return value;
}

// Functions arrive as source text; the page turns them back into functions.
function callInPage(page, fn, arg) {
  return page.evaluate(
    ([source, value]) => (0, eval)(`(${source})`)(value),
    [fn, arg ?? null],
  );
}

const OPS = {
  async newContext({ width = 1000, height = 700, scale = 1, colorScheme = "light" }) {
    const context = await browser.newContext({
      viewport: { width, height },
      deviceScaleFactor: scale,
      colorScheme,
    });
    const id = `c${++counter}`;
    contexts.set(id, context);
    return id;
  },
  async newPage({ context }) {
    const page = await lookup(contexts, context, "context").newPage();
    const id = `p${++counter}`;
    page.__log = [];
    page.on("console", (m) => page.__log.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => page.__log.push(`pageerror: ${e.message}`));
    pages.set(id, page);
    return id;
  },
  async goto({ page, url, timeout_ms: timeout = 20000 }) {
    const response = await lookup(pages, page, "page").goto(url, { timeout });
    return response ? response.status() : null;
  },
  async evaluate({ page, fn, arg }) {
    return await callInPage(lookup(pages, page, "page"), fn, arg);
  },
  async waitFor({ page, fn, arg, timeout_ms: timeout = 10000 }) {
    const p = lookup(pages, page, "page");
    const handle = await p.waitForFunction(
      ([source, value]) => (0, eval)(`(${source})`)(value),
      [fn, arg ?? null],
      { timeout, polling: 50 },
    );
    const value = await handle.jsonValue();
    await handle.dispose();
    return value;
  },
  async fill({ page, selector, value, timeout_ms: timeout = 10000 }) {
    await lookup(pages, page, "page").fill(selector, value, { timeout });
    return null;
  },
  async press({ page, selector, value, timeout_ms: timeout = 10000 }) {
    await lookup(pages, page, "page").press(selector, value, { timeout });
    return null;
  },
  async click({ page, selector, timeout_ms: timeout = 10000 }) {
    await lookup(pages, page, "page").click(selector, { timeout });
    return null;
  },
  async screenshot({ page, path, fullPage = false }) {
    await lookup(pages, page, "page").screenshot({ path, fullPage });
    return path;
  },
  async addInitScript({ context, script }) {
    await lookup(contexts, context, "context").addInitScript({ content: script });
    return null;
  },
  async setOffline({ context, offline }) {
    await lookup(contexts, context, "context").setOffline(offline);
    return null;
  },
  async console({ page }) {
    return lookup(pages, page, "page").__log;
  },
  async closeContext({ context }) {
    const c = lookup(contexts, context, "context");
    contexts.delete(context);
    for (const [id, page] of pages) if (page.context() === c) pages.delete(id);
    await c.close();
    return null;
  },
};

let browser;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: FLAGS,
    timeout: 30000,
  });
} catch (error) {
  send({ ready: false, error: String(error?.stack ?? error) });
  process.exit(1);
}
send({ ready: true, version: browser.version() });

async function handle(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    send({ id: null, ok: false, error: `bad request: ${error.message}` });
    return;
  }
  const op = OPS[request.op];
  try {
    if (op === undefined) throw new Error(`unknown op ${request.op}`);
    send({ id: request.id, ok: true, result: (await op(request)) ?? null });
  } catch (error) {
    send({ id: request.id, ok: false, error: String(error?.message ?? error) });
  }
}

const running = new Set();
for await (const line of createInterface({ input: process.stdin })) {
  if (line.trim() === "") continue;
  const task = handle(line).finally(() => running.delete(task));
  running.add(task);
}
await Promise.allSettled(running);
await browser.close();
