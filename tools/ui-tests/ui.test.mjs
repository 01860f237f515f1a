// End-to-end tests of the web view (/ui) in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core) against the real jimbus binary
// ($JIMBUS_BIN, default target/debug/jimbus). Every wait polls for a condition
// with a timeout; nothing sleeps. Screenshots go to docs/ui/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { startJimbus, post, batch, gameState, scoredHand, metrics, readStream } from "./jimbus.mjs";

const ROOT = resolve(new URL("../..", import.meta.url).pathname);
// UI_SCREENSHOTS=docs/ui refreshes the README's screenshots; by default they
// go to a temporary folder, so a test run leaves the tree as it was.
const SHOTS = resolve(ROOT, process.env.UI_SCREENSHOTS || join(tmpdir(), "jimbus-ui-screenshots"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SESSION = `ui-e2e-${process.pid}`;

let server;
let browser;
let page;
let ui;
const consoleErrors = [];

before(async () => {
  server = process.env.JIMBUS_URL ? { base: process.env.JIMBUS_URL, stop: async () => {} } : await startJimbus();
  // UI_BASE serves the pages from elsewhere (a development proxy); by default the binary's own.
  ui = process.env.UI_BASE || server.base;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on("pageerror", (e) => consoleErrors.push(`page error: ${e}`));
  // Console errors include what the page's Content-Security-Policy refused.
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  console.log(`screenshots in ${SHOTS}`);
  await browser?.close();
  await server?.stop();
});

const rawItems = () => page.$$eval("#feed li", (items) => items.map((li) => Number(li.dataset.seq)));

test("the Farm page shows a new session within a second", { timeout: 60_000 }, async () => {
  await page.goto(`${ui}/ui#/farm`);
  await page.waitForSelector("#farm-summary");
  await post(server.base, batch(SESSION, [gameState(3, 7, 42)]));
  const posted = Date.now();
  // Waits longer than the limit only to say by how much it was missed.
  const row = await page.waitForSelector(`tr[data-session="${SESSION}"]`, { timeout: 5000 });
  const shown = Date.now() - posted;
  console.log(`farm row appeared ${shown} ms after the POST answered`);
  assert.ok(shown < 1000, `the session took ${shown} ms to appear on the Farm page`);
  const cells = await row.$$eval("td", (tds) => tds.map((td) => td.textContent.trim()));
  assert.equal(cells[0], SESSION);
  assert.deepEqual(cells.slice(3, 6), ["3", "7", "42"]);
  assert.equal(cells[2], "GAME_STATE");
  // A second, silent-for-long session is not needed: staleness is shown by class.
  assert.equal(await row.evaluate((tr) => tr.classList.contains("stale")), false);
  await page.screenshot({ path: join(SHOTS, "farm.png") });
});

test("the Hand page shows 200 triggers in order with their depths", { timeout: 60_000 }, async () => {
  const { events, expected } = scoredHand(200);
  await post(server.base, batch(SESSION, events));
  await page.goto(`${ui}/ui#/session/${SESSION}`);
  const link = await page.waitForSelector("#hands a", { timeout: 20_000 });
  const cells = await page.$$eval("#hands tr:first-child td", (tds) => tds.map((td) => td.textContent.trim()));
  assert.deepEqual(cells.slice(1, 4), ["1,000", "200", "2"], "score, triggers and depth in the hands list");
  await page.screenshot({ path: join(SHOTS, "session.png") });
  // Keyboard: the hand link is reachable and opens with Enter.
  await link.focus();
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelectorAll("#timeline li[data-order]").length === 200, null, { timeout: 20_000 });
  const rows = await page.$$eval("#timeline li[data-order]", (items) =>
    items.map((li) => ({
      order: Number(li.dataset.order),
      depth: Number(li.dataset.depth),
      name: li.querySelector(".joker").textContent,
      parent: li.querySelector(".parent").textContent,
    })),
  );
  rows.forEach((row, i) => {
    assert.equal(row.order, i, `trigger ${i} is in order`);
    assert.equal(row.name, expected[i].name, `trigger ${i} names its joker`);
    assert.equal(row.depth, expected[i].depth, `trigger ${i} (${row.name}) has depth ${expected[i].depth}`);
    assert.equal(row.parent.includes(expected[i].parent), true, `trigger ${i} links its parent ${expected[i].parent}`);
  });
  // x_mult comes from the raw trigger events, joined by their sequences.
  await page.waitForFunction(() => document.querySelector("#t-198 .xmult")?.textContent === "×1.5", null, { timeout: 20_000 });
  const xMults = await page.$$eval("#timeline li[data-order] .xmult", (cells) => cells.map((c) => c.textContent));
  assert.deepEqual(xMults, expected.map((e) => e.xMult), "x_mult of every trigger");
  const indent = (order) => page.$eval(`#t-${order} .joker`, (e) => parseFloat(getComputedStyle(e).paddingLeft));
  assert.ok((await indent(0)) < (await indent(2)) && (await indent(2)) < (await indent(4)), "deeper triggers are indented more");
  assert.equal(await page.textContent("#trigger-count"), "200");
  assert.equal(await page.textContent("#cascade-depth"), "2");
  assert.equal(await page.textContent("#t-199 .run"), "1,000", "running score after the last trigger");
  console.log(`200 triggers rendered in ${await page.getAttribute("#view", "data-render-ms")} ms`);
  await page.screenshot({ path: join(SHOTS, "hand.png") });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.screenshot({ path: join(SHOTS, "hand-phone.png") });
  await page.setViewportSize({ width: 1280, height: 800 });
  // A parent link moves focus to the trigger it names.
  await page.click("#t-4 .parent a");
  assert.equal(await page.evaluate(() => document.activeElement.id), "t-3");
});

test("a 500-trigger hand is drawn in one pass", { timeout: 60_000 }, async () => {
  const session = `${SESSION}-big`;
  await post(server.base, batch(session, scoredHand(500).events));
  await page.goto(`${ui}/ui#/session/${session}`);
  await (await page.waitForSelector("#hands a", { timeout: 20_000 })).click();
  await page.waitForFunction(() => document.querySelectorAll("#timeline li[data-order]").length === 500, null, { timeout: 20_000 });
  const built = Number(await page.getAttribute("#view", "data-render-ms"));
  // Scrolling to the end and back lays out every row at least once.
  const scrolled = await page.evaluate(async () => {
    const started = performance.now();
    for (const y of [document.body.scrollHeight, 0]) {
      window.scrollTo(0, y);
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    }
    return performance.now() - started;
  });
  console.log(`500 triggers: built in ${built} ms, scrolled end to end in ${Math.round(scrolled)} ms`);
  assert.equal(await page.textContent("#t-499 .run"), "2,500");
});

test("pausing stops the feed and resuming continues without gaps", { timeout: 60_000 }, async () => {
  const session = `${SESSION}-pause`;
  const beat = (n) => Array.from({ length: n }, (_, i) => ({ type: "HEARTBEAT", payload: { uptime: i, version: "1" } }));
  await post(server.base, batch(session, beat(10)));
  await page.goto(`${ui}/ui#/session/${session}`);
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length === 10, null, { timeout: 20_000 });
  await page.click("#pause");
  assert.equal(await page.getAttribute("#pause", "aria-pressed"), "true");
  await post(server.base, batch(session, beat(25)));
  // The 25 are on the bus (another reader sees all 35) while the page shows none of them.
  await readStream(server.base, { pattern: `balatro.${session}.>`, from: "earliest" }, (seen) => seen.filter((d) => d.event).length >= 35);
  assert.equal((await rawItems()).length, 10, "a paused page receives nothing");
  await page.keyboard.press("Tab"); // focus moves on; the button still works by keyboard
  await page.focus("#pause");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length >= 35, null, { timeout: 20_000 });
  const sequences = await rawItems();
  assert.deepEqual(sequences, Array.from({ length: 35 }, (_, i) => 35 - i), "newest first, every sequence once");
});

