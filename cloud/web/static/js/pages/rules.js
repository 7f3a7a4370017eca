// Alert rules: list, create, edit, delete. The form checks a rule the way the API does
// (rule-validate.js) and posts nothing while a field is wrong; the API's own field errors
// (422, or 409 for a channel deleted meanwhile) are shown on the same fields, in plain words.

import * as api from "../api.js";
import { act, deleteButton } from "../actions.js";
import { badge, h, section, statusLine, table } from "../dom.js";
import { markFields, plainWords } from "../field-errors.js";
import * as fmt from "../format.js";
import * as router from "../router.js";
import { OPERATORS, SEVERITIES, parseThreshold, validateRule } from "../rule-validate.js";

export function scopeText(rule) {
  if (rule.device_id) return `device ${rule.device_id}`;
  if (rule.device_type) return `devices of type ${rule.device_type}`;
  if (rule.source) return `model ${rule.source}`;
  return "all devices and models";
}

export function condition(rule) {
  const forText = rule.for_seconds ? ` for ${fmt.duration(rule.for_seconds)}` : "";
  if (rule.operator === "nodata") return `no ${rule.metric} for ${fmt.duration(rule.for_seconds)}`;
  return `${rule.metric} ${rule.operator} ${JSON.stringify(rule.threshold)}${forText}`;
}

export const rulesPage = {
  nav: "rules",
  title: () => "Alert rules",
  async load() {
    const [rules, channels, gatewayRules] = await Promise.all([
      api.get("/api/monitoring/alert_rules"), api.getOptional("/api/notification_channels", []),
      api.getOptional("/api/monitoring/gateway_rules", []),
    ]);
    return { rules, channels, gatewayRules };
  },
  render({ rules, channels, gatewayRules }, ctx) {
    const names = new Map(channels.map((c) => [c.id, c.name]));
    return h("div", { class: "page" },
      h("h1", {}, "Alert rules"),
      h("p", {}, h("a", { href: "#/rules/new", class: "button-link", id: "new-rule" }, "New rule")),
      section("Cloud rules",
        table("Alert rules evaluated in the cloud", ["Name", "Applies to", "Condition", "Severity", "Enabled", "Channels", "Actions"],
          rules.map((r) => [
            r.name, scopeText(r), condition(r), badge(r.severity), r.enabled ? "yes" : "no",
            r.channels.map((c) => names.get(c) ?? c).join(", ") || h("span", { class: "muted" }, "none"),
            actions(r, ctx),
          ]),
          "No alert rules yet. Create one to be told when a value crosses a threshold.")),
      section("Gateway rules",
        h("p", { class: "muted" }, "Rules a gateway evaluates itself (added there with ",
          h("code", {}, "iotsphere gateway rule add"), "), as it last synced them. ",
          "They are read-only here: change them at the gateway."),
        table("Alert rules evaluated on gateways (read-only)", ["Gateway", "Name", "Applies to", "Condition", "Severity", "Enabled", "Synced"],
          gatewayRules.map((g) => [
            g.gateway_name ?? g.gateway_id, g.rule.name ?? g.rule.id, scopeText(g.rule), condition(g.rule),
            badge(g.rule.severity ?? "—"), g.rule.enabled === false ? "no" : "yes", fmt.when(g.updated_at),
          ]),
          "No gateway has rules of its own.")));
  },
};

function actions(rule, ctx) {
  const status = statusLine(`rule-status-${rule.id}`);
  const del = deleteButton(`delete-${rule.id}`, `Delete rule ${rule.name}`, status, async () => {
    await api.del(`/api/monitoring/alert_rules/${encodeURIComponent(rule.id)}`);
    ctx.toast(`Rule "${rule.name}" deleted`);
    await ctx.refresh();
  });
  return h("div", { class: "actions" },
    h("a", { href: `#/rules/${encodeURIComponent(rule.id)}/edit`, "aria-label": `Edit rule ${rule.name}` }, "Edit"),
    del, status);
}

// -- the form ------------------------------------------------------------------------------

