// The API client: bearer token, refresh before expiry, and the seed's error rules:
// 401 -> the login page (and back here afterwards), 503 -> ApiError.unavailable (the page
// shows a friendly message with a retry button), anything else -> ApiError carrying the
// problem document (RFC 9457), whose title the page shows.

import * as session from "./session.js";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.title);
    this.status = status;
    this.problem = problem;
  }
  // 0: the request never got an answer (server down, network gone): as friendly as a 503
  get unavailable() {
    return this.status === 503 || this.status === 0;
  }
}

// Thrown once the browser is on its way to the login page: callers just stop.
export class Redirecting extends Error {}

export function safeNext(next) {
  // only a path on this site; never "//host" or "/\host" (open redirect), never the login page
  if (typeof next !== "string" || !next.startsWith("/") || next.startsWith("//") ||
      next.startsWith("/\\") || next.startsWith("/login")) return "/";
  return next;
}

let leaving = false; // parallel requests may all get 401: navigate once

export function toLogin(reason = "expired") {
  if (!leaving) {
    leaving = true;
    session.clear();
    const next = location.pathname + location.search + location.hash;
    location.assign(`/login?reason=${reason}&next=${encodeURIComponent(safeNext(next))}`);
  }
  throw new Redirecting();
}

export async function asError(response) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    // not JSON (a proxy's error page): keep the status line
  }
  if (!problem || typeof problem !== "object" || Array.isArray(problem)) problem = {};
  if (typeof problem.title !== "string" || !problem.title) {
    problem.title = response.statusText || `Error ${response.status}`;
  }
  problem.retryAfter = response.headers.get("Retry-After");
  return new ApiError(response.status, problem);
}

function unreachable() {
  return new ApiError(0, {
    title: "Cannot reach the server",
    detail: "The IoTSphere server did not answer. Check the connection and try again.",
  });
}

async function post(path, body) {
  try {
    return await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
  } catch {
    throw unreachable();
  }
}

export async function login(email, password) {
  const r = await post("/api/auth/login", { email, password });
  if (!r.ok) throw await asError(r);
  return session.save(await r.json());
}

let refreshing = null; // one refresh at a time: refresh tokens are single-use

function refresh(s) {
  refreshing ??= (async () => {
    const r = await post("/api/auth/refresh", { refresh_token: s.refresh });
    if (r.status === 401) toLogin();
    if (!r.ok) throw await asError(r);
    return session.save(await r.json());
  })().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

async function currentSession() {
  const s = session.load();
  if (!s) toLogin("signin");
  return session.needsRefresh(s) ? refresh(s) : s;
}

export async function request(method, path, body) {
  const s = await currentSession();
  const headers = { Authorization: `Bearer ${s.access}`, Accept: "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch {
    throw unreachable();
  }
  if (r.status === 401) toLogin();
  if (!r.ok) throw await asError(r);
  return r.status === 204 ? null : r.json();
}

export const get = (path) => request("GET", path);
export const del = (path) => request("DELETE", path);
export const postJson = (path, body) => request("POST", path, body);
export const patch = (path, body) => request("PATCH", path, body);

// GET, but a 403 (the viewer role may not list channels) answers `fallback`
export async function getOptional(path, fallback) {
  try {
    return await get(path);
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) return fallback;
    throw e;
  }
}

export function logout() {
  session.clear();
  location.assign("/login?reason=logout");
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, v);
  return q.toString();
}
