// The web view's router: #/farm (?stale=<seconds>), #/session/<session>, #/hand/<session>/<partition>/<offset>,
// #/server. Each page module exports mount(container, params) and returns its cleanup.
import { setConnection } from "./lib.js";
import * as farm from "./farm.js";
import * as session from "./session.js";
import * as hand from "./hand.js";
import * as server from "./server.js";

const routes = [
  { pattern: /^#\/farm(?:\?stale=(\d+))?$/, page: farm, nav: "farm" },
  { pattern: /^#\/session\/([^/]+)$/, page: session, nav: "farm" },
  { pattern: /^#\/hand\/([^/]+)\/(\d+)\/(\d+)$/, page: hand, nav: "farm" },
  { pattern: /^#\/server$/, page: server, nav: "server" },
];

let cleanup = null;

function route() {
  const hash = location.hash || "#/farm";
  const found = routes.map((r) => ({ r, m: r.pattern.exec(hash) })).find((x) => x.m);
  if (!found) {
    location.replace("#/farm");
    return;
  }
  if (cleanup) cleanup();
  cleanup = null;
  const view = document.getElementById("view");
  view.replaceChildren();
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === found.r.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  setConnection("connecting…", false);
  const params = found.m.slice(1).map((p) => (p === undefined ? p : decodeURIComponent(p)));
  cleanup = found.r.page.mount(view, params) ?? null;
  // Keyboard and screen-reader users land on the new page's content.
  view.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
