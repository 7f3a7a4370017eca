// Time ranges for charts: presets relative to now, or a custom from/to, and a bucket width
// that keeps a chart near 240 points (the telemetry API aggregates min/avg/max per bucket).

import { h } from "./dom.js";

export const PRESETS = { "1h": 3600e3, "6h": 6 * 3600e3, "24h": 86400e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const BUCKETS = [["1s", 1e3], ["5s", 5e3], ["10s", 10e3], ["30s", 30e3], ["1m", 60e3], ["5m", 300e3],
  ["15m", 900e3], ["30m", 1800e3], ["1h", 3600e3], ["3h", 10800e3], ["6h", 21600e3], ["1d", 86400e3]];

export const WINDOW_ERROR = "Choose a start before the end.";

// A custom window: two instants (ms, or their text), the start before the end; else null.
export function customWindow(from, to) {
  const [f, t] = [Number(from), Number(to)];
  return Number.isFinite(f) && Number.isFinite(t) && f < t ? { from: f, to: t } : null;
}

// The same from two datetime-local values, read in the viewer's time zone.
export function windowFromInputs(from, to) {
  return customWindow(new Date(from).getTime(), new Date(to).getTime());
}

// {from, to, label} from the route's query: ?range=6h, or ?from=ms&to=ms
export function fromQuery(query, now = Date.now()) {
  const custom = query.has("from") && query.has("to") ? customWindow(query.get("from"), query.get("to")) : null;
  if (custom) return { ...custom, preset: null };
  const preset = PRESETS[query.get("range")] ? query.get("range") : "24h";
  return { from: now - PRESETS[preset], to: now, preset };
}

export function bucketFor(from, to, target = 240) {
  const want = (to - from) / target;
  const found = BUCKETS.find(([, ms]) => ms >= want);
  return (found ?? BUCKETS[BUCKETS.length - 1])[0];
}

// an instant as a datetime-local input's value, in the viewer's time zone
export function localInput(ms) {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60e3);
  return d.toISOString().slice(0, 16);
}

// The range picker: a preset select, or custom from/to in the viewer's local time.
export function picker(range, onChange) {
  const select = h("select", { id: "range-preset" },
    Object.keys(PRESETS).map((k) => h("option", { value: k, selected: range.preset === k }, `Last ${k}`)),
    h("option", { value: "custom", selected: range.preset === null }, "Custom…"));
  const from = h("input", { type: "datetime-local", id: "range-from", value: localInput(range.from) });
  const to = h("input", { type: "datetime-local", id: "range-to", value: localInput(range.to) });
  const error = h("p", { class: "error", role: "alert", id: "range-error" });
  const custom = h("div", { class: "custom-range", hidden: range.preset !== null },
    h("label", { for: "range-from" }, "From"), from,
    h("label", { for: "range-to" }, "To"), to);
  select.addEventListener("change", () => {
    custom.hidden = select.value !== "custom";
    if (select.value !== "custom") onChange({ range: select.value });
  });
  const form = h("form", { class: "range", "aria-label": "Time range" },
    h("label", { for: "range-preset" }, "Time range"), select, custom,
    h("button", { type: "submit", class: "secondary" }, "Show"), error);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (select.value !== "custom") return onChange({ range: select.value });
    const chosen = windowFromInputs(from.value, to.value);
    if (!chosen) {
      error.textContent = WINDOW_ERROR;
      return undefined;
    }
    error.textContent = "";
    return onChange({ from: String(chosen.from), to: String(chosen.to) });
  });
  return form;
}
