// One device: status, latest values, and a chart per numeric metric over a chosen range
// (GET /api/devices/{id}/telemetry with a bucket, so a month is as light as an hour). One time
// window for the page (presets or custom, in the route's query): the charts, their data tables
// and the CSV export all follow it.

import * as api from "../api.js";
import { figure } from "../chart.js";
import { badge, h, section } from "../dom.js";
import * as fmt from "../format.js";
import * as range from "../range.js";
import * as router from "../router.js";

// The readings of the window as CSV, streamed by the server straight to a file: a plain link
// with a short-lived export ticket (a link cannot carry the bearer token).
async function exportCsv(device, r, ctx) {
  try {
    const { ticket } = await api.postJson("/api/events/ticket?scope=export");
    const a = h("a", {
      href: `/api/devices/${encodeURIComponent(device.device_id)}/readings.csv?` +
        api.query({ from: Math.floor(r.from), to: Math.ceil(r.to), ticket }),
      download: "",
      hidden: true,
    });
    document.body.append(a);
    a.click();
    a.remove();
  } catch (e) {
    if (e instanceof api.Redirecting) return;
    ctx.toast(e instanceof api.ApiError ? e.problem.title : "The export could not start; please try again.");
  }
}

export const devicePage = {
  nav: "overview",
  events: ["devices", "gateways"], // what it shows; alerts and deliveries do not change it
  title: (data) => `Device ${data.device.device_id}`,
  async load(ctx) {
    const id = ctx.params.id;
    const [device, gateways] = await Promise.all([
      api.get(`/api/devices/${encodeURIComponent(id)}`), api.get("/api/gateways"),
    ]);
    const gateway = gateways.find((g) => g.gateway_id === device.gateway_id) ?? null;
    const r = range.fromQuery(ctx.query);
    const bucket = range.bucketFor(r.from, r.to);
    const metrics = Object.entries(device.latest).filter(([, v]) => typeof v === "number").map(([m]) => m).sort();
    const series = await Promise.all(metrics.map((metric) =>
      api.get(`/api/devices/${encodeURIComponent(id)}/telemetry?` +
        api.query({ metric, from: Math.floor(r.from), to: Math.ceil(r.to), bucket }))));
    return { device, gateway, range: r, bucket, series };
  },
  // a live preset range moves with the clock: redraw only when the data itself changed
  key: (d) => [d.device, d.gateway?.name, d.bucket, d.series.map((s) => s.points)],
  render({ device, gateway, range: r, bucket, series }, ctx) {
    const config = ctx.config();
    const latest = Object.entries(device.latest);
    const change = (q) => router.go(`/devices/${encodeURIComponent(device.device_id)}`, q);
    return h("div", { class: "page" },
      h("p", { class: "crumbs" }, h("a", { href: "#/" }, "Overview"), " / device"),
      h("h1", {}, device.device_id, " ", badge(device.status)),
      h("dl", { class: "facts" },
        h("dt", {}, "Last seen"), h("dd", {}, fmt.when(device.last_seen)),
        h("dt", {}, "Type"), h("dd", {}, device.type ?? "—"),
        h("dt", {}, "Gateway"), h("dd", {}, gateway?.name ?? device.gateway_id ?? "—")),
      section("Latest values", latest.length
        ? h("ul", { class: "values big" }, latest.map(([m, v]) =>
          h("li", {}, h("span", { class: "metric" }, m), h("strong", {}, fmt.value(v, fmt.unitOf(config, m))))))
        : h("p", { class: "empty" }, "This device has not reported any values yet.")),
      section("History",
        range.picker(r, change),
        h("p", { class: "muted" }, `Each point is the average of ${bucket} (the band shows minimum and maximum). `,
          h("button", { type: "button", class: "secondary", id: "export-csv", onclick: () => exportCsv(device, r, ctx) },
            "Download readings (CSV)")),
        series.length
          ? h("div", { class: "charts" }, series.map((s) =>
            figure({ title: s.metric, unit: fmt.unitOf(config, s.metric), points: s.points, id: `chart-${s.metric}`, range: r })))
          : h("p", { class: "empty" }, "No numeric metrics to chart for this device.")));
  },
};
