// Field errors on forms: a problem document's errors[] (RFC 9457; each a JSON Pointer `path`
// into the body that was sent and a `message` written for programmers) shown on the form
// fields that caused them, in words for the person filling in the form: aria-invalid on the
// field, the words in its error line, which the field names in aria-describedby.

// The API's message for one error, in plain words. The forms check what they can before
// posting, in their own words; what reaches here is what only the server knows (a channel
// deleted meanwhile) or a rule the form does not repeat.
export function plainWords(problem, error) {
  const path = error.path || "";
  if (/^\/channels\/\d+$/.test(path) && (String(problem.type ?? "").endsWith("unknown-channel") ||
      /^no notification channel/.test(error.message ?? ""))) {
    return "This notification channel no longer exists; choose another.";
  }
  return sentence(error.message);
}

// A programmer's message as a sentence: no quoted ids, no patterns.
function sentence(message) {
  let s = String(message ?? "").trim()
    .replace(/'[^']{12,}'|"[^"]{12,}"/g, "this one") // ids mean nothing to a reader
    .replace(/\s*\[[^\]]*\](\{[^}]*\})?/g, ""); // character classes and their counts
  if (!s) return "This value was not accepted.";
  s = s[0].toUpperCase() + s.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

// Mark `errors` ([{path, message}] in plain words) on a form. `fieldFor(path)` answers
// { input, error } (the element to mark, the element to hold the words) or null. Clears
// earlier marks first; returns the errors no field took (to be listed above the form) and
// the first marked input (to take the focus).
export function markFields(form, errors, fieldFor) {
  for (const el of form.querySelectorAll("[data-field-error]")) el.textContent = "";
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  const unplaced = [];
  let first = null;
  for (const e of errors) {
    const target = fieldFor(e.path || "");
    if (!target) {
      unplaced.push(e);
      continue;
    }
    target.input.setAttribute("aria-invalid", "true");
    const described = (target.input.getAttribute("aria-describedby") ?? "").split(/\s+/).filter(Boolean);
    if (!described.includes(target.error.id)) target.input.setAttribute("aria-describedby", [...described, target.error.id].join(" "));
    target.error.setAttribute("data-field-error", "");
    // two errors on one field (rare): both, one sentence after the other
    target.error.textContent = target.error.textContent ? `${target.error.textContent} ${e.message}` : e.message;
    first ??= target.input;
  }
  return { unplaced, first };
}
