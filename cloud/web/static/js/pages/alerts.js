// Alerts: the open ones (acknowledge, resolve, one by one or selected in bulk) and the past
// ones, each with its delivery status per notification channel and a link to its own page.
// Searched, filtered, sorted and paged ON THE SERVER (GET /api/alerts with limit, cursor, q,
// state, severity, gateway, device_type, from, to, sort): whatever the number of alerts, a
// load asks for one page of open and one of past alerts. The list's state lives in the route's
// query (#/alerts?severity=critical&cursor=..), changed with replaceState and a refetch.

import * as api from "../api.js";
import { act } from "../actions.js";
import { h, section, statusLine } from "../dom.js";
import { WINDOW_ERROR, customWindow, localInput, windowFromInputs } from "../range.js";
import * as router from "../router.js";
import { alertsTable, loadChannelNames } from "./alerts-view.js";

const OPEN_PAGE = 50;
const PAST_PAGE = 20;
const FILTERS = ["q", "severity", "gateway", "device_type", "from", "to", "sort", "state"];
const PAGING = ["cursor", "back", "pcursor", "pback"]; // where each list is (URL only)
const SORTS = {
  "-started_at": "Newest first", "started_at": "Oldest first", "-severity": "Most severe first",
  "subject": "Device or model, A to Z", "metric": "Metric", "gateway": "Gateway",
};
const RANGES = [["", "Any time"], ["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["custom", "Custom…"]];
const RANGE_MS = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };
let typing = null;
// "Custom…" chosen and its dates not applied yet: kept open through the page's refreshes
let customOpen = false;
// The selected open alerts: kept across the page's refreshes (a pushed change patches the
// page; it must not untick what the user ticked), emptied when the filters change.
const selected = new Set();

function listState() {
  const q = router.current().query;
  const state = {};
  for (const k of [...FILTERS, "range", ...PAGING]) state[k] = q.get(k) || "";
  if (!(state.sort in SORTS)) state.sort = "-started_at";
  // a custom window is from AND to, both instants (ms), from before to; anything else is none
  if (!(state.from && state.to && customWindow(state.from, state.to))) state.from = state.to = "";
  if (state.from) state.range = "custom";
  else if (state.range === "custom") state.range = "";
  return state;
}

// change the list's state in the URL (no hashchange: the page is patched) and refetch; any
// change of a filter starts both lists from their first page
function setList(ctx, change, keepPages = false) {
  clearTimeout(typing);
  if (router.current().path !== "/alerts") return Promise.resolve(); // left meanwhile (a late debounce)
  const box = document.getElementById("alert-search");
  const base = listState();
  if (!keepPages) for (const k of PAGING) base[k] = "";
  selected.clear();
  const next = { ...base, ...(box ? { q: box.value.trim() } : {}), ...change };
  const query = {};
  for (const [k, v] of Object.entries(next)) if (v && !(k === "sort" && v === "-started_at")) query[k] = v;
  history.replaceState(null, "", router.href("/alerts", query));
  return ctx.refresh();
}

function params(state, states, limit, cursor) {
  const p = new URLSearchParams({ limit: String(limit), sort: state.sort });
  const wanted = state.state ? states.filter((s) => s === state.state) : states;
  p.set("state", (wanted.length ? wanted : ["none"]).join(","));
  for (const k of ["q", "severity", "gateway", "device_type"]) if (state[k]) p.set(k, state[k]);
  if (state.from) {
    p.set("from", state.from);
    p.set("to", state.to);
  } else if (state.range in RANGE_MS) p.set("from", String(Date.now() - RANGE_MS[state.range]));
  if (cursor) p.set("cursor", cursor);
  return p;
}

async function page(state, states, limit, cursor) {
  const wanted = state.state ? states.filter((s) => s === state.state) : states;
  if (!wanted.length) return { items: [], total: 0, next: null, hidden: true };
  return api.get(`/api/alerts?${params(state, states, limit, cursor)}`);
}

// A cursor the server no longer takes (an old link, or the server's sort changed): the lists
// start again from their first pages instead of "Try again" asking with the same cursor.
function staleCursor(error, state) {
  return error instanceof api.ApiError && error.status === 409 && (state.cursor || state.pcursor) &&
    String(error.problem.type ?? "").endsWith("/stale-cursor");
}

export const alertsPage = {
  nav: "alerts",
  title: () => "Alerts",
  async load() {
    try {
      return await this.loadPage();
    } catch (error) {
      if (!staleCursor(error, listState())) throw error;
      const query = Object.fromEntries([...router.current().query]
        .filter(([k]) => !PAGING.includes(k)));
      history.replaceState(null, "", router.href("/alerts", query));
      return this.loadPage();
    }
  },
  async loadPage() {
    const state = listState();
    const [open, past, channels, gateways, types] = await Promise.all([
      page(state, ["active", "acknowledged"], OPEN_PAGE, state.cursor),
      page(state, ["resolved"], PAST_PAGE, state.pcursor),
      loadChannelNames(),
      api.getOptional("/api/gateways", []),
      api.getOptional("/api/device_types", []),
    ]);
    return { state, open, past, channels: [...channels], gateways, types: types.map((t) => t.name) };
  },
  // what decides a redraw: not the moving "from" of a relative time range
  key: ({ state, open, past, channels, gateways, types }) => ({ state, open, past, channels, gateways, types }),
  render({ state, open, past, channels, gateways, types }, ctx) {
    const names = new Map(channels);
    const onPage = new Set(open.items.filter((a) => a.state !== "resolved").map((a) => a.id));
    for (const id of [...selected]) if (!onPage.has(id)) selected.delete(id);
    const bulkBar = bulkActions(selected, ctx);
    return h("div", { class: "page" },
      h("h1", {}, "Alerts"),
      controls(state, gateways, types, ctx),
      section("Active alerts",
        pager("open", state, open, "cursor", "back", ctx),
        bulkBar,
        open.hidden ? h("p", { class: "empty" }, "Open alerts are hidden by the state filter.")
          : alertsTable("Active and acknowledged alerts", open.items, ctx, names,
            anyFilter(state) ? "No open alert matches the search and filters." : "No active alerts.",
            { selected, onSelect: () => bulkBar.update() })),
      section("Past alerts",
        pager("past", state, past, "pcursor", "pback", ctx),
        past.hidden ? h("p", { class: "empty" }, "Resolved alerts are hidden by the state filter.")
          : alertsTable("Resolved alerts", past.items, ctx, names,
            anyFilter(state) ? "No resolved alert matches the search and filters." : "No resolved alerts yet.")));
  },
};

function anyFilter(state) {
  return ["q", "severity", "gateway", "device_type", "range", "state"].some((k) => state[k]);
}

function controls(state, gateways, types, ctx) {
  const choice = (id, label, value, options, key) => [
    h("label", { for: id }, label),
    h("select", { id, onchange: (ev) => setList(ctx, { [key]: ev.target.value }) },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))),
  ];
  return h("form", { class: "list-controls", role: "search", "aria-label": "Find alerts", onsubmit: (ev) => { ev.preventDefault(); setList(ctx, {}); } },
    h("label", { for: "alert-search" }, "Search"),
    h("input", {
      type: "search", id: "alert-search", value: state.q, placeholder: "device, metric, rule or gateway", autocomplete: "off",
      oninput: () => { clearTimeout(typing); typing = setTimeout(() => setList(ctx, {}), 300); },
    }),
    choice("alert-state", "State", state.state, [["", "Any"], ["active", "Active"], ["acknowledged", "Acknowledged"], ["resolved", "Resolved"]], "state"),
    choice("alert-severity", "Severity", state.severity, [["", "Any"], ["critical", "Critical"], ["warning", "Warning"], ["info", "Info"]], "severity"),
    choice("alert-gateway", "Gateway", state.gateway, [["", "Any"], ...gateways.map((g) => [g.gateway_id, g.name])], "gateway"),
    choice("alert-type", "Device type", state.device_type, [["", "Any"], ...types.map((t) => [t, t])], "device_type"),
    rangeChoice(state, ctx),
    choice("alert-sort", "Sort by", state.sort, Object.entries(SORTS), "sort"));
}

