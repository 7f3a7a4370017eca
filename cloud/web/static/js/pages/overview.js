// Overview: gateways (online / lagging / offline, last sync), devices (status, last seen,
// latest values) and the open alerts, from GET /api/dashboard (the seed's dashboard flow)
// and GET /api/gateways.

import * as api from "../api.js";
import { badge, h, section, table } from "../dom.js";
import * as fmt from "../format.js";
import { alertsTable, loadChannelNames } from "./alerts-view.js";

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
    const [dashboard, gateways, channels] = await Promise.all([
      api.get("/api/dashboard"), api.get("/api/gateways"), loadChannelNames(),
    ]);
    return { dashboard, gateways, channels: [...channels] };
  },
  render({ dashboard, gateways, channels }, ctx) {
    const config = dashboard.config;
    const { devices, alerts } = dashboard;
    const names = new Map(gateways.map((g) => [g.gateway_id, g.name]));
    const online = devices.filter((d) => d.status === "online").length;
    const gatewaysOnline = gateways.filter((g) => (g.state ?? g.status) === "online" && !g.revoked).length;
    const active = alerts.filter((a) => a.state === "active").length;
    return h("div", { class: "page" },
      h("h1", {}, config.title || "Overview"),
      h("ul", { class: "summary", "aria-label": "Summary" },
        h("li", {}, h("strong", {}, `${online} of ${devices.length}`), " devices online"),
        h("li", {}, h("strong", {}, `${gatewaysOnline} of ${gateways.length}`), " gateways online"),
        h("li", { class: active ? "attention" : "" }, h("strong", {}, String(active)), " active alerts")),
      section("Open alerts",
        alertsTable("Alerts that are active or acknowledged", alerts, ctx, new Map(channels),
          "No open alerts. Alerts raised by your rules appear here as they happen.")),
      section("Devices",
        table("Devices and their latest values", ["Device", "Status", "Last seen", "Latest values", "Gateway", "Type"],
          devices.map((d) => [
            h("a", { href: `#/devices/${encodeURIComponent(d.device_id)}` }, d.device_id),
            badge(d.status),
            fmt.when(d.last_seen),
            latest(d, config),
            names.get(d.gateway_id) ?? d.gateway_id ?? "—",
            d.type ?? "—",
          ]),
          "No device has reported yet. Readings appear here once a gateway syncs them.")),
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
