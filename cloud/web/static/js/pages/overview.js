// Overview: gateways (online / lagging / offline, last sync), devices (status, last seen,
// latest values) and the open alerts, from GET /api/dashboard (the seed's dashboard flow)
// and GET /api/gateways. The device list is searched, filtered, sorted and paged on the
// server (PAGE_SIZE rows per answer, whatever the fleet); its state lives in the route's
// query (#/?q=..&status=..&page=2), changed with replaceState so the page is patched, not
// rebuilt (the search box keeps focus while typing).

import * as api from "../api.js";
import { badge, h, section, table } from "../dom.js";
import * as fmt from "../format.js";
import * as router from "../router.js";
import { alertsTable, loadChannelNames } from "./alerts-view.js";

const PAGE_SIZE = 50;
const SORTS = {
  "device_id": "Device id, A to Z", "-device_id": "Device id, Z to A",
  "-last_seen": "Last seen, newest first", "last_seen": "Last seen, oldest first",
  "type": "Type", "gateway_id": "Gateway",
};
const FILTERS = ["q", "status", "gateway", "type", "sort"];
let typing = null; // the search box's debounce

function listState() {
  const q = router.current().query;
  const page = Math.max(1, Math.floor(Number(q.get("page")) || 1));
  const state = { page };
  for (const k of FILTERS) state[k] = q.get(k) || "";
  if (!(state.sort in SORTS)) state.sort = "device_id";
  return state;
}

// change the list's state in the URL (no hashchange: the page is patched) and refetch
function setList(ctx, change) {
  clearTimeout(typing); // what is in the search box counts now, typed or not
  if (router.current().path !== "/") return Promise.resolve(); // left meanwhile (a late debounce)
  const box = document.getElementById("device-search");
  const next = { ...listState(), page: 1, ...(box ? { q: box.value.trim() } : {}), ...change };
  const query = {};
  for (const k of FILTERS) if (next[k] && !(k === "sort" && next[k] === "device_id")) query[k] = next[k];
  if (next.page > 1) query.page = String(next.page);
  history.replaceState(null, "", router.href("/", query));
  return ctx.refresh();
}

function deviceControls(state, page, gateways, ctx) {
  const choice = (id, label, value, options, key) => [
    h("label", { for: id }, label),
    h("select", { id, onchange: (ev) => setList(ctx, { [key]: ev.target.value }) },
      options.map(([v, text]) => h("option", { value: v, selected: v === value }, text))),
  ];
  return h("form", { class: "list-controls", role: "search", "aria-label": "Find devices", onsubmit: (ev) => ev.preventDefault() },
    h("label", { for: "device-search" }, "Search"),
    h("input", {
      type: "search", id: "device-search", value: state.q, placeholder: "device id or type", autocomplete: "off",
      oninput: (ev) => {
        clearTimeout(typing);
        const q = ev.target.value.trim();
        typing = setTimeout(() => setList(ctx, { q }), 300);
      },
    }),
    choice("device-status", "Status", state.status, [["", "Any"], ["online", "Online"], ["offline", "Offline"]], "status"),
    choice("device-gateway", "Gateway", state.gateway, [["", "Any"], ...gateways.map((g) => [g.gateway_id, g.name])], "gateway"),
    choice("device-type", "Type", state.type, [["", "Any"], ...page.types.map((t) => [t, t])], "type"),
    choice("device-sort", "Sort by", state.sort, Object.entries(SORTS), "sort"));
}

function pager(state, page, ctx) {
  const first = page.total ? page.offset + 1 : 0;
  const last = Math.min(page.offset + page.limit, page.total);
  const pages = Math.max(1, Math.ceil(page.total / page.limit));
  const nf = new Intl.NumberFormat();
  return h("nav", { class: "pager", "aria-label": "Device pages" },
    h("p", { id: "device-range", role: "status" },
      page.total ? `Showing ${nf.format(first)}–${nf.format(last)} of ${nf.format(page.total)}` : "No device matches"),
    h("button", { type: "button", class: "secondary", id: "device-prev", disabled: state.page <= 1,
      onclick: () => setList(ctx, { page: state.page - 1 }) }, "Previous"),
    h("span", {}, `Page ${nf.format(Math.min(state.page, pages))} of ${nf.format(pages)}`),
    h("button", { type: "button", class: "secondary", id: "device-next", disabled: state.page >= pages,
      onclick: () => setList(ctx, { page: state.page + 1 }) }, "Next"));
}

