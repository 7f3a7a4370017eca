// Client-side check of an alert rule document: the same rules, paths and limits as the API's
// validator (common/rule_validation.py), so the form catches mistakes before anything is
// posted. tests/cloud/test_web_dashboard.py runs both on the same documents and compares the
// field paths. The messages are for people filling in the form: plain words saying what to
// do, no patterns, no JSON terms (the API's own messages are for programmers).

export const OPERATORS = [">", ">=", "<", "<=", "==", "!=", "nodata"];
export const ORDERING = [">", ">=", "<", "<="];
export const EQUALITY = ["==", "!="];
export const SEVERITIES = ["info", "warning", "critical"];
export const SCOPES = ["device_id", "device_type", "source"];
export const METRIC_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
export const MAX_ID_LENGTH = 128;
export const MAX_NAME_LENGTH = 200;
export const MAX_STRING_VALUE = 256;

const isNumber = (x) => typeof x === "number";
const finite = (x) => isNumber(x) && Number.isFinite(x);
const idLike = (x) => typeof x === "string" && x.length > 0 && x.length <= MAX_ID_LENGTH;

// Returns [{path, message}] for a rule document (null/undefined fields take the defaults).
export function validateRule(doc) {
  const errors = [];
  const bad = (path, message) => errors.push({ path, message });
  const v = {
    for_seconds: 0, hysteresis: 0, severity: "warning", enabled: true, channels: [],
    ...Object.fromEntries(Object.entries(doc).filter(([, x]) => x !== null && x !== undefined)),
  };
  if ("name" in v && (typeof v.name !== "string" || !v.name.trim() || v.name.length > MAX_NAME_LENGTH)) {
    bad("/name", `Use at most ${MAX_NAME_LENGTH} characters, or leave the name empty.`);
  }
  if (v.metric === undefined || v.metric === "") bad("/metric", "Enter the metric to watch, e.g. temperature.");
  else if (typeof v.metric !== "string" || !METRIC_NAME.test(v.metric)) {
    bad("/metric", "Use only letters, digits, dots, dashes and underscores, no spaces, at most 64 characters (e.g. cpu_temp).");
  }

  const op = v.operator;
  if (op === undefined || !OPERATORS.includes(op)) bad("/operator", "Choose a condition from the list.");

  const t = v.threshold;
  if (ORDERING.includes(op)) {
    if (t === undefined) bad("/threshold", "Enter the value to compare with, e.g. 30.");
    else if (!finite(t)) bad("/threshold", `Enter a number, e.g. 30 or 0.8: "${op}" compares numbers.`);
  } else if (EQUALITY.includes(op)) {
    if (t === undefined) bad("/threshold", "Enter the value to compare with: a number, true, false or a word.");
    else if (isNumber(t)) { if (!Number.isFinite(t)) bad("/threshold", "Enter an ordinary number, e.g. 30."); }
    else if (typeof t === "string") { if (t.length > MAX_STRING_VALUE) bad("/threshold", `Use at most ${MAX_STRING_VALUE} characters.`); }
    else if (typeof t !== "boolean") bad("/threshold", "Enter a number, true, false or a word.");
  } else if (op === "nodata" && t !== undefined) {
    bad("/threshold", '"No data for" takes no threshold: leave it empty.');
  }

  if (!finite(v.for_seconds) || v.for_seconds < 0) bad("/for_seconds", "Enter a number of seconds, 0 or more.");
  else if (op === "nodata" && v.for_seconds <= 0) {
    bad("/for_seconds", '"No data for" needs a time: how many seconds without a value raise the alert.');
  }

  if (!finite(v.hysteresis) || v.hysteresis < 0) bad("/hysteresis", "Enter a number, 0 or more.");
  else if (v.hysteresis > 0 && OPERATORS.includes(op) && !ORDERING.includes(op)) {
    bad("/hysteresis", "Only >, >=, < and <= use hysteresis: set it to 0.");
  }

  if (!SEVERITIES.includes(v.severity)) bad("/severity", "Choose a severity from the list.");
  if (typeof v.enabled !== "boolean") bad("/enabled", "Tick or clear Enabled.");

  if (!Array.isArray(v.channels)) bad("/channels", "Choose the channels from the list.");
  else v.channels.forEach((c, i) => { if (!idLike(c)) bad(`/channels/${i}`, "Choose the channels from the list."); });

  const given = SCOPES.filter((s) => v[s] !== undefined);
  for (const s of given) {
    if (!idLike(v[s])) bad(`/${s}`, `Enter a device, type or model name of at most ${MAX_ID_LENGTH} characters.`);
  }
  if (given.length > 1) for (const s of given) bad(`/${s}`, "Choose one: a device, a device type or a model.");
  return errors;
}

// The threshold field's text as the API expects it: a number when it reads as one, true/false
// for the equality operators, else the text itself (a string threshold, equality only).
export function parseThreshold(text, operator) {
  const s = text.trim();
  if (operator === "nodata" || s === "") return null;
  if (/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) return Number(s);
  if (EQUALITY.includes(operator) && (s === "true" || s === "false")) return s === "true";
  return ORDERING.includes(operator) ? NaN : s;
}
