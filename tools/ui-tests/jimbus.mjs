// Test helpers: start the real jimbus binary on loopback (ports chosen by the
// kernel, read back from its "jimbus ready" log line), post events in the
// field mod's JSON dialect, read /metrics, and build a scored hand.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

const ROOT = resolve(new URL("../..", import.meta.url).pathname);

/** Starts `jimbus serve`; resolves to { http, base, log, restart(), stop() }. */
export async function startJimbus(extra = []) {
  const bin = process.env.JIMBUS_BIN || join(ROOT, "target/debug/jimbus");
  const dir = mkdtempSync(join(tmpdir(), "jimbus-ui-"));
  const log = [];
  let child = null;
  // A test run that is interrupted or times out must not leave the server behind.
  const kill = () => child && child.exitCode === null && child.kill("SIGKILL");
  process.once("exit", kill);
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.once(signal, () => {
      kill();
      process.exit(1);
    });
  }
  const launch = (http, grpc) => {
    child = spawn(
      bin,
      ["--log-format", "json", "serve", "--http", http, "--grpc", grpc, "--data-dir", join(dir, "data"), ...extra],
      { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info" } },
    );
    const started = child;
    return new Promise((resolveReady, reject) => {
      const timer = setTimeout(() => reject(new Error(`jimbus did not become ready:\n${log.join("\n")}`)), 60_000);
      started.on("exit", (code) => reject(new Error(`jimbus exited with ${code}:\n${log.join("\n")}`)));
      createInterface({ input: started.stderr }).on("line", (line) => {
        log.push(line);
        if (line.includes('"jimbus ready"')) {
          clearTimeout(timer);
          const ready = JSON.parse(line);
          resolveReady({ http: ready.http, grpc: ready.grpc });
        }
      });
    });
  };
  const terminate = async () => {
    if (child && child.exitCode === null) {
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
  };
  const addrs = await launch("127.0.0.1:0", "127.0.0.1:0");
  return {
    http: addrs.http,
    base: `http://${addrs.http}`,
    log,
    /** Stops the server (SIGTERM) and starts it again on the same ports and data. */
    async restart() {
      await terminate();
      await launch(addrs.http, addrs.grpc);
    },
    async stop() {
      await terminate();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** POSTs a body to the mod API; throws unless 2xx with every event accepted. */
export async function post(base, body, path = "/api/v1/events/batch") {
  const response = await fetch(`${base}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  const answer = await response.json();
  if (!response.ok || (answer.rejected ?? []).length) throw new Error(`${path} answered ${response.status}: ${JSON.stringify(answer)}`);
  return answer;
}

/** A batch in the mod's dialect, every event of `session`. */
export function batch(session, events) {
  return {
    batch_id: `b-${Math.random().toString(16).slice(2)}`,
    source: "BalatroMCP",
    session_id: session,
    timestamp: Date.now(),
    events: events.map((e, i) => ({ event_id: `${session}-${Date.now()}-${i}-${Math.random()}`, source: "BalatroMCP", version: 1, timestamp: Date.now(), session_id: session, ...e })),
  };
}

export function gameState(ante, round, money) {
  return { type: "GAME_STATE", payload: { ante, round, money, chips: 0, mult: 0, hands_remaining: 4, discards_remaining: 3, game_state: "SELECTING_HAND", jokers: [] } };
}

// One group of five triggers and the depth the aggregator must give each:
// Blueprint copies the next trigger (inferred parent), and explicit parents
// add one to their parent's depth.
const GROUP = [
  { name: "Joker", position: 1, parent: undefined, depth: 0 },
  { name: "Blueprint", position: 2, parent: undefined, depth: 0 },
  { name: "Scary Face", position: 3, parent: undefined, depth: 1 },
  { name: "Brainstorm", position: 4, parent: "Blueprint", depth: 1 },
  { name: "Greedy Joker", position: 5, parent: "Brainstorm", depth: 2 },
];

/** A scored hand of `count` triggers: HAND_EVAL_START, JOKER_TRIGGER…, HAND_EVAL_COMPLETE. */
export function scoredHand(count) {
  const expected = [];
  const triggers = [];
  for (let i = 0; i < count; i += 1) {
    const g = GROUP[i % GROUP.length];
    expected.push({
      name: g.name,
      depth: g.depth,
      parent: g.parent ?? (g.name === "Scary Face" ? "Blueprint" : ""),
      xMult: g.name === "Brainstorm" ? "×1.5" : "",
    });
    triggers.push({
      type: "SCORING",
      subtype: "JOKER_TRIGGER",
      payload: {
        joker: { name: g.name, id: `j${g.position}`, position: g.position },
        trigger_index: i + 1,
        chips: 10 + (i % 3),
        mult: i % 2 ? 2 : 0,
        score_contribution: 5,
        ...(g.name === "Brainstorm" ? { x_mult: 1.5 } : {}),
        ...(g.parent ? { parent: g.parent } : {}),
      },
    });
  }
  const events = [
    { type: "SCORING", subtype: "HAND_EVAL_START", payload: { hand_type: "Flush", cards: ["AH", "KH", "QH", "JH", "9H"] } },
    ...triggers,
    { type: "SCORING", subtype: "HAND_EVAL_COMPLETE", payload: { final_chips: 300, final_mult: 40, triggers: count, duration_ms: 120 } },
  ];
  return { events, expected };
}

/** /metrics as a map of "name{labels}" → value. */
export async function metrics(base) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const out = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const at = line.lastIndexOf(" ");
    out.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return out;
}

/** Reads /api/v1/stream until `until(deliveries)` holds, or fails after `ms`. */
export async function readStream(base, query, until, ms = 10_000) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), ms);
  const seen = [];
  try {
    const response = await fetch(`${base}/api/v1/stream?${new URLSearchParams(query)}`, { signal: controller.signal });
    const decoder = new TextDecoder();
    let text = "";
    for await (const chunk of response.body) {
      text += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = text.indexOf("\n\n")) >= 0) {
        const block = text.slice(0, end);
        text = text.slice(end + 2);
        const data = block.split("\n").find((l) => l.startsWith("data: "));
        if (data) seen.push(JSON.parse(data.slice(6)));
      }
      if (until(seen)) return seen;
    }
  } catch (e) {
    if (e.name !== "AbortError") throw e;
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
  throw new Error(`the stream did not deliver what was awaited within ${ms} ms (got ${seen.length})`);
}