function latest(device, config) {
  const entries = Object.entries(device.latest ?? {});
  if (!entries.length) return h("span", { class: "muted" }, "no readings");
  return h("ul", { class: "values" }, entries.map(([metric, v]) =>
    h("li", {}, h("span", { class: "metric" }, metric), " ", h("strong", {}, fmt.value(v, fmt.unitOf(config, metric))))));
}

function gatewayState(g) {
  if (g.revoked) return badge("revoked", "offline");
  if (!g.enrolled) return badge("not enrolled", "pending");
  // online / lagging (sync behind or silent past the cloud's limit) / offline, in words
  const state = g.state ?? g.status ?? "unknown";
  return badge(state, state === "unknown" ? "pending" : state);
}

export const overviewPage = {
  nav: "overview",
  title: () => "Overview",
  async load() {
    const data = await this.loadPage();
    const { total, limit } = data.dashboard.devices_page;
    const pages = Math.max(1, Math.ceil(total / limit));
    if (data.state.page <= pages) return data;
    // past the last page (the matches shrank, e.g. devices went offline under a status filter,
    // or an old link): show the last page there is, and say so in the URL
    const query = Object.fromEntries(router.current().query);
    if (pages > 1) query.page = String(pages);
    else delete query.page;
    history.replaceState(null, "", router.href("/", query));
    return this.loadPage();
  },
  async loadPage() {
    const state = listState();
    const [field, order] = state.sort.startsWith("-") ? [state.sort.slice(1), "desc"] : [state.sort, "asc"];
    const params = api.query({
      limit: PAGE_SIZE, offset: (state.page - 1) * PAGE_SIZE, sort: field, order,
      q: state.q || null, status: state.status || null, gateway: state.gateway || null, type: state.type || null,
    });
    const [dashboard, gateways, channels] = await Promise.all([
      api.get(`/api/dashboard?${params}`), api.get("/api/gateways"), loadChannelNames(),
    ]);
    return { dashboard, gateways, channels: [...channels], state };
  },
  render({ dashboard, gateways, channels, state }, ctx) {
    const config = dashboard.config;
    const { devices, alerts } = dashboard;
    const page = dashboard.devices_page;
    const names = new Map(gateways.map((g) => [g.gateway_id, g.name]));
    const online = page.online;
    const gatewaysOnline = gateways.filter((g) => (g.state ?? g.status) === "online" && !g.revoked).length;
    const active = alerts.filter((a) => a.state === "active").length;
    return h("div", { class: "page" },
      h("h1", {}, config.title || "Overview"),
      h("ul", { class: "summary", "aria-label": "Summary" },
        h("li", {}, h("strong", {}, `${online} of ${page.all_devices}`), " devices online"),
        h("li", {}, h("strong", {}, `${gatewaysOnline} of ${gateways.length}`), " gateways online"),
        h("li", { class: active ? "attention" : "" }, h("strong", {}, String(active)), " active alerts")),
      section("Open alerts",
        alertsTable("Alerts that are active or acknowledged", alerts, ctx, new Map(channels),
          "No open alerts. Alerts raised by your rules appear here as they happen.")),
      section("Devices",
        deviceControls(state, page, gateways, ctx),
        pager(state, page, ctx),
        table("Devices and their latest values", ["Device", "Status", "Last seen", "Latest values", "Gateway", "Type"],
          devices.map((d) => [
            h("a", { href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.device_id),
            badge(d.status),
            fmt.when(d.last_seen),
            latest(d, config),
            names.get(d.gateway_id) ?? d.gateway_id ?? "—",
            d.type ?? "—",
          ]),
          page.all_devices ? "No device matches the search and filters."
            : "No device has reported yet. Readings appear here once a gateway syncs them.")),
      section("Gateways",
        table("Gateways and their sync state", ["Gateway", "State", "Last contact", "Last sync", "Readings synced", "Backlog", "Clock"],
          gateways.map((g) => [
            g.name,
            gatewayState(g),
            fmt.when(g.last_seen),
            fmt.when(g.last_sync_at),
            g.readings_synced ? new Intl.NumberFormat().format(g.readings_synced) : "0",
            g.backlog_readings == null ? "—" : new Intl.NumberFormat().format(g.backlog_readings),
            g.clock_skewed ? badge(`off by ${Math.round(g.clock_skew_ms / 1000)} s`, "warning")
              : h("span", { class: "muted" }, "in sync"),
          ]),
          "No gateways yet. Register one with `iotsphere cloud gateway add NAME` and enroll it.")));
  },
};
