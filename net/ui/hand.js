// Hand: one aggregated message (one scored hand) as a timeline of its triggers:
// joker name and position, depth, chips/mult deltas, x_mult (read from the raw
// trigger events, which the aggregated message does not copy it from), score
// contribution, the parent a retrigger or copy (Blueprint, Brainstorm, …) came
// from, and the running score. Rows are built as one string and laid out lazily
// (content-visibility), so thousands of triggers render in one pass.
import { esc, num, delta, position, openStream, setConnection, el } from "./lib.js";

const NOT_FOUND_MS = 10_000;

/** For each trigger, the order of the trigger that caused it (or -1). */
export function parents(triggers) {
  const lastByName = new Map();
  return triggers.map((t) => {
    const name = (t.parentJoker ?? "").toLowerCase();
    let parent = -1;
    if (name && lastByName.has(name)) {
      const candidates = lastByName.get(name);
      const wanted = (t.depth ?? 0) - 1;
      parent = candidates.findLast((c) => c.depth === wanted)?.order ?? candidates[candidates.length - 1].order;
    }
    const own = (t.jokerName ?? "").toLowerCase();
    if (!lastByName.has(own)) lastByName.set(own, []);
    lastByName.get(own).push({ order: t.order ?? 0, depth: t.depth ?? 0 });
    return parent;
  });
}

function spark(values) {
  if (values.length < 2) return "";
  const finite = values.filter(Number.isFinite);
  const min = Math.min(0, ...finite);
  const max = Math.max(1, ...finite);
  const points = values.map((v, i) => {
    const x = (i / (values.length - 1)) * 1000;
    const y = 60 - ((Number.isFinite(v) ? v : max) - min) / (max - min) * 56 - 2;
    return `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return `<svg class="spark" viewBox="0 0 1000 64" preserveAspectRatio="none" role="img" aria-label="Running score over the hand's ${values.length} triggers"><path d="${points.join("")}"/></svg>`;
}

function summary(hand, at) {
  const info = hand.cascadeInfo ?? {};
  const base = hand.base ?? {};
  const card = (label, value, id) => `<div class="card"><dt>${esc(label)}</dt><dd${id ? ` id="${id}"` : ""}>${esc(value)}</dd></div>`;
  return `<dl class="cards">
    ${card("Hand", `${info.handType || "legacy triggers"}${info.part > 1 || (info.part && !info.finalPart) ? ` (part ${info.part}${info.finalPart ? ", last" : ""})` : ""}`)}
    ${card("Triggers", num(info.triggerCount ?? 0, 0), "trigger-count")}
    ${card("Cascade depth", num(info.depth ?? 0, 0), "cascade-depth")}
    ${card("Score Δ", num(info.scoreDelta ?? 0))}
    ${card("Chips Δ / mult Δ", `${num(info.chipsDelta ?? 0)} / ${num(info.multDelta ?? 0)}`)}
    ${card("Duration", `${num(info.durationMs ?? 0)} ms`)}
    ${card("Ante · round · money", `${num(base.ante)} · ${num(base.round)} · $${num(base.money)}`)}
    ${card("Complete", info.complete ? "yes" : "no (timed out)")}
  </dl>
  <p class="hint">Cards: ${esc((info.cards ?? []).join(", ") || "–")} · cascade <code>${esc(info.cascadeId ?? "")}</code> · position ${at.partition}/${at.offset}</p>`;
}

function rows(triggers) {
  const parentOf = parents(triggers);
  let running = 0;
  const values = [];
  const html = triggers.map((t, i) => {
    running += Number(t.scoreContribution ?? 0);
    values.push(running);
    const depth = t.depth ?? 0;
    const chips = delta(t.chips);
    const mult = delta(t.mult);
    const p = parentOf[i];
    const parent = t.parentJoker
      ? p >= 0
        ? `<a href="#" data-to="${p}">↳ ${esc(t.parentJoker)} #${p}</a>`
        : `↳ ${esc(t.parentJoker)}`
      : "";
    return `<li id="t-${t.order ?? i}" tabindex="-1" data-order="${t.order ?? i}" data-depth="${depth}">` +
      `<span class="n">${t.order ?? i}</span>` +
      `<span class="joker${depth > 8 ? " deep" : ""}" data-depth="${depth}">${esc(t.jokerName || t.context || "?")}</span>` +
      `<span class="pos">${t.position ?? 0}</span><span class="dep">${depth}</span>` +
      `<span class="d chips ${chips.cls}">${chips.text}</span><span class="d mult ${mult.cls}">${mult.text}</span>` +
      `<span class="d xmult" data-seq="${esc(t.sequence ?? "")}"></span>` +
      `<span class="d contrib">${num(t.scoreContribution ?? 0)}</span>` +
      `<span class="parent">${parent}</span><span class="d run">${num(running)}</span></li>`;
  });
  return { html: html.join(""), values };
}

