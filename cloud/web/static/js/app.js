// The dashboard shell: routes to pages, keeps the current page live (pushed changes over
// Server-Sent Events, live.js; polling while the stream is down) and patches it in place
// (morph.js: open tables, focus, scroll and chart zoom survive), and shows every failure the
// seed's way: 503 / unreachable -> the last data kept under a "stale since" banner
// (or, with nothing shown yet, a friendly message), an automatic retry after the 503's
// Retry-After with a visible countdown, and a "Retry now" button; any other problem -> its
// title and detail; never a blank page or a stack trace.

import * as api from "./api.js";
import { h } from "./dom.js";
import * as live from "./live.js";
import * as morph from "./morph.js";
import * as fmt from "./format.js";
import { createOutage, retryAfterSeconds } from "./outage.js";
import * as router from "./router.js";
import { alertDetailPage } from "./pages/alert-detail.js";
import { alertsPage } from "./pages/alerts.js";
import { apiKeysPage } from "./pages/api-keys.js";
import { channelsPage } from "./pages/channels.js";
import { devicePage } from "./pages/device.js";
import { modelsPage } from "./pages/models.js";
import { overviewPage } from "./pages/overview.js";
import { ruleFormPage, rulesPage } from "./pages/rules.js";

const ROUTES = [
  { parts: [], page: overviewPage },
  { parts: ["devices", ":id"], page: devicePage },
  { parts: ["alerts"], page: alertsPage },
  { parts: ["alerts", ":id"], page: alertDetailPage },
  { parts: ["rules"], page: rulesPage },
  { parts: ["rules", "new"], page: ruleFormPage },
  { parts: ["rules", ":id", "edit"], page: ruleFormPage },
  { parts: ["models"], page: modelsPage },
  { parts: ["models", ":source"], page: modelsPage },
  { parts: ["channels"], page: channelsPage },
  { parts: ["api-keys"], page: apiKeysPage },
];

const main = document.getElementById("main");
const liveStatus = document.getElementById("live-status");
const toastEl = document.getElementById("toast");

let generation = 0; // bumps on every navigation: late answers for an old view are dropped
let timer = null;
let lastKey = null;
let config = null;
let livePage = false;
let dataShown = false; // the page's own view is on screen (not an error view)
let updatedAt = null; // when it was last fetched
let refreshNow = null; // the current page's fetch-and-patch, for a tab shown again
let currentPage = null;
let pushing = false; // the event stream is open: changes arrive by push, no polling
let pushTimer = null;
const outage = createOutage(document.getElementById("outage"));

const DEFAULT_POLL_S = 10;
// With push, a page still refetches this often: "online" turns "offline" by the clock alone,
// and no write tells anyone.
const AGEING_S = 30;
const PUSH_DEBOUNCE_MS = 150; // a burst of notices (one sync batch: devices and gateways) -> one fetch

function pollSeconds() {
  if (pushing) return AGEING_S;
  const s = Number(config?.refresh_seconds);
  return Number.isFinite(s) && s > 0 ? Math.min(300, Math.max(1, s)) : DEFAULT_POLL_S;
}

export function toast(message) {
  toastEl.textContent = message;
  toastEl.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => toastEl.classList.remove("shown"), 4000);
}

async function loadConfig() {
  config = await api.get("/api/dashboard/config");
  return config;
}

function errorView(error, retry) {
  if (error instanceof api.ApiError && error.unavailable) {
    const wait = Number(error.problem.retryAfter);
    return h("section", { class: "problem unavailable", "aria-labelledby": "problem-title" },
      h("h1", { id: "problem-title" }, "The dashboard is temporarily unavailable"),
      h("p", {}, "IoTSphere could not reach its data just now (the database may be restarting or busy). " +
        "Nothing is lost: your gateways keep their readings until the cloud is back."),
      h("p", { class: "muted" }, "Trying again automatically in ",
        h("span", { "data-countdown": true }, `${retryAfterSeconds(error.problem.retryAfter)} s`), "."),
      h("button", { type: "button", id: "retry", onclick: retry }, "Retry now"));
  }
  if (error instanceof api.ApiError) {
    const p = error.problem;
    return h("section", { class: "problem", "aria-labelledby": "problem-title" },
      h("h1", { id: "problem-title" }, p.title),
      p.detail ? h("p", {}, p.detail) : null,
      Array.isArray(p.errors) && p.errors.length
        ? h("ul", {}, p.errors.map((e) => h("li", {}, `${e.path || "/"}: ${e.message}`))) : null,
      h("p", {}, h("a", { href: "#/" }, "Back to the overview")),
      h("button", { type: "button", id: "retry", class: "secondary", onclick: retry }, "Try again"));
  }
  console.error(error); // a bug of ours: the console has the details, the user a plain message
  return h("section", { class: "problem", "aria-labelledby": "problem-title" },
    h("h1", { id: "problem-title" }, "Something went wrong"),
    h("p", {}, "This page could not be shown. Reloading usually helps."),
    h("button", { type: "button", id: "retry", onclick: retry }, "Try again"));
}

function setLive(text, state) {
  liveStatus.textContent = text;
  liveStatus.dataset.state = state;
}

function stopPolling() {
  clearTimeout(timer);
  timer = null;
  outage.stop();
}

function schedule(run, seconds = pollSeconds()) {
  stopPolling();
  timer = setTimeout(run, seconds * 1000);
}

