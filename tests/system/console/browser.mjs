// A tiny bridge from pytest to a real headless Chromium (Debian's), through playwright-core.
//
// Reads one JSON command per line on stdin, answers one JSON line on stdout:
//   {"id": 1, "op": "goto", "url": "..."}            -> {"id": 1, "ok": true, "result": ...}
// Ops: goto, eval (an expression, evaluated in the page), wait (poll an expression until
// truthy, or fail after timeout ms), click, fill, select, screenshot, log (what the page
// reported: console errors and warnings, page errors, failed requests), close.
// Expressions are evaluated over the DevTools protocol, so the page's strict
// Content-Security-Policy needs no exception for the tests.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
const page = await context.newPage();
const log = [];
page.on("console", (msg) => {
  if (msg.type() === "error" || msg.type() === "warning") log.push({ kind: `console.${msg.type()}`, text: msg.text() });
});
page.on("pageerror", (err) => log.push({ kind: "pageerror", text: String(err) }));
page.on("requestfailed", (req) => {
  const failure = req.failure();
  // An EventSource closed on purpose (new filters) is not a failure of the page.
  if (failure && failure.errorText === "net::ERR_ABORTED") return;
  log.push({ kind: "requestfailed", text: `${req.url()} ${failure ? failure.errorText : ""}` });
});
page.on("dialog", (dialog) => {
  log.push({ kind: "dialog", text: dialog.message() });
  dialog.dismiss().catch(() => {});
});

async function wait(expression, timeout) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await page.evaluate(expression);
      if (last) return last;
    } catch (err) {
      last = String(err);
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${expression} (last: ${JSON.stringify(last)})`);
    await new Promise((resolve) => setTimeout(resolve, 40));
  }
}

async function run(cmd) {
  switch (cmd.op) {
    case "goto": return (await page.goto(cmd.url, { waitUntil: "domcontentloaded" }))?.status();
    case "eval": return await page.evaluate(cmd.expr);
    case "wait": return await wait(cmd.expr, cmd.timeout ?? 5000);
    case "click": await page.click(cmd.selector, { timeout: cmd.timeout ?? 5000 }); return true;
    case "fill": await page.fill(cmd.selector, cmd.value, { timeout: cmd.timeout ?? 5000 }); return true;
    case "select": await page.selectOption(cmd.selector, cmd.value, { timeout: cmd.timeout ?? 5000 }); return true;
    case "screenshot": await page.screenshot({ path: cmd.path, fullPage: !!cmd.fullPage }); return cmd.path;
    case "log": return log;
    case "close": await browser.close(); return true;
    default: throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    process.stdout.write(JSON.stringify({ id: null, ok: false, error: `bad command: ${err}` }) + "\n");
    continue;
  }
  try {
    const result = await run(cmd);
    process.stdout.write(JSON.stringify({ id: cmd.id, ok: true, result: result ?? null }) + "\n");
  } catch (err) {
    process.stdout.write(JSON.stringify({ id: cmd.id, ok: false, error: String(err && err.stack || err) }) + "\n");
  }
  if (cmd.op === "close") break;
}
await browser.close().catch(() => {});
process.exit(0);
