// Times in the viewer's own time zone, values with their units.

import { h } from "./dom.js";

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 3 });
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });

export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone;

// A <time> element: local date and time, machine-readable ISO, and "x minutes ago" as a tooltip.
export function when(ms, now = Date.now()) {
  if (ms === null || ms === undefined) return h("span", { class: "muted" }, "never");
  const d = new Date(ms);
  return h("time", { datetime: d.toISOString(), title: ago(ms, now) }, dateTime.format(d));
}

export function ago(ms, now = Date.now()) {
  const s = Math.round((ms - now) / 1000);
  const abs = Math.abs(s);
  if (abs < 60) return relative.format(s, "second");
  if (abs < 3600) return relative.format(Math.round(s / 60), "minute");
  if (abs < 86400) return relative.format(Math.round(s / 3600), "hour");
  return relative.format(Math.round(s / 86400), "day");
}

export function value(v, unit) {
  if (v === null || v === undefined) return "—";
  const text = typeof v === "number" ? number.format(v) : String(v);
  return unit ? `${text}\u00a0${unit}` : text;
}

export function duration(seconds) {
  if (!seconds) return "";
  if (seconds % 3600 === 0) return `${seconds / 3600}\u00a0h`;
  if (seconds % 60 === 0) return `${seconds / 60}\u00a0min`;
  return `${number.format(seconds)}\u00a0s`;
}

// Units per metric come from the organization's dashboard config ({"units": {"temperature": "°C"}}).
export function unitOf(config, metric) {
  const units = config && typeof config.units === "object" ? config.units : {};
  return typeof units[metric] === "string" ? units[metric] : "";
}