export const ruleFormPage = {
  nav: "rules",
  live: false, // a form does not redraw under the user's hands
  title: (d) => (d.rule ? `Edit ${d.rule.name}` : "New alert rule"),
  async load(ctx) {
    const [rule, channels] = await Promise.all([
      ctx.params.id ? api.get(`/api/monitoring/alert_rules/${encodeURIComponent(ctx.params.id)}`) : null,
      api.getOptional("/api/notification_channels", []),
    ]);
    return { rule, channels };
  },
  render({ rule, channels }, ctx) {
    return ruleForm(rule, channels, ctx);
  },
};

function field(id, label, input, hint) {
  const error = h("p", { class: "field-error", id: `${id}-error` });
  input.id = id;
  input.name = id;
  input.setAttribute("aria-describedby", [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(" "));
  return h("div", { class: "field", "data-field": id },
    h("label", { for: id }, label), input, hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null, error);
}

function ruleForm(rule, channels, ctx) {
  const preset = ctx.query;
  const scopeKind = rule ? (["device_id", "device_type", "source"].find((s) => rule[s]) ?? "all")
    : (preset.get("source") ? "source" : preset.get("device_id") ? "device_id" : "all");
  const scopeValue = rule ? (rule[scopeKind] ?? "") : (preset.get("source") ?? preset.get("device_id") ?? "");
  const opt = (value, text, selected) => h("option", { value, selected }, text);
  const inputs = {
    name: h("input", { type: "text", maxlength: 200, value: rule?.name ?? "", autocomplete: "off" }),
    metric: h("input", { type: "text", required: true, value: rule?.metric ?? preset.get("metric") ?? "", autocomplete: "off", spellcheck: "false" }),
    operator: h("select", {}, OPERATORS.map((o) => opt(o, o === "nodata" ? "no data for" : o, (rule?.operator ?? ">") === o))),
    threshold: h("input", { type: "text", inputmode: "decimal", value: rule && rule.threshold !== null ? String(rule.threshold) : "", autocomplete: "off" }),
    for_seconds: h("input", { type: "number", min: 0, step: "any", value: String(rule?.for_seconds ?? 0) }),
    hysteresis: h("input", { type: "number", min: 0, step: "any", value: String(rule?.hysteresis ?? 0) }),
    severity: h("select", {}, SEVERITIES.map((s) => opt(s, s, (rule?.severity ?? "warning") === s))),
    scope: h("select", {}, opt("all", "all devices and models", scopeKind === "all"),
      opt("device_id", "one device", scopeKind === "device_id"), opt("device_type", "a device type", scopeKind === "device_type"),
      opt("source", "one model or job", scopeKind === "source")),
    scope_value: h("input", { type: "text", value: scopeValue, autocomplete: "off" }),
  };
  const enabled = h("input", { type: "checkbox", id: "enabled", checked: rule ? rule.enabled : true });
  const chosen = new Set(rule?.channels ?? []);
  const channelBoxes = channels.map((c) => h("label", { class: "check" },
    h("input", { type: "checkbox", name: "channels", value: c.id, checked: chosen.has(c.id),
      "aria-describedby": "channels-error" }), ` ${c.name} (${c.type})`));
  const scopeField = field("scope_value", "Device, type or model", inputs.scope_value, "e.g. thermo-1, thermo or model:churn-v3");
  const syncScope = () => { scopeField.hidden = inputs.scope.value === "all"; };
  inputs.scope.addEventListener("change", syncScope);
  syncScope();
  const formError = h("div", { class: "form-error", role: "alert", id: "rule-form-error" });
  const status = statusLine("rule-form-status");
  const submit = h("button", { type: "submit", id: "rule-submit" }, rule ? "Save changes" : "Create rule");

  const form = h("form", { class: "rule-form", novalidate: true, "aria-labelledby": "rule-form-title" },
    h("h1", { id: "rule-form-title" }, rule ? `Edit rule ${rule.name}` : "New alert rule"),
    formError,
    field("metric", "Metric", inputs.metric, "The metric name, e.g. temperature or accuracy"),
    h("div", { class: "row" },
      field("operator", "Condition", inputs.operator),
      field("threshold", "Threshold", inputs.threshold, "A number; == and != also take true, false or text")),
    h("div", { class: "row" },
      field("for_seconds", "For at least (seconds)", inputs.for_seconds, "0 = at once"),
      field("hysteresis", "Hysteresis", inputs.hysteresis, "How far back past the threshold before it clears")),
    h("div", { class: "row" },
      field("scope", "Applies to", inputs.scope), scopeField),
    field("severity", "Severity", inputs.severity),
    field("name", "Name (optional)", inputs.name, "Left empty, the rule is named after its condition"),
    h("fieldset", { id: "channels", "aria-describedby": "channels-error" }, h("legend", {}, "Notify"),
      channelBoxes.length ? channelBoxes : h("p", { class: "muted" }, "No notification channels (an admin can add them on the Channels page)."),
      h("p", { class: "field-error", id: "channels-error" })),
    h("label", { class: "check" }, enabled, " Enabled"),
    h("div", { class: "buttons" }, submit, h("a", { href: "#/rules" }, "Cancel")),
    status);

  // The field an error's path points at: /channels/N is that channel's checkbox (of the
  // channels sent), the scope's three keys share one input.
  let sentChannels = [];
  const fieldFor = (path) => {
    const [, name = "", index] = path.split("/");
    if (name === "channels") {
      const id = index === undefined ? null : sentChannels[Number(index)];
      const box = id === null ? null : [...form.querySelectorAll("input[name=channels]")].find((b) => b.value === id);
      return { input: box ?? form.querySelector("#channels"), error: form.querySelector("#channels-error") };
    }
    const id = ["device_id", "device_type", "source"].includes(name) ? "scope_value" : name;
    const input = id && inputs[id] ? inputs[id] : null;
    return input ? { input, error: form.querySelector(`#${id}-error`) } : null;
  };
  const showErrors = (errors) => {
    const { unplaced, first } = markFields(form, errors, fieldFor);
    const marked = errors.length - unplaced.length;
    formError.replaceChildren(...(errors.length
      ? [h("p", {}, marked
        ? `Please correct ${marked === 1 ? "the marked field" : `the ${marked} marked fields`}.`
        : "The rule was not saved:"),
      unplaced.length ? h("ul", {}, unplaced.map((e) => h("li", {}, e.message))) : null].filter(Boolean) : []));
    (first ?? formError).focus?.();
  };

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const doc = {
      metric: inputs.metric.value.trim(),
      operator: inputs.operator.value,
      threshold: parseThreshold(inputs.threshold.value, inputs.operator.value),
      for_seconds: inputs.for_seconds.value === "" ? NaN : Number(inputs.for_seconds.value),
      hysteresis: inputs.hysteresis.value === "" ? NaN : Number(inputs.hysteresis.value),
      severity: inputs.severity.value,
      enabled: enabled.checked,
      channels: [...form.querySelectorAll("input[name=channels]:checked")].map((c) => c.value),
    };
    if (inputs.name.value.trim()) doc.name = inputs.name.value.trim();
    if (inputs.scope.value !== "all") doc[inputs.scope.value] = inputs.scope_value.value.trim();
    if (inputs.threshold.value.trim() === "" && doc.operator !== "nodata") delete doc.threshold;
    const errors = validateRule(doc);
    if (errors.length) return showErrors(errors); // nothing is posted
    showErrors([]);
    sentChannels = doc.channels;
    await act(submit, status, async () => {
      try {
        if (rule) {
          // a scope left out of a PATCH keeps the old one: say "none" explicitly
          for (const s of ["device_id", "device_type", "source"]) if (!(s in doc)) doc[s] = null;
          await api.patch(`/api/monitoring/alert_rules/${encodeURIComponent(rule.id)}`, doc);
        } else {
          await api.postJson("/api/monitoring/alert_rules", doc);
        }
      } catch (e) {
        if (e instanceof api.ApiError && Array.isArray(e.problem.errors) && e.problem.errors.length) {
          // the API's words for programmers, as plain words on the fields they name
          showErrors(e.problem.errors.map((err) => ({ path: err.path, message: plainWords(e.problem, err) })));
          return;
        }
        throw e;
      }
      ctx.toast(rule ? "Rule saved" : "Rule created");
      router.go("/rules");
    });
  });
  return h("div", { class: "page narrow" }, h("p", { class: "crumbs" }, h("a", { href: "#/rules" }, "Alert rules"), " / ", rule ? "edit" : "new"), form);
}