// When alerts started: a preset relative to now, or a custom from/to in the viewer's local
// time (in the route as from/to instants, so a link or a reload shows the same window)
function rangeChoice(state, ctx) {
  const open = state.range === "custom" || customOpen;
  const now = Date.now();
  // read by id when used: a patch keeps the elements on screen, not these fresh ones
  const byId = (id) => document.getElementById(id);
  const editing = (on) => { // open and kept (not patched) while the dates are being chosen
    customOpen = on;
    const span = byId("alert-custom-range");
    span.toggleAttribute("data-keep", on);
    if (on) span.hidden = false;
  };
  const apply = () => {
    const [from, to] = [byId("alert-from"), byId("alert-to")];
    const chosen = windowFromInputs(from.value, to.value);
    if (!chosen) {
      byId("alert-range-error").textContent = WINDOW_ERROR;
      (Number.isFinite(new Date(from.value).getTime()) ? to : from).setAttribute("aria-invalid", "true");
      return;
    }
    editing(false);
    setList(ctx, { range: "", from: String(chosen.from), to: String(chosen.to) });
  };
  const onEnter = (ev) => { if (ev.key === "Enter") { ev.preventDefault(); apply(); } };
  // chosen but not applied yet: data-keep, so a pushed refresh leaves the dates being set alone
  const custom = h("span", { class: "custom-range", id: "alert-custom-range", hidden: !open, "data-keep": customOpen },
    h("label", { for: "alert-from" }, "From"),
    h("input", { type: "datetime-local", id: "alert-from", onkeydown: onEnter,
      value: localInput(state.from ? Number(state.from) : now - 86400e3) }),
    h("label", { for: "alert-to" }, "To"),
    h("input", { type: "datetime-local", id: "alert-to", onkeydown: onEnter,
      value: localInput(state.to ? Number(state.to) : now) }),
    h("button", { type: "button", class: "secondary", id: "alert-range-apply", onclick: apply }, "Apply"),
    h("span", { class: "error", role: "alert", id: "alert-range-error" }));
  const select = h("select", {
    id: "alert-range",
    onchange: (ev) => {
      editing(ev.target.value === "custom"); // custom: the dates first, Apply fetches
      if (!customOpen) setList(ctx, { range: ev.target.value, from: "", to: "" });
    },
  }, RANGES.map(([v, text]) => h("option", { value: v, selected: v === (open ? "custom" : state.range) }, text)));
  return [h("label", { for: "alert-range" }, "Started"), select, custom];
}

