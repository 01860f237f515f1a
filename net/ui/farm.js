// Farm: every live session with its event rate, last event type, ante/round/money
// from its latest GAME_STATE and the time since its last event. Sessions silent
// for STALE_MS are greyed out. Reads the raw stream of every session.
import { el, num, ago, topicSession, describe, openStream } from "./lib.js";

const STALE_MS = 30_000;
const RATE_WINDOW_MS = 10_000;
const BACKFILL_MS = 60_000;

export function mount(view, [staleSeconds]) {
  // `#/farm?stale=N` marks sessions stale after N seconds instead of 30.
  const staleMs = staleSeconds ? Number(staleSeconds) * 1000 : STALE_MS;
  const sessions = new Map();
  const body = el("tbody");
  const summary = el("p", { class: "hint", id: "farm-summary", "aria-live": "polite" }, "Waiting for events…");
  view.append(
    el("h1", {}, "Farm"),
    el("p", { class: "hint" }, `Sessions that sent events in the last ${BACKFILL_MS / 1000} s, live. Silent for ${staleMs / 1000} s: stale.`),
    summary,
    el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        { id: "farm-table" },
        el("caption", { class: "visually-hidden" }, "Live sessions"),
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            el("th", { scope: "col" }, "Session"),
            el("th", { scope: "col", class: "num" }, "Events/s"),
            el("th", { scope: "col" }, "Last event"),
            el("th", { scope: "col", class: "num" }, "Ante"),
            el("th", { scope: "col", class: "num" }, "Round"),
            el("th", { scope: "col", class: "num" }, "Money"),
            el("th", { scope: "col", class: "farm-extra" }, "Phase"),
            el("th", { scope: "col", class: "num farm-extra" }, "Events"),
            el("th", { scope: "col" }, "Last seen"),
          ),
        ),
        body,
      ),
    ),
  );

  const stream = openStream({
    pattern: "balatro.> -balatro.*.aggregated",
    from: `time:${Date.now() - BACKFILL_MS}`,
    label: "live: every session",
    onDelivery(delivery) {
      const key = topicSession(delivery.topic);
      if (!key) return;
      const { type, body: event } = describe(delivery);
      const s = sessions.get(key) ?? { key, id: event.sessionId ?? key, times: [], count: 0 };
      // Time of the event on the server: when it became durable (its arrival).
      const at = Date.parse(event.timing?.publishedAt ?? event.timing?.receivedAt ?? "") || Date.now();
      s.times.push(at);
      s.count += 1;
      s.lastType = type;
      s.lastAt = Math.max(s.lastAt ?? 0, at);
      if (event.gameState) {
        const g = event.gameState;
        s.ante = g.ante ?? s.ante;
        s.round = g.round ?? s.round;
        s.money = g.money ?? s.money;
        s.phase = g.phase || s.phase;
      }
      sessions.set(key, s);
      schedule();
    },
  });

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      render();
    });
  }

  // Rows are updated in place, so keyboard focus on a session link survives.
  function row(s) {
    if (s.row) return s.row;
    const cells = {};
    const cell = (name, cls) => (cells[name] = el("td", { class: cls }));
    const link = el("a", { href: `#/session/${encodeURIComponent(s.key)}` }, s.id);
    s.row = el(
      "tr",
      { "data-session": s.key },
      el("td", {}, link),
      cell("rate", "num"),
      cell("type"),
      cell("ante", "num"),
      cell("round", "num"),
      cell("money", "num"),
      cell("phase", "farm-extra"),
      cell("count", "num farm-extra"),
      cell("seen"),
    );
    s.cells = cells;
    return s.row;
  }

  function render() {
    const now = Date.now();
    const rows = [...sessions.values()].sort((a, b) => (b.lastAt ?? 0) - (a.lastAt ?? 0));
    let live = 0;
    rows.forEach((s, i) => {
      while (s.times.length && s.times[0] < now - RATE_WINDOW_MS) s.times.shift();
      const stale = now - s.lastAt > staleMs;
      if (!stale) live += 1;
      const tr = row(s);
      tr.classList.toggle("stale", stale);
      const c = s.cells;
      c.rate.textContent = num(s.times.length / (RATE_WINDOW_MS / 1000), 1);
      c.type.textContent = s.lastType ?? "–";
      c.ante.textContent = num(s.ante);
      c.round.textContent = num(s.round);
      c.money.textContent = num(s.money);
      c.phase.textContent = s.phase ?? "–";
      c.count.textContent = num(s.count, 0);
      c.seen.textContent = ago(now - s.lastAt);
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] ?? null);
    });
    summary.textContent = rows.length ? `${live} live, ${rows.length - live} stale` : "Waiting for events…";
  }

  const timer = setInterval(render, 1000);
  return () => {
    clearInterval(timer);
    stream.close();
  };
}