const HEAD = `<li class="head" aria-hidden="true"><span class="n">#</span><span class="joker">Joker</span><span class="pos">Pos</span><span class="dep">Depth</span><span class="d chips">Chips</span><span class="d mult">Mult</span><span class="d xmult">×Mult</span><span class="d contrib">Score +</span><span class="parent">Caused by</span><span class="d run">Running</span></li>`;

function render(view, hand, at) {
  const triggers = hand.triggers ?? [];
  const started = performance.now();
  const { html, values } = rows(triggers);
  const box = document.createElement("div");
  box.innerHTML = `${summary(hand, at)}<h2 id="timeline-h">Triggers in order</h2>${spark(values)}
    <p class="hint">Depth 0 is a direct trigger; each retrigger or copy adds one. "Caused by" links to the trigger it came from. Running is the sum of the score contributions so far.</p>
    <ol class="timeline" id="timeline" aria-labelledby="timeline-h">${HEAD}${html}</ol>`;
  view.append(...box.childNodes);
  view.dataset.renderMs = String(Math.round(performance.now() - started));
  view.querySelector("#timeline").addEventListener("click", (e) => {
    const link = e.target.closest("a[data-to]");
    if (!link) return;
    e.preventDefault();
    const row = view.querySelector(`#t-${link.dataset.to}`);
    row?.scrollIntoView({ block: "center" });
    row?.focus({ preventScroll: true });
  });
}

/**
 * Fills the ×Mult column from the raw SCORING/JOKER_TRIGGER events of the hand
 * (its triggers name their raw sequences). Returns the stream's cleanup.
 */
function fillXMult(view, key, hand) {
  const cells = new Map([...view.querySelectorAll("#timeline .xmult[data-seq]")].map((c) => [c.dataset.seq, c]));
  const sequences = [...cells.keys()].filter(Boolean).map(Number);
  const first = Date.parse(hand.cascadeInfo?.firstTriggerAt ?? "");
  if (!sequences.length || Number.isNaN(first)) return () => {};
  const last = Math.max(...sequences);
  let left = cells.size;
  const stream = openStream({
    pattern: `balatro.${key}.SCORING`,
    // Records are stored after they arrive: none of the hand's is older.
    from: `time:${first - 1}`,
    label: "loaded",
    onDelivery(delivery) {
      const event = delivery.event;
      const sequence = Number(event?.sequence ?? 0);
      const cell = cells.get(String(sequence));
      if (cell) {
        const extra = event.scoring?.jokerTrigger?.extra ?? {};
        const x = extra.x_mult ?? extra.xMult ?? extra.Xmult_mod;
        cell.textContent = x === undefined || x === null || Number(x) === 1 ? "" : `×${num(x)}`;
        cells.delete(String(sequence));
        left -= 1;
      }
      if (!left || sequence >= last) stream.close();
    },
  });
  return () => stream.close();
}

export function mount(view, [key, partition, offset]) {
  const at = { partition: Number(partition), offset: Number(offset) };
  const status = el("p", { class: "hint", role: "status" }, "Loading the hand…");
  view.append(
    el("p", { class: "crumbs" }, el("a", { href: "#/farm" }, "Farm"), " / ", el("a", { href: `#/session/${encodeURIComponent(key)}` }, key), " / hand"),
    el("h1", {}, "Hand at ", el("code", {}, `${at.partition}/${at.offset}`)),
    status,
  );
  let done = false;
  let closeXMult = () => {};
  const finish = (message) => {
    done = true;
    stream.close();
    clearTimeout(timer);
    if (message) status.textContent = message;
    else status.remove();
    setConnection("loaded", true);
  };
  const stream = openStream({
    pattern: `balatro.${key}.aggregated`,
    from: `offset:${at.offset}`,
    label: "loading",
    onDelivery(delivery) {
      if (done) return;
      const here = position(delivery);
      if (here.partition !== at.partition) return;
      if (here.offset === at.offset && delivery.aggregated) {
        finish();
        render(view, delivery.aggregated, at);
        closeXMult = fillXMult(view, key, delivery.aggregated);
      } else if (here.offset > at.offset) {
        finish("No aggregated message of this session is at that position.");
      }
    },
  });
  const timer = setTimeout(() => done || finish("No aggregated message of this session is at that position."), NOT_FOUND_MS);
  return () => {
    clearTimeout(timer);
    stream.close();
    closeXMult();
  };
}
