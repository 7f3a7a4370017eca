// Models: metrics that ML models and jobs post (POST /api/monitoring/metrics), over time, with
// the rules that watch them and the alerts those rules raised.

import * as api from "../api.js";
import { figure } from "../chart.js";
import { badge, h, section, table } from "../dom.js";
import * as fmt from "../format.js";
import * as range from "../range.js";
import * as router from "../router.js";
import { alertsTable, loadChannelNames } from "./alerts-view.js";
import { condition } from "./rules.js";

export const modelsPage = {
  nav: "models",
  title: (d) => (d.source ? `Model ${d.source}` : "Models"),
  async load(ctx) {
    const source = ctx.params.source ?? null;
    const [series, rules, alerts, channels] = await Promise.all([
      api.get("/api/monitoring/sources"), api.get("/api/monitoring/alert_rules"),
      api.get("/api/alerts"), loadChannelNames(),
    ]);
    if (!source) return { source, series, rules, alerts, channels: [...channels] };
    const r = range.fromQuery(ctx.query);
    const metrics = series.filter((s) => s.source === source).map((s) => s.metric);
    const points = await Promise.all(metrics.map((metric) => api.get("/api/monitoring/metrics?" +
      api.query({ source, metric, from: Math.floor(r.from), to: Math.ceil(r.to) }))));
    return { source, series, rules, alerts, channels: [...channels], range: r, points };
  },
  key: (d) => [d.source, d.series, d.rules, d.alerts, d.points?.map((p) => p.points)],
  render(d, ctx) {
    return d.source ? one(d, ctx) : index(d);
  },
};

function index({ series }) {
  const sources = [...new Set(series.map((s) => s.source))];
  return h("div", { class: "page" },
    h("h1", {}, "Models"),
    h("p", { class: "muted" }, "Metrics posted by models and jobs, e.g. a classifier's accuracy or a pipeline's lag. ",
      "A job posts them to /api/monitoring/metrics with an ", h("a", { href: "#/api-keys", id: "models-api-keys" }, "API key"), "."),
    table("Model metrics and their latest values", ["Model or job", "Metric", "Latest", "At", "Values stored"],
      series.map((s) => [
        h("a", { href: `#/models/${encodeURIComponent(s.source)}` }, s.source),
        s.metric, fmt.value(s.last_value), fmt.when(s.last_ts), String(s.count),
      ]),
      h("span", {}, "No model metrics yet. Jobs post them to /api/monitoring/metrics with an ",
        h("a", { href: "#/api-keys" }, "API key"), ".")),
    sources.length ? h("p", { class: "muted" }, `${sources.length} model(s) or job(s) reporting.`) : null);
}

function one({ source, series, rules, alerts, channels, range: r, points }, ctx) {
  const metrics = new Set(series.filter((s) => s.source === source).map((s) => s.metric));
  const watching = rules.filter((rule) => rule.source === source ||
    (!rule.source && !rule.device_id && !rule.device_type && metrics.has(rule.metric)));
  const itsAlerts = alerts.filter((a) => a.source === source).reverse();
  return h("div", { class: "page" },
    h("p", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " / ", source),
    h("h1", {}, source),
    section("Metrics over time",
      range.picker(r, (q) => router.go(`/models/${encodeURIComponent(source)}`, q)),
      points.length
        ? h("div", { class: "charts" }, points.map((p) => figure({ title: p.metric, unit: "", points: p.points, id: `chart-${p.metric}`, range: r })))
        : h("p", { class: "empty" }, "This model has no metrics.")),
    section("Rules on this model",
      table("Alert rules that watch this model's metrics", ["Rule", "Condition", "Severity", "Enabled", "Actions"],
        watching.map((rule) => [rule.name, condition(rule), badge(rule.severity), rule.enabled ? "yes" : "no",
          h("a", { href: `#/rules/${encodeURIComponent(rule.id)}/edit` }, "Edit")]),
        "No rule watches this model yet."),
      h("p", {}, h("a", { href: router.href("/rules/new", { source }) , class: "button-link" }, "New rule for this model"))),
    section("Alerts on this model",
      alertsTable("Alerts raised for this model, newest first", itsAlerts, ctx, new Map(channels), "No alerts for this model.")));
}
