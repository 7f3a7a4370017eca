// Time-series charts with uPlot (from npm, served at /static/vendor/uplot/). Loaded on first
// use: if the library is missing, the chart says so and the rest of the page still works.
// uPlot draws axes in the browser's local time zone; each chart also has a data table.
// A page patched in place (morph.js) keeps a drawn chart: it gets the new data through
// plot.iotUpdate, and a zoom the user chose (drag to zoom, double-click to reset) is kept.

import { h } from "./dom.js";
import * as fmt from "./format.js";

let library = null;

function uPlot() {
  library ??= import("/static/vendor/uplot/uPlot.esm.js").then((m) => m.default);
  return library;
}

const COLORS = { line: "#1f5fbf", band: "rgba(31, 95, 191, 0.15)", minmax: "rgba(31, 95, 191, 0.35)" };

// points: [{ts, value}] (raw) or [{ts, min, max, avg, count}] (bucketed)
// range: {from, to} in ms, the x axis shown (what the user chose, not just where data is)
export function figure({ title, unit, points, id, range }) {
  const numeric = points.filter((p) => typeof (p.avg ?? p.value) === "number");
  const caption = h("figcaption", {}, unit ? `${title} (${unit})` : title);
  const bucketed = numeric.length > 0 && "avg" in numeric[0];
  // the kind in the id: raw and bucketed charts have different series, so never patched into each other
  const plot = h("div", { class: "plot", "aria-hidden": "true", id: `${id}-plot-${bucketed ? "buckets" : "raw"}` });
  const readings = numeric.reduce((n, p) => n + (p.count ?? 1), 0);
  const fig = h("figure", { class: "chart", id, "data-points": String(numeric.length), "data-readings": String(readings) }, caption);
  if (numeric.length === 0) {
    fig.append(h("p", { class: "empty" }, "No numeric data in this time range."));
    return fig;
  }
  fig.append(plot, dataTable(title, unit, numeric));
  plot.iotData = { points: numeric, range };
  // drawn once on the page: a render whose plot a patch discarded (the page kept the drawn
  // one, which took iotData) never builds a chart
  requestAnimationFrame(() => {
    // the patch may have inserted a copy of this plot (morph.js): draw into what is on screen
    const shown = plot.isConnected ? plot : plot.iotCopy;
    if (!shown?.isConnected || shown.dataset.ready) return;
    draw(shown, title, unit, numeric, bucketed, range).catch(() => {
      shown.replaceWith(h("p", { class: "error" },
        "Charts are unavailable: the charting library is not installed on the server (run ./dev.sh setup). The data table below has the values."));
    });
  });
  return fig;
}

function columns(points, bucketed) {
  const data = [points.map((p) => p.ts / 1000)];
  if (bucketed) data.push(points.map((p) => p.avg), points.map((p) => p.min), points.map((p) => p.max));
  else data.push(points.map((p) => p.value));
  return data;
}

async function draw(plot, title, unit, points, bucketed, initialRange) {
  const UPlot = await uPlot();
  const shown = { range: initialRange }; // the x range the page asks for: moves with a live preset
  let zoomed = false; // the user zoomed in: updates keep the zoom
  const label = unit ? `${title} (${unit})` : title;
  const value = (u, v) => (v === null || v === undefined ? "—" : fmt.value(v, unit));
  const series = [{}];
  if (bucketed) {
    series.push({ label: `${label} avg`, stroke: COLORS.line, width: 2, value },
      { label: "min", stroke: COLORS.minmax, value }, { label: "max", stroke: COLORS.minmax, value });
  } else {
    series.push({ label, stroke: COLORS.line, width: 2, value, points: { show: points.length < 60 } });
  }
  const full = () => (shown.range ? [shown.range.from / 1000, shown.range.to / 1000] : null);
  const opts = {
    width: Math.max(260, plot.clientWidth || 600),
    height: 220,
    series,
    bands: bucketed ? [{ series: [3, 2], fill: COLORS.band }] : [],
    axes: [{}, { values: (u, ticks) => ticks.map((t) => fmt.value(t, unit)), size: 70 }],
    scales: { x: { time: true, range: initialRange ? (u, min, max) => full() ?? [min, max] : undefined } },
    hooks: {
      // a drag selection zooms in; double-click resets to the full range
      setSelect: [(u) => { if (u.select.width > 0) zoomed = true; }],
      setScale: [(u, key) => {
        const f = full();
        if (key === "x" && f && Math.abs(u.scales.x.min - f[0]) < 1 && Math.abs(u.scales.x.max - f[1]) < 1) zoomed = false;
      }],
    },
  };
  const chart = new UPlot(opts, columns(points, bucketed), plot);
  new ResizeObserver(() => chart.setSize({ width: Math.max(260, plot.clientWidth), height: 220 })).observe(plot);
  plot.iotUpdate = ({ points: next, range }) => {
    shown.range = range;
    chart.setData(columns(next, bucketed), !zoomed); // resetScales false: the zoom stays
    plot.dataset.updates = String(Number(plot.dataset.updates ?? 0) + 1);
    plot.dataset.zoomed = String(zoomed);
  };
  plot.dataset.ready = "true";
}

function dataTable(title, unit, points) {
  const bucketed = "avg" in points[0];
  const head = bucketed ? ["Time", "Average", "Minimum", "Maximum", "Readings"] : ["Time", "Value"];
  const rows = points.slice(-200).reverse().map((p) => h("tr", {},
    h("td", {}, fmt.when(p.ts)),
    bucketed
      ? [h("td", {}, fmt.value(p.avg, unit)), h("td", {}, fmt.value(p.min, unit)),
        h("td", {}, fmt.value(p.max, unit)), h("td", {}, String(p.count))]
      : h("td", {}, fmt.value(p.value, unit))));
  return h("details", { class: "data" },
    h("summary", {}, `Data table: ${title}${points.length > 200 ? " (newest 200)" : ""}`),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows))));
}