// Keyset paging: "Next" follows the answer's cursor; the cursors walked so far are kept in the
// URL ("back", dot-separated: cursors are base64url) so "Previous" can return.
function pager(which, state, answer, cursorKey, backKey, ctx) {
  if (answer.hidden) return null;
  const back = state[backKey] ? state[backKey].split(".") : [];
  const nf = new Intl.NumberFormat();
  const shown = answer.items.length;
  const label = which === "open" ? "open" : "resolved";
  const text = answer.total
    ? `${nf.format(shown)} of ${nf.format(answer.total)} ${label} alert${answer.total === 1 ? "" : "s"} shown`
    : `No ${label} alerts`;
  return h("nav", { class: "pager", "aria-label": `${which === "open" ? "Open" : "Past"} alert pages` },
    h("p", { id: `${which}-alerts-range`, role: "status" }, text),
    h("button", { type: "button", class: "secondary", id: `${which}-alerts-prev`, disabled: !state[cursorKey],
      onclick: () => setList(ctx, { [cursorKey]: back.at(-1) === "-" ? "" : back.at(-1) ?? "", [backKey]: back.slice(0, -1).join(".") }, true) }, "Previous"),
    h("button", { type: "button", class: "secondary", id: `${which}-alerts-next`, disabled: !answer.next,
      onclick: () => setList(ctx, { [cursorKey]: answer.next, [backKey]: [...back, state[cursorKey] || "-"].join(".") }, true) }, "Next"));
}

// Acknowledge or resolve the selected open alerts in ONE request (POST /api/alert_actions); the
// answer says per alert what happened, and the failures are listed by name.
// Everything acts on the elements ON SCREEN, found by id when used: a pushed change patches the
// page in place (morph.js), which keeps the bar shown first and moves onto it only the
// listeners h() registered, so a closure over this render's elements would change copies
// nobody sees.
function bulkActions(selected, ctx) {
  const byId = (id) => document.getElementById(id);
  const update = () => {
    const count = byId("bulk-count");
    if (!count) return;
    count.textContent = `${selected.size} selected`;
    byId("bulk-ack").disabled = byId("bulk-resolve").disabled = selected.size === 0;
  };
  const run = (action, done) => h("button", {
    type: "button", class: "small", id: `bulk-${action}`, disabled: selected.size === 0,
    // afterwards the bar says what is selected now (nothing): act() re-enables the button
    onclick: (ev) => act(ev.currentTarget, byId("bulk-status"), async () => {
      const answer = await api.postJson("/api/alert_actions", { action, ids: [...selected] });
      selected.clear();
      const failed = answer.results.filter((r) => r.status !== 200);
      ctx.toast(`${answer.changed} alert${answer.changed === 1 ? "" : "s"} ${done}`);
      await ctx.refresh();
      const line = byId("bulk-status");
      if (line && failed.length) {
        line.textContent = `Not changed: ${failed.map((r) => `${r.id.slice(0, 8)} (${r.detail ?? r.status})`).join("; ")}`;
        line.classList.add("error");
      }
    }).then(update),
  }, action === "ack" ? "Acknowledge selected" : "Resolve selected");
  const bar = h("div", { class: "bulk-actions", role: "group", "aria-label": "Bulk actions on the selected alerts" },
    h("span", { id: "bulk-count" }, `${selected.size} selected`), " ",
    run("ack", "acknowledged"), " ", run("resolve", "resolved"), statusLine("bulk-status"));
  bar.update = update;
  return bar;
}
