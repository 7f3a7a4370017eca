// One alert explained (#/alerts/:id, GET /api/alerts/{id}): the rule that raised it (name,
// condition, scope, severity) as the evaluator reported it (a gateway sends its rule as it
// stands when the alert is first synced), where it was evaluated (in the cloud
// or on which gateway), the value and time that raised it, its history (raised, acknowledged
// by whom, resolved) and every notification channel's delivery (status, attempts, last error).

import * as api from "../api.js";
import { badge, h, section, table } from "../dom.js";
import * as fmt from "../format.js";
import { evaluatedText, loadChannelNames } from "./alerts-view.js";
import { condition, scopeText } from "./rules.js";

const KIND_WORDS = { raised: "Raised", acknowledged: "Acknowledged", resolved: "Resolved" };

function who(e, a) {
  const actor = e.actor;
  if (!actor) return h("span", { class: "muted" }, "—");
  if (actor === "rule") return e.kind === "raised" ? "the rule, evaluated in the cloud" : "the rule (its condition cleared)";
  if (a.gateway_name && actor === `gateway ${a.gateway_id}`) return `gateway ${a.gateway_name}`;
  return actor;
}

function facts(rows) {
  return h("dl", { class: "facts" }, rows.flatMap(([term, detail, id]) => [
    h("dt", {}, term), h("dd", id ? { id } : {}, detail),
  ]));
}

function ruleFacts(a) {
  const rule = a.rule;
  if (!rule) {
    return h("p", { id: "alert-rule-missing", class: "muted" },
      a.evaluated === "gateway"
        ? "The gateway that raised this alert did not say which rule it was (an older gateway, or a built-in check such as a login lockout)."
        : "The rule of this alert is not known any more.");
  }
  return facts([
    ["Rule", rule.name ?? a.rule_name ?? a.rule_id, "alert-rule-name"],
    ["Condition", condition(rule) + (rule.hysteresis ? ` (hysteresis ${fmt.value(rule.hysteresis)})` : ""), "alert-condition"],
    ["Applies to", scopeText(rule), "alert-scope"],
    ["Severity", badge(rule.severity ?? a.severity)],
  ]);
}

export const alertDetailPage = {
  nav: "alerts",
  title: (d) => `Alert: ${d.alert.rule_name ?? d.alert.metric}`,
  async load(ctx) {
    const [alert, channels] = await Promise.all([
      api.get(`/api/alerts/${encodeURIComponent(ctx.params.id)}`), loadChannelNames(),
    ]);
    return { alert, channels: [...channels] };
  },
  render({ alert: a, channels }, ctx) {
    const names = new Map(channels);
    const unit = fmt.unitOf(ctx.config(), a.metric);
    const subject = a.device_id
      ? h("a", { href: `#/devices/${encodeURIComponent(a.device_id)}` }, `device ${a.device_id}`)
      : a.source ? h("a", { href: `#/models/${encodeURIComponent(a.source)}` }, `model ${a.source}`) : "—";
    return h("div", { class: "page" },
      h("p", {}, h("a", { href: "#/alerts" }, "← All alerts")),
      h("h1", {}, `${a.rule_name ?? a.metric} `, badge(a.severity), " ", badge(a.state)),
      section("Why",
        ruleFacts(a),
        facts([
          ["Evaluated", evaluatedText(a), "alert-evaluated"],
          ["About", subject],
          ["Raised by", [`${a.metric} = ${fmt.value(a.value, unit)} at `, fmt.when(a.started_at)], "alert-raised-by"],
        ])),
      section("History",
        table("What happened to this alert, oldest first", ["When", "What", "By", "Detail"],
          a.history.map((e) => [fmt.when(e.at), KIND_WORDS[e.kind] ?? e.kind, who(e, a), e.detail ?? ""]),
          "No history recorded.")),
      section("Notifications",
        a.notifications.length
          ? [table("Delivery per channel", ["Channel", "Event", "Status", "Attempts", "Sent", "Last error"],
            a.notifications.map((n) => [
              names.get(n.channel_id) ?? n.channel_id,
              n.event === "alert.resolved" ? "resolution" : "raise",
              [badge(n.status), n.status === "retrying" && n.next_attempt_at ? [" next ", fmt.when(n.next_attempt_at)] : null],
              String(n.attempts),
              n.sent_at ? fmt.when(n.sent_at) : "—",
              n.last_error ?? "—",
            ]), ""),
          a.notifications.some((n) => n.attempt_log?.length)
            ? table("Every delivery attempt, oldest first", ["Channel", "Attempt", "When", "Result", "Error"],
              a.notifications.flatMap((n) => (n.attempt_log ?? []).map((t) => [
                names.get(n.channel_id) ?? n.channel_id, String(t.attempt), fmt.when(t.at), t.result, t.error ?? "—",
              ])), "")
            : null]
          : h("p", { class: "muted" }, "No notification channel was told about this alert.")));
  },
};
