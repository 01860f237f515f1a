// Session: one session's raw stream, newest first, filterable by type, with
// pause and resume (resume continues from the last event shown, without gaps),
// and its scored hands (score, trigger count, cascade depth) from the
// aggregated stream.
import { el, esc, num, describe, position, openStream, setConnection } from "./lib.js";

const KEEP = 2000;

function detail(type, e) {
  const p = e.gameState ?? e.scoring?.jokerTrigger ?? e.jokerTrigger ?? e.moneyChanged ?? e.heartbeat ?? e.scoring ?? e.generic;
  if (e.gameState) return `ante ${num(p.ante)} · round ${num(p.round)} · $${num(p.money)} · ${p.phase ?? ""}`;
  if (e.scoring?.jokerTrigger) {
    const t = e.scoring.jokerTrigger;
    return `${t.joker?.name ?? "?"} #${t.joker?.position ?? "?"} chips ${num(t.chips ?? 0)} mult ${num(t.mult ?? 0)}${t.parent ? ` ← ${t.parent}` : ""}`;
  }
  if (e.scoring?.handEvalStart) return `${e.scoring.handEvalStart.handType ?? ""} [${(e.scoring.handEvalStart.cards ?? []).join(", ")}]`;
  if (e.scoring?.handEvalComplete) return JSON.stringify(e.scoring.handEvalComplete);
  return p ? JSON.stringify(p).slice(0, 200) : "";
}

export function mount(view, [key]) {
  const items = [];
  const types = new Set();
  let filter = "";
  let stream = null;
  let paused = false;
  let resumeId = "";

  const feed = el("ol", { class: "feed", id: "feed", "aria-label": "Events, newest first", reversed: true });
  const count = el("span", { id: "feed-count" }, "0 events");
  const select = el("select", { id: "type-filter", onchange: () => ((filter = select.value), redraw()) }, el("option", { value: "" }, "every type"));
  const pause = el("button", { id: "pause", type: "button", "aria-pressed": "false", onclick: toggle }, "Pause");
  const hands = el("tbody", { id: "hands" });
  view.append(
    el("p", { class: "crumbs" }, el("a", { href: "#/farm" }, "Farm"), " / session"),
    el("h1", {}, "Session ", el("code", {}, key)),
    el(
      "div",
      { class: "split" },
      el(
        "section",
        { "aria-labelledby": "raw-h" },
        el("h2", { id: "raw-h" }, "Raw stream"),
        el("div", { class: "toolbar" }, el("label", {}, "Type", select), pause, el("span", { class: "hint" }, count)),
        feed,
      ),
      el(
        "section",
        { "aria-labelledby": "hands-h" },
        el("h2", { id: "hands-h" }, "Hands"),
        el(
          "div",
          { class: "table-wrap" },
          el(
            "table",
            {},
            el("caption", { class: "visually-hidden" }, "Scored hands, newest first"),
            el(
              "thead",
              {},
              el("tr", {}, ["Hand", "Score", "Triggers", "Depth", "Complete"].map((h, i) => el("th", { scope: "col", class: i && i < 4 ? "num" : "" }, h))),
            ),
            hands,
          ),
        ),
      ),
    ),
  );

  function li(item) {
    const node = document.createElement("li");
    node.dataset.seq = item.seq;
    node.dataset.type = item.type;
    node.innerHTML = `<span class="seq">#${esc(item.seq)}</span><span class="type">${esc(item.type)}</span><span class="detail">${esc(item.detail)}</span>`;
    return node;
  }

  function redraw() {
    const shown = items.filter((i) => !filter || i.type === filter).slice(-KEEP);
    feed.replaceChildren(...shown.reverse().map(li));
    count.textContent = `${items.length} events${paused ? " (paused)" : ""}`;
  }

  let queued = [];
  function flush() {
    const fresh = queued.filter((i) => !filter || i.type === filter);
    queued = [];
    const fragment = document.createDocumentFragment();
    for (const item of fresh.reverse()) fragment.append(li(item));
    feed.prepend(fragment);
    while (feed.childElementCount > KEEP) feed.lastElementChild.remove();
    count.textContent = `${items.length} events${paused ? " (paused)" : ""}`;
  }

  function onRaw(delivery, id) {
    resumeId = id;
    const { type, body } = describe(delivery);
    const item = { seq: body.sequence ?? "?", type, detail: detail(type, body) };
    items.push(item);
    if (items.length > KEEP * 2) items.splice(0, items.length - KEEP);
    if (!types.has(type)) {
      types.add(type);
      select.append(el("option", { value: type }, type));
    }
    if (!queued.length) requestAnimationFrame(flush);
    queued.push(item);
  }

  function start() {
    stream = openStream({
      pattern: `balatro.${key}.> -balatro.${key}.aggregated`,
      from: "earliest",
      resume: resumeId,
      label: `live: ${key}`,
      onDelivery: onRaw,
    });
  }

  function toggle() {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) {
      stream.close();
      setConnection("paused", false);
    } else {
      start();
    }
    count.textContent = `${items.length} events${paused ? " (paused)" : ""}`;
  }

  const handStream = openStream({
    pattern: `balatro.${key}.aggregated`,
    from: "earliest",
    label: `live: ${key}`,
    onDelivery(delivery) {
      const hand = delivery.aggregated;
      const info = hand?.cascadeInfo;
      if (!info) return; // a game-state flush, not a hand
      const { partition, offset } = position(delivery);
      const part = info.part > 1 || (info.part && !info.finalPart) ? ` (part ${info.part})` : "";
      hands.prepend(
        el(
          "tr",
          { "data-offset": offset },
          el("td", {}, el("a", { href: `#/hand/${encodeURIComponent(key)}/${partition}/${offset}` }, `${info.handType || "legacy triggers"}${part}`)),
          el("td", { class: "num" }, num(info.scoreDelta ?? 0)),
          el("td", { class: "num" }, num(info.triggerCount ?? 0, 0)),
          el("td", { class: "num" }, num(info.depth ?? 0, 0)),
          el("td", {}, info.complete ? "yes" : "no (timed out)"),
        ),
      );
    },
  });

  start();
  return () => {
    stream.close();
    handStream.close();
  };
}
