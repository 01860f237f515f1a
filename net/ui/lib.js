// Shared helpers of the web view: DOM building, formatting, the event stream
// (Server-Sent Events from /api/v1/stream) and the Prometheus text parser.

/** Escapes text for innerHTML. */
export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

/** Creates an element with attributes and children (strings become text). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A number for people: thousands separators, at most `digits` decimals, "∞" kept. */
export function num(value, digits = 2) {
  if (value === undefined || value === null || value === "") return "–";
  const n = typeof value === "number" ? value : Number(value);
  if (Number.isNaN(n)) return String(value);
  if (!Number.isFinite(n)) return n > 0 ? "∞" : "−∞";
  return n.toLocaleString("en-US", { maximumFractionDigits: digits });
}

/** A signed delta, with the class to colour it. */
export function delta(value) {
  const n = Number(value ?? 0);
  if (!n) return { text: "0", cls: "" };
  return { text: (n > 0 ? "+" : "") + num(n), cls: n > 0 ? "plus" : "minus" };
}

/** "4 s ago", "3 min ago". */
export function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}

/** The session token of a topic `balatro.<session>.<type>` (the one patterns use). */
export function topicSession(topic) {
  const parts = String(topic ?? "").split(".");
  return parts.length >= 3 && parts[0] === "balatro" ? parts[1] : "";
}

/** What kind of delivery this is and its type label (type/subtype for raw events). */
export function describe(delivery) {
  if (delivery.event) {
    const e = delivery.event;
    return { kind: "event", type: e.subtype ? `${e.eventType}/${e.subtype}` : e.eventType, body: e };
  }
  if (delivery.aggregated) return { kind: "aggregated", type: "aggregated", body: delivery.aggregated };
  if (delivery.deadLetter) return { kind: "deadletter", type: "deadletter", body: delivery.deadLetter };
  return { kind: "unknown", type: "?", body: {} };
}

/** The position of a delivery, as partition/offset (protobuf JSON omits zeros). */
export function position(delivery) {
  return { partition: Number(delivery.partition ?? 0), offset: Number(delivery.offset ?? 0) };
}

const status = () => document.getElementById("connection");

/** Shows the state of the page's live connection in the header. */
export function setConnection(text, live) {
  const node = status();
  if (!node) return;
  node.textContent = text;
  node.className = `connection ${live ? "live" : "down"}`;
}

/**
 * Opens /api/v1/stream. `onDelivery(delivery, id)` gets each delivery;
 * `resume` (an id it gave before) continues where that left off, without gaps.
 * Returns { close(), lastId() }.
 */
export function openStream({ pattern, from = "latest", resume = "", onDelivery, label = "live" }) {
  let last = resume;
  let closed = false;
  let source = null;
  let retry = null;
  const connect = () => {
    const query = new URLSearchParams({ pattern, from });
    if (last) query.set("last_event_id", last);
    source = new EventSource(`/api/v1/stream?${query}`);
    source.onopen = () => setConnection(label, true);
    source.onerror = () => {
      if (closed) return;
      setConnection("reconnecting…", false);
      // EventSource reconnects by itself after a dropped connection, sending
      // Last-Event-ID; after a refused one (a 503) it gives up: start again
      // from the last event seen, so nothing is lost either way.
      if (source.readyState === EventSource.CLOSED && !retry) {
        retry = setTimeout(() => {
          retry = null;
          if (!closed) connect();
        }, 2000);
      }
    };
    source.onmessage = (message) => {
      last = message.lastEventId || last;
      let delivery;
      try {
        delivery = JSON.parse(message.data);
      } catch {
        return;
      }
      onDelivery(delivery, last);
    };
  };
  connect();
  return {
    close() {
      closed = true;
      clearTimeout(retry);
      source.close();
    },
    lastId: () => last,
  };
}

/** Parses Prometheus text into [{name, labels, value}]. */
export function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[3] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    samples.push({ name: match[1], labels, value: Number(match[4]) });
  }
  return samples;
}

/** The sum of every sample of a metric (optionally filtered by labels). */
export function total(samples, name, where = {}) {
  return samples
    .filter((s) => s.name === name && Object.entries(where).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/** A quantile from a Prometheus histogram's cumulative buckets (upper bound of the bucket). */
export function quantile(samples, name, q) {
  const buckets = samples
    .filter((s) => s.name === `${name}_bucket`)
    .map((s) => ({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), count: s.value }));
  const merged = new Map();
  for (const b of buckets) merged.set(b.le, (merged.get(b.le) ?? 0) + b.count);
  const sorted = [...merged].sort((a, b) => a[0] - b[0]);
  const count = sorted.length ? sorted[sorted.length - 1][1] : 0;
  if (!count) return null;
  for (const [le, c] of sorted) if (c >= q * count) return le;
  return null;
}

/** Seconds as "1.2 ms" / "340 µs". */
export function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (!Number.isFinite(value)) return "> largest bucket";
  if (value >= 1) return `${num(value, 2)} s`;
  if (value >= 0.001) return `${num(value * 1000, 2)} ms`;
  return `${num(value * 1e6, 0)} µs`;
}

/** Bytes as "12.3 MiB". */
export function bytes(value) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = Number(value ?? 0);
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${num(n, i ? 1 : 0)} ${units[i]}`;
}
