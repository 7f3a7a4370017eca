// API keys (admin only): the keys ML jobs and scripts use to post metrics
// (POST /api/monitoring/metrics with X-API-Key). Create one with a name; its secret is shown
// once, here, with a copy button (the server keeps only a digest); list; revoke after a
// confirming second click.

import * as api from "../api.js";
import { act, deleteButton } from "../actions.js";
import { h, section, statusLine, table } from "../dom.js";
import * as fmt from "../format.js";

// The secret of the key just created. Kept here, not in the page's data, so a re-render (after
// a revoke or a create) does not lose it before it was copied; gone when the user leaves the
// page or says it is saved.
let revealed = null;
window.addEventListener("hashchange", () => { revealed = null; });

export const apiKeysPage = {
  nav: "api-keys",
  live: false, // it holds a form
  // redrawn whole, not patched (morph.js): the panel with the new key and the form's own
  // listeners must not be morphed into other elements
  morph: false,
  title: () => "API keys",
  async load() {
    return { keys: await api.get("/api/api_keys") };
  },
  render({ keys }, ctx) {
    const active = keys.filter((k) => k.revoked_at === null || k.revoked_at === undefined);
    const revoked = keys.filter((k) => !active.includes(k));
    return h("div", { class: "page" },
      h("h1", {}, "API keys"),
      h("p", { class: "muted" },
        "Jobs and models post their metrics with an API key (header X-API-Key). " +
        "Give each job its own key, so one can be revoked without stopping the others."),
      revealed ? secretPanel(revealed) : null,
      section("Create a key", createForm(ctx)),
      table("API keys in use", ["Name", "Created", "Created by", "Last used", "Actions"],
        active.map((k) => [k.name, fmt.when(k.created_at), k.created_by,
          // to the minute (the server writes a use at most once a minute)
          fmt.when(k.last_used_at),
          revokeButton(k, ctx)]),
        "No API keys yet. Create one above for each job that posts metrics."),
      revoked.length
        ? table("Revoked API keys", ["Name", "Created", "Revoked"],
          revoked.map((k) => [k.name, fmt.when(k.created_at), fmt.when(k.revoked_at)]), "")
        : null);
  },
};

function secretPanel({ name, key }) {
  const status = statusLine("api-key-copy-status");
  const field = h("input", { id: "api-key-secret", type: "text", readonly: true, value: key,
    spellcheck: "false", autocomplete: "off", "aria-describedby": "api-key-secret-hint" });
  const copy = h("button", { type: "button", id: "api-key-copy" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(key);
      status.textContent = "Copied to the clipboard.";
    } catch {
      // no clipboard permission (or not a secure context): select it for Ctrl+C instead
      field.select();
      status.textContent = "Selected: press Ctrl+C (or ⌘+C) to copy it.";
    }
  });
  const done = h("button", { type: "button", class: "secondary", id: "api-key-done" }, "I have saved it");
  done.addEventListener("click", () => { revealed = null; done.closest("section").remove(); });
  return h("section", { id: "s-new-key", class: "secret", "aria-labelledby": "s-new-key-title" },
    h("h2", { id: "s-new-key-title" }, `Key "${name}" created`),
    h("label", { for: "api-key-secret" }, "The key"),
    h("div", { class: "copy-row" }, field, copy),
    h("p", { class: "hint", id: "api-key-secret-hint" },
      "This is the only time the key is shown: IoTSphere keeps only a fingerprint of it. " +
      "Store it where the job reads its secrets."),
    status, done);
}

function createForm(ctx) {
  const name = h("input", { id: "api-key-name", type: "text", required: true, maxlength: 100,
    autocomplete: "off", "aria-describedby": "api-key-name-error" });
  const error = h("p", { class: "field-error", id: "api-key-name-error" });
  const status = statusLine("api-key-form-status");
  const submit = h("button", { type: "submit", id: "api-key-create" }, "Create key");
  const form = h("form", { class: "inline-form", novalidate: true },
    h("div", {}, h("label", { for: "api-key-name" }, "Name"), name, error), submit, status);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = name.value.trim();
    name.removeAttribute("aria-invalid");
    error.textContent = "";
    if (!value) {
      name.setAttribute("aria-invalid", "true");
      error.textContent = "Give the key a name, e.g. the job that will use it.";
      name.focus();
      return;
    }
    act(submit, status, async () => {
      const created = await api.postJson("/api/api_keys", { name: value });
      revealed = { name: created.name, key: created.key };
      await ctx.refresh();
      document.getElementById("api-key-secret")?.focus();
    });
  });
  return form;
}

function revokeButton(key, ctx) {
  const status = statusLine(`api-key-status-${key.id}`);
  const button = deleteButton(`revoke-${key.id}`, `Revoke API key ${key.name}`, status, async () => {
    await api.del(`/api/api_keys/${encodeURIComponent(key.id)}`);
    ctx.toast(`API key "${key.name}" revoked`);
    await ctx.refresh();
  }, { label: "Revoke", confirm: "Confirm revoke" });
  return h("div", { class: "actions" }, button, status);
}