test("a live page reconnects by itself after a server restart and misses nothing", { timeout: 90_000 }, async (t) => {
  if (!server.restart) return t.skip("the server was not started by the test");
  const session = `${SESSION}-restart`;
  const beat = (n) => Array.from({ length: n }, (_, i) => ({ type: "HEARTBEAT", payload: { uptime: i, version: "1" } }));
  await post(server.base, batch(session, beat(10)));
  await page.goto(`${ui}/ui#/session/${session}`);
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length === 10, null, { timeout: 20_000 });
  await server.restart();
  // Posted while the page is still reconnecting: its EventSource resumes with Last-Event-ID.
  await post(server.base, batch(session, beat(15)));
  await page.waitForFunction(() => document.querySelectorAll("#feed li").length >= 25, null, { timeout: 20_000 });
  assert.deepEqual(await rawItems(), Array.from({ length: 25 }, (_, i) => 25 - i), "every sequence once, newest first");
  await page.waitForFunction(() => document.getElementById("connection").classList.contains("live"), null, { timeout: 20_000 });
});

test("a session silent for longer than the stale time is greyed out", { timeout: 60_000 }, async () => {
  const session = `${SESSION}-quiet`;
  await page.goto(`${ui}/ui#/farm?stale=1`);
  await page.waitForSelector("#farm-summary");
  await post(server.base, batch(session, [gameState(1, 1, 4)]));
  const row = `tr[data-session="${session}"]`;
  await page.waitForSelector(`${row}:not(.stale)`, { timeout: 2000 });
  await page.waitForSelector(`${row}.stale`, { timeout: 5000 });
  const colour = await page.$eval(`${row} td:nth-child(2)`, (td) => getComputedStyle(td).color);
  assert.equal(colour, "rgb(141, 153, 165)", "stale rows are drawn in the muted colour");
  await post(server.base, batch(session, [gameState(1, 2, 9)]));
  await page.waitForSelector(`${row}:not(.stale)`, { timeout: 2000 });
});

