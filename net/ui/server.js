// Server: the server's own /metrics (Prometheus text), read every two seconds:
// ingest, shards with queue depth and adaptive batch size, memory budget,
// fsync latency, subscribers and their delivery lag, dead letters. Nothing is
// counted here that the server does not export.
import { el, esc, num, parseMetrics, total, quantile, seconds, bytes, setConnection } from "./lib.js";

const EVERY_MS = 2000;

function card(label, value, id, note = "") {
  return `<div class="card"><dt>${esc(label)}</dt><dd id="${id}">${value}</dd>${note ? `<p class="hint">${note}</p>` : ""}</div>`;
}

function byShard(samples, name) {
  const out = new Map();
  for (const s of samples) if (s.name === name && s.labels.shard !== undefined) out.set(s.labels.shard, s.value);
  return out;
}

function shardRows(m) {
  const depth = byShard(m, "jimbus_shard_queue_depth");
  const batch = byShard(m, "jimbus_shard_batch_target");
  const messages = byShard(m, "jimbus_aggregate_messages_total");
  const held = byShard(m, "jimbus_aggregate_bytes_held");
  const capacity = total(m, "jimbus_shard_queue_capacity");
  const shards = [...new Set([...depth.keys(), ...batch.keys()])].sort((a, b) => a - b);
  return shards
    .map(
      (s) => `<tr data-shard="${esc(s)}"><th scope="row">${esc(s)}</th><td class="num">${num(depth.get(s), 0)}</td>
      <td class="num">${num(capacity, 0)}</td><td class="num">${num(batch.get(s), 0)}</td>
      <td class="num">${num(messages.get(s), 0)}</td><td class="num">${held.has(s) ? bytes(held.get(s)) : "–"}</td></tr>`,
    )
    .join("");
}

function consumerRows(m) {
  const rows = m.filter((s) => s.name === "jimbus_consumer_backlog_records");
  if (!rows.length) return `<tr><td colspan="4" class="empty">No durable consumers.</td></tr>`;
  return rows
    .map((s) => {
      const age = m.find((a) => a.name === "jimbus_consumer_oldest_unacked_age_seconds" && a.labels.consumer === s.labels.consumer && a.labels.shard === s.labels.shard);
      return `<tr><td>${esc(s.labels.consumer)}</td><td class="num">${esc(s.labels.shard)}</td><td class="num">${num(s.value, 0)}</td><td class="num">${age ? seconds(age.value) : "–"}</td></tr>`;
    })
    .join("");
}

function draw(view, m, rate) {
  const used = total(m, "jimbus_budget_used_bytes");
  const limit = total(m, "jimbus_budget_limit_bytes");
  const accepted = total(m, "jimbus_events_accepted_total") + total(m, "jimbus_grpc_events_accepted_total");
  // On the embedded log every subscriber has one reader per shard, each counted.
  const shards = byShard(m, "jimbus_shard_queue_depth").size;
  const subscribers = total(m, "jimbus_subscriptions") / (shards || 1);
  view.querySelector("#server-cards").innerHTML = [
    card("Events accepted", num(accepted, 0), "ingest-total", `${num(rate, 1)} events/s now`),
    card("Records appended", num(total(m, "jimbus_log_appended_records_total"), 0), "appended", bytes(total(m, "jimbus_log_appended_bytes_total"))),
    card("Memory budget", `${bytes(used)} / ${bytes(limit)}`, "budget", `<meter min="0" max="${limit || 1}" value="${used}" aria-label="Memory budget in use">${num((100 * used) / (limit || 1), 0)}%</meter> denials: ${num(total(m, "jimbus_budget_denials_total"), 0)}`),
    card("fsync p50 / p99", `${seconds(quantile(m, "jimbus_log_fsync_seconds", 0.5))} / ${seconds(quantile(m, "jimbus_log_fsync_seconds", 0.99))}`, "fsync", `${num(total(m, "jimbus_log_fsync_seconds_count"), 0)} fsyncs`),
    card("Subscribers", num(subscribers, 0), "subscribers", `browser streams among them: ${num(total(m, "jimbus_sse_streams"), 0)}`),
    card("Delivery lag p50 / p99", `${seconds(quantile(m, "jimbus_delivery_lag_seconds", 0.5))} / ${seconds(quantile(m, "jimbus_delivery_lag_seconds", 0.99))}`, "lag"),
    card("Dead letters", num(total(m, "jimbus_deadletter_total"), 0), "deadletters", `after max deliveries: ${num(total(m, "jimbus_consumer_dead_lettered_total"), 0)}`),
    card("Hands aggregated", num(total(m, "jimbus_aggregate_hands_complete_total"), 0), "hands", `incomplete: ${num(total(m, "jimbus_aggregate_cascades_incomplete_total"), 0)}`),
  ].join("");
  view.querySelector("#shards").innerHTML = shardRows(m);
  view.querySelector("#consumers").innerHTML = consumerRows(m);
}

export function mount(view) {
  const head = (...names) => el("thead", {}, el("tr", {}, names.map((n, i) => el("th", { scope: "col", class: i ? "num" : "" }, n))));
  view.append(
    el("h1", {}, "Server"),
    el("p", { class: "hint" }, "From this server's ", el("a", { href: "/metrics" }, "/metrics"), `, every ${EVERY_MS / 1000} s.`),
    el("dl", { class: "cards", id: "server-cards" }),
    el("h2", { id: "shards-h" }, "Shards"),
    el("div", { class: "table-wrap" }, el("table", { "aria-labelledby": "shards-h" }, head("Shard", "Queue depth", "Queue capacity", "Batch size (adaptive)", "Aggregated messages", "Aggregator memory"), el("tbody", { id: "shards" }))),
    el("h2", { id: "consumers-h" }, "Durable consumers"),
    el("div", { class: "table-wrap" }, el("table", { "aria-labelledby": "consumers-h" }, head("Consumer", "Shard", "Backlog", "Oldest unacked"), el("tbody", { id: "consumers" }))),
  );
  let previous = null;
  let stopped = false;
  async function tick() {
    try {
      const response = await fetch("/metrics", { cache: "no-store" });
      if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
      const m = parseMetrics(await response.text());
      const now = performance.now();
      const accepted = total(m, "jimbus_events_accepted_total") + total(m, "jimbus_grpc_events_accepted_total");
      const rate = previous ? ((accepted - previous.accepted) * 1000) / (now - previous.at) : 0;
      previous = { accepted, at: now };
      if (stopped) return;
      draw(view, m, rate);
      setConnection("metrics read", true);
    } catch (e) {
      setConnection(String(e.message ?? e), false);
    }
  }
  tick();
  const timer = setInterval(tick, EVERY_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
