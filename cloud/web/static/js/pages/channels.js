// Notification channels (webhook, email): list, add, delete. Operators may read them; only
// admins change them (the API answers 403 otherwise, shown with its title).

import * as api from "../api.js";
import { act, deleteButton } from "../actions.js";
import { h, section, statusLine, table } from "../dom.js";
import { markFields, plainWords } from "../field-errors.js";

export const channelsPage = {
  nav: "channels",
  title: () => "Notification channels",
  async load() {
    return { channels: await api.get("/api/notification_channels") };
  },
  render({ channels }, ctx) {
    return h("div", { class: "page" },
      h("h1", {}, "Notification channels"),
      h("p", { class: "muted" }, "Where alerts are sent. Each alert shows its delivery status per channel on the Alerts page."),
      table("Notification channels", ["Name", "Type", "Sends to", "Actions"],
        channels.map((c) => [c.name, c.type, c.type === "webhook" ? `${c.url}${c.signed ? " (signed)" : ""}` : c.to, remove(c, ctx)]),
        "No channels yet. Add a webhook or an e-mail address below."),
      section("Add a channel", addForm(ctx)));
  },
  live: false, // it holds a form
};

function remove(channel, ctx) {
  const status = statusLine(`channel-status-${channel.id}`);
  const button = deleteButton(`delete-channel-${channel.id}`, `Delete channel ${channel.name}`, status, async () => {
    await api.del(`/api/notification_channels/${encodeURIComponent(channel.id)}`);
    ctx.toast(`Channel "${channel.name}" deleted`);
    await ctx.refresh();
  });
  return h("div", { class: "actions" }, button, status);
}

// A labelled input with its own error line (field-errors.js writes there).
function field(label, input) {
  return h("div", {}, label, input, h("p", { class: "field-error", id: `${input.id}-error` }));
}

function addForm(ctx) {
  const name = h("input", { id: "channel-name", type: "text", required: true, maxlength: 100, autocomplete: "off" });
  const type = h("select", { id: "channel-type" }, h("option", { value: "webhook" }, "Webhook"), h("option", { value: "email" }, "E-mail"));
  const target = h("input", { id: "channel-target", type: "url", required: true, autocomplete: "off" });
  const targetLabel = h("label", { for: "channel-target" }, "URL");
  type.addEventListener("change", () => {
    targetLabel.textContent = type.value === "webhook" ? "URL" : "E-mail address";
    target.type = type.value === "webhook" ? "url" : "email";
  });
  const status = statusLine("channel-form-status");
  const submit = h("button", { type: "submit" }, "Add channel");
  const form = h("form", { class: "inline-form", novalidate: true },
    field(h("label", { for: "channel-name" }, "Name"), name),
    field(h("label", { for: "channel-type" }, "Type"), type),
    field(targetLabel, target), submit, status);
  const inputs = { name, type, url: target, to: target };
  const fieldFor = (path) => {
    const input = inputs[path.split("/")[1]];
    return input ? { input, error: form.querySelector(`#${input.id}-error`) } : null;
  };
  const show = (errors) => {
    const { unplaced, first } = markFields(form, errors, fieldFor);
    status.textContent = unplaced.map((e) => e.message).join(" ");
    status.classList.toggle("error", unplaced.length > 0);
    first?.focus();
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const errors = [];
    if (!name.value.trim()) errors.push({ path: "/name", message: "Give the channel a name, e.g. ops on-call." });
    if (!target.value.trim() || !target.checkValidity()) {
      errors.push(type.value === "webhook"
        ? { path: "/url", message: "Enter the address to call, starting with https:// or http://." }
        : { path: "/to", message: "Enter an e-mail address such as ops@example.com." });
    }
    show(errors);
    if (errors.length) return;
    const body = { name: name.value.trim(), type: type.value };
    body[type.value === "webhook" ? "url" : "to"] = target.value.trim();
    act(submit, status, async () => {
      try {
        await api.postJson("/api/notification_channels", body);
      } catch (e) {
        if (e instanceof api.ApiError && Array.isArray(e.problem.errors) && e.problem.errors.length) {
          show(e.problem.errors.map((err) => ({ path: err.path, message: plainWords(e.problem, err) })));
          return;
        }
        throw e;
      }
      ctx.toast(`Channel "${body.name}" added`);
      await ctx.refresh();
    });
  });
  return form;
}