test("the Server page shows ingest, shards and the memory budget from /metrics", { timeout: 60_000 }, async () => {
  await page.goto(`${ui}/ui#/server`);
  await page.waitForFunction(() => /[1-9]/.test(document.querySelector("#ingest-total")?.textContent ?? ""), null, { timeout: 20_000 });
  const accepted = Number((await page.textContent("#ingest-total")).replaceAll(",", ""));
  const m = await metrics(server.base);
  assert.ok(accepted > 0 && accepted <= m.get("jimbus_events_accepted_total"), `${accepted} events shown`);
  assert.ok((await page.$$("#shards tr[data-shard]")).length >= 1, "one row per shard");
  assert.match(await page.textContent("#budget"), /MiB/);
  await page.screenshot({ path: join(SHOTS, "server.png") });
});

test("the pages fit a phone and every control has a name", { timeout: 60_000 }, async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${ui}/ui#/farm`);
  await page.waitForSelector(`tr[data-session="${SESSION}"]`, { timeout: 20_000 });
  await page.screenshot({ path: join(SHOTS, "farm-phone.png") });
  await page.goto(`${ui}/ui#/session/${SESSION}`);
  await page.waitForSelector("#feed li");
  const unnamed = await page.$$eval("button, select, a, input", (nodes) =>
    nodes.filter((n) => !(n.textContent.trim() || n.getAttribute("aria-label") || n.closest("label"))).map((n) => n.outerHTML),
  );
  assert.deepEqual(unnamed, []);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the session page is ${overflow} px wider than a phone`);
  await page.screenshot({ path: join(SHOTS, "session-phone.png") });
  await page.setViewportSize({ width: 1280, height: 800 });
});

/** Text whose contrast with what is behind it is under 4.5:1 (WCAG AA). */
const lowContrast = () =>
  page.evaluate(() => {
    const luminance = (colour) => {
      const [r, g, b] = colour.match(/[\d.]+/g).slice(0, 3).map((v) => {
        const c = Number(v) / 255;
        return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
      });
      return 0.2126 * r + 0.7152 * g + 0.0722 * b;
    };
    const behind = (node) => {
      for (let e = node; e; e = e.parentElement) {
        const c = getComputedStyle(e).backgroundColor;
        if (c !== "rgba(0, 0, 0, 0)" && c !== "transparent") return c;
      }
      return "rgb(255, 255, 255)";
    };
    const low = [];
    for (const node of document.querySelectorAll("body *")) {
      const hasText = [...node.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
      if (!hasText || !node.getClientRects().length) continue;
      const [a, b] = [luminance(getComputedStyle(node).color), luminance(behind(node))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      if (ratio < 4.5) low.push(`${node.tagName}.${node.className}: ${ratio.toFixed(2)}`);
    }
    return low;
  });

test("text on every page has a contrast of at least 4.5:1", { timeout: 60_000 }, async () => {
  await page.goto(`${ui}/ui#/session/${SESSION}`);
  const hand = await (await page.waitForSelector("#hands a", { timeout: 20_000 })).getAttribute("href");
  for (const [route, ready] of [["#/farm", "#farm-table tbody tr"], [`#/session/${SESSION}`, "#feed li"], [hand, "#timeline li[data-order]"], ["#/server", "#shards tr"]]) {
    await page.goto(`${ui}/ui${route}`);
    await page.waitForSelector(ready, { timeout: 20_000 });
    assert.deepEqual(await lowContrast(), [], `contrast on ${route}`);
  }
});

test("nothing went wrong in the page: no script errors, nothing refused by its CSP", () => {
  // Restart reconnects log network errors; those are expected, not script errors.
  const real = consoleErrors.filter((e) => !/ERR_CONNECTION_REFUSED|Failed to load resource|EventSource/.test(e));
  assert.deepEqual(real, []);
});
