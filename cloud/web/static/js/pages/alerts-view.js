// Alerts as a table with acknowledge / resolve buttons and each channel's delivery status;
// shared by the overview (open alerts) and the alerts page (open and past).

import * as api from "../api.js";
import { act } from "../actions.js";
import { badge, h, statusLine, table } from "../dom.js";
import * as fmt from "../format.js";

function subject(a) {
  if (a.device_id) return h("a", { href: `#/devices/${encodeURIComponent(a.device_id)}` }, a.device_id);
  if (a.source) return h("a", { href: `#/models/${encodeURIComponent(a.source)}` }, a.source);
  return "—";
}

export function deliveries(alert, channelNames) {
  if (!alert.notifications?.length) return h("span", { class: "muted" }, "no channels");
  return h("ul", { class: "deliveries" }, alert.notifications.map((n) => {
    const name = channelNames.get(n.channel_id) ?? n.channel_id;
    const tries = `${n.attempts} attempt${n.attempts === 1 ? "" : "s"}`;
    return h("li", { title: n.last_error ?? "" }, `${name}: `, badge(n.status), ` (${tries})`,
      n.status === "retrying" && n.next_attempt_at ? [" next ", fmt.when(n.next_attempt_at)] : null);
  }));
}

// The state changes a user can make on an alert, each posted to /api/alerts/{id}/{change}.
const CHANGES = {
  ack: { label: "Acknowledge", cls: "small", done: "Alert acknowledged" },
  resolve: { label: "Resolve", cls: "small secondary", done: "Alert resolved" },
};

// The listener goes through h() and acts on the elements on screen (see actions.js
// deleteButton): a row a patch inserts is a copy of this render's.
function changeButton(a, change, status, ctx) {
  const { label, cls, done } = CHANGES[change];
  const onclick = (ev) => act(ev.currentTarget, document.getElementById(status.id) ?? status, async () => {
    await api.postJson(`/api/alerts/${encodeURIComponent(a.id)}/${change}`);
    ctx.toast(done);
    await ctx.refresh();
  });
  return h("button", { type: "button", id: `${change}-${a.id}`, class: cls, onclick,
    "aria-label": `${label} ${a.metric} alert on ${a.device_id ?? a.source}` }, label);
}

// Where the rule that raised the alert was evaluated, in words.
export function evaluatedText(a, gatewayName) {
  if (a.evaluated !== "gateway") return "in the cloud";
  return `on gateway ${gatewayName ?? a.gateway_name ?? a.gateway_id}`;
}

// The rule's name, linking to the alert's own page (why, where, history).
function ruleLink(a) {
  const text = a.rule_name ?? a.rule_id ?? "details";
  return h("a", { href: `#/alerts/${encodeURIComponent(a.id)}`, class: "alert-link",
    "aria-label": `Details of the ${a.metric} alert on ${a.device_id ?? a.source ?? "—"}: ${text}` }, text);
}

// opts.selected: a Set of alert ids; given, each open alert gets a checkbox for bulk actions.
export function alertsTable(caption, alerts, ctx, channelNames, empty, opts = {}) {
  const config = ctx.config();
  const selected = opts.selected ?? null;
  const rows = alerts.map((a) => {
    const status = statusLine(`alert-status-${a.id}`);
    const buttons = [];
    if (a.state === "active") buttons.push(changeButton(a, "ack", status, ctx));
    if (a.state !== "resolved") buttons.push(changeButton(a, "resolve", status, ctx));
    const pick = selected && a.state !== "resolved"
      ? h("input", { type: "checkbox", id: `pick-${a.id}`, class: "pick", checked: selected.has(a.id),
        "aria-label": `Select the ${a.metric} alert on ${a.device_id ?? a.source ?? "—"}`,
        onchange: (ev) => { if (ev.target.checked) selected.add(a.id); else selected.delete(a.id); opts.onSelect?.(); } })
      : null;
    return [
      ...(selected ? [pick ?? ""] : []),
      badge(a.severity),
      subject(a),
      ruleLink(a),
      a.metric,
      fmt.value(a.value, fmt.unitOf(config, a.metric)),
      fmt.when(a.started_at),
      a.state === "resolved" ? fmt.when(a.resolved_at) : badge(a.state),
      deliveries(a, channelNames),
      h("div", { class: "actions", "data-alert": a.id }, buttons, status),
    ];
  });
  return table(caption, [...(selected ? ["Select"] : []), "Severity", "Device or model", "Rule", "Metric", "Value", "Started",
    alerts.some((a) => a.state === "resolved") ? "Resolved" : "State", "Notifications", "Actions"], rows, empty);
}

export async function loadChannelNames() {
  const channels = await api.getOptional("/api/notification_channels", []);
  return new Map(channels.map((c) => [c.id, c.name]));
}