// 503 or no answer: keep what is on screen (stale), or show the friendly view; either way
// try again by itself after Retry-After, counting down, with "Retry now" at hand.
function unavailable(error, retry) {
  const wait = retryAfterSeconds(error.problem.retryAfter);
  const retryNow = () => { stopPolling(); retry(); };
  schedule(retry, wait); // first: scheduling stops any countdown running
  if (dataShown) {
    setLive(`Stale since ${outage.clockTime(updatedAt)}`, "error");
    outage.stale(updatedAt, wait, retryNow);
  } else {
    setLive("Not updating", "error");
    main.replaceChildren(errorView(error, retryNow));
    main.querySelector("#retry")?.focus();
    outage.waiting(wait);
  }
}

// Re-rendering patches the page in place (morph.js); replaced whole, it keeps keyboard focus
// where it was (elements carry stable ids).
function replaceMain(node, first) {
  const focused = document.activeElement && main.contains(document.activeElement) ? document.activeElement.id : null;
  if (morph.patch(main, node, { morph: !first && currentPage?.morph !== false })) return;
  if (focused) document.getElementById(focused)?.focus();
}

async function show() {
  const gen = ++generation;
  stopPolling();
  outage.clear();
  lastKey = null;
  dataShown = false;
  const route = router.current();
  const matched = router.match(ROUTES, route);
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.toggleAttribute("aria-current", matched?.page.nav === a.dataset.nav);
    if (matched?.page.nav === a.dataset.nav) a.setAttribute("aria-current", "page");
  }
  if (!matched) {
    main.replaceChildren(errorView(new api.ApiError(404, { title: "Page not found", detail: `There is no page at ${route.path}.` }), show));
    return;
  }
  const page = matched.page;
  currentPage = page;
  const ctx = { params: matched.params, query: route.query, route, toast, reload: show,
    config: () => config, navigate: router.go };
  livePage = page.live !== false;
  main.replaceChildren(h("p", { class: "loading" }, "Loading…"));

  const cycle = async (first) => {
    try {
      if (config === null) await loadConfig();
      const data = await page.load(ctx);
      if (gen !== generation) return;
      const key = JSON.stringify(page.key ? page.key(data) : data);
      if (first || key !== lastKey) {
        lastKey = key;
        replaceMain(page.render(data, ctx), first);
        document.title = `${page.title(data, ctx)} · IoTSphere`;
        if (first) main.focus({ preventScroll: true });
      }
      dataShown = true;
      updatedAt = new Date();
      outage.clear();
      setLive(`Live · updated ${updatedAt.toLocaleTimeString()}`, "ok");
      if (page.live !== false) schedule(() => cycle(false));
    } catch (error) {
      if (error instanceof api.Redirecting || gen !== generation) return;
      if (error instanceof api.ApiError && error.unavailable) {
        unavailable(error, () => cycle(false));
        return;
      }
      setLive("Not updating", "error");
      outage.clear();
      dataShown = false;
      main.replaceChildren(errorView(error, show));
      main.querySelector("#retry")?.focus();
    }
  };
  // after an action (acknowledge, delete...): fetch and show the new state at once
  // (a late call from a page already left, e.g. an action that finished after navigating
  // away, must not stop the new page's polling)
  ctx.refresh = () => {
    if (gen !== generation) return Promise.resolve();
    stopPolling();
    return cycle(false);
  };
  refreshNow = () => (dataShown ? ctx.refresh() : show());
  await cycle(true);
}

// A pushed change: refetch the current page if it shows that kind of data (page.events; all
// by default), once per burst. During an outage the countdown's retry stays in charge.
function pushed(kinds) {
  if (!livePage || !refreshNow || !dataShown || document.hidden) return;
  const wanted = currentPage?.events;
  // "store": the cloud lost or regained its database; every page refetches (the 503 then
  // brings the stale banner and its countdown, as a poll would)
  if (kinds && wanted && !kinds.some((k) => k === "store" || wanted.includes(k))) return;
  clearTimeout(pushTimer);
  pushTimer = setTimeout(() => refreshNow?.(), PUSH_DEBOUNCE_MS);
}

const stream = live.connect({
  onChange: pushed,
  onState(open) {
    if (pushing === open) return;
    pushing = open;
    liveStatus.dataset.push = open ? "on" : "off";
    // the stream dropped: poll from now on (not during an outage: its countdown is in charge)
    if (!open && livePage && dataShown && timer !== null && liveStatus.dataset.state === "ok") {
      schedule(() => refreshNow?.(), pollSeconds());
    }
  },
});

document.getElementById("logout").addEventListener("click", () => api.logout());
document.getElementById("tz-note").textContent = `Times are shown in your time zone (${fmt.timeZone}).`;
window.addEventListener("hashchange", () => show());
// A hidden tab does not poll (nor retry); it catches up when shown again, keeping what it shows.
document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    stopPolling();
    stream.stop();
  } else {
    stream.start();
    if (livePage && refreshNow) refreshNow();
  }
});
// Last line of defence: an unexpected failure becomes a message, not a blank page.
window.addEventListener("unhandledrejection", (ev) => {
  if (ev.reason instanceof api.Redirecting) { ev.preventDefault(); return; }
  toast(ev.reason instanceof api.ApiError ? ev.reason.problem.title : "Something went wrong; please try again.");
});

show();
