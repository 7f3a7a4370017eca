// Client-side check of an alert rule document: the same rules, paths and limits as the API's
// validator (common/rules.py _check), so the form catches mistakes before anything is posted.
// tests/cloud/test_web_dashboard.py runs both on the same documents and compares the field paths.

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
    bad("/name", `must be a non-empty string of at most ${MAX_NAME_LENGTH} characters`);
  }
  if (v.metric === undefined) bad("/metric", "required");
  else if (typeof v.metric !== "string" || !METRIC_NAME.test(v.metric)) bad("/metric", "must match [A-Za-z0-9_.-]{1,64}");

  const op = v.operator;
  if (op === undefined) bad("/operator", "required");
  else if (!OPERATORS.includes(op)) bad("/operator", `unknown operator; expected one of ${OPERATORS.join(", ")}`);

  const t = v.threshold;
  if (ORDERING.includes(op)) {
    if (t === undefined) bad("/threshold", `required for operator '${op}'`);
    else if (!finite(t)) bad("/threshold", `must be a finite number for operator '${op}'`);
  } else if (EQUALITY.includes(op)) {
    if (t === undefined) bad("/threshold", `required for operator '${op}'`);
    else if (isNumber(t)) { if (!Number.isFinite(t)) bad("/threshold", "must be a finite number"); }
    else if (typeof t === "string") { if (t.length > MAX_STRING_VALUE) bad("/threshold", `strings are at most ${MAX_STRING_VALUE} characters`); }
    else if (typeof t !== "boolean") bad("/threshold", "must be a number, a boolean or a string");
  } else if (op === "nodata" && t !== undefined) {
    bad("/threshold", "a nodata rule takes no threshold");
  }

  if (!finite(v.for_seconds) || v.for_seconds < 0) bad("/for_seconds", "must be a finite number >= 0");
  else if (op === "nodata" && v.for_seconds <= 0) bad("/for_seconds", "a nodata rule needs for_seconds > 0");

  if (!finite(v.hysteresis) || v.hysteresis < 0) bad("/hysteresis", "must be a finite number >= 0");
  else if (v.hysteresis > 0 && OPERATORS.includes(op) && !ORDERING.includes(op)) {
    bad("/hysteresis", "applies only to the operators >, >=, <, <=");
  }

  if (!SEVERITIES.includes(v.severity)) bad("/severity", `must be one of ${SEVERITIES.join(", ")}`);
  if (typeof v.enabled !== "boolean") bad("/enabled", "must be true or false");

  if (!Array.isArray(v.channels)) bad("/channels", "must be an array of channel ids");
  else v.channels.forEach((c, i) => { if (!idLike(c)) bad(`/channels/${i}`, "must be a non-empty channel id"); });

  const given = SCOPES.filter((s) => v[s] !== undefined);
  for (const s of given) {
    if (!idLike(v[s])) bad(`/${s}`, `must be a non-empty string of at most ${MAX_ID_LENGTH} characters`);
  }
  if (given.length > 1) for (const s of given) bad(`/${s}`, "give at most one of device_id, device_type, source");
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
