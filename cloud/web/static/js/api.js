// The API client: bearer token (in memory, session.js), refreshed through the HttpOnly cookie
// before it expires, and the seed's error rules: 401 -> one refresh and a retry, then the login
// page (and back here afterwards), 503 -> ApiError.unavailable (the page keeps its data and
// retries), anything else -> ApiError carrying the problem document (RFC 9457).

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

function goLogin(reason) {
  if (leaving || location.pathname.startsWith("/login")) return;
  leaving = true;
  session.clear();
  const next = location.pathname + location.search + location.hash;
  location.assign(`/login?reason=${reason}&next=${encodeURIComponent(safeNext(next))}`);
}

export function toLogin(reason = "expired") {
  goLogin(reason);
  throw new Redirecting();
}

// Logged out in another tab: this one follows at once (its access token is dropped).
session.onLogout(() => goLogin("logout"));

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

// The auth endpoints: same-origin, so the browser sends (and stores) the refresh cookie.
async function post(path, body) {
  const init = { method: "POST", headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(path, init);
  } catch {
    throw unreachable();
  }
}

export async function login(email, password) {
  // cookie: the refresh token comes back as an HttpOnly cookie, never in this answer
  const r = await post("/api/auth/login", { email, password, cookie: true });
  if (!r.ok) throw await asError(r);
  const s = session.adopt(await r.json());
  session.shareToken(s);
  return s;
}

let refreshing = null; // one refresh at a time in this tab; session.exclusive across tabs

// `stale` is the session this tab found lacking (null on a fresh page load).
function refresh(stale) {
  refreshing ??= session.exclusive(async () => {
    // another tab may have refreshed while this one waited for the lock: use its token
    const now = session.get();
    if (now && now !== stale && !session.needsRefresh(now)) return now;
    const r = await post("/api/auth/refresh"); // no body: the cookie is the refresh token
    if (r.status === 401) toLogin(stale ? "expired" : "signin");
    if (!r.ok) throw await asError(r);
    const s = session.adopt(await r.json());
    session.shareToken(s);
    return s;
  }).finally(() => {
    refreshing = null;
  });
  return refreshing;
}

async function currentSession() {
  const s = session.get();
  // never signed in in this browser (no hint cookie): straight to the login page
  if (!s && !session.mayRefresh()) toLogin("signin");
  return !s || session.needsRefresh(s) ? refresh(s) : s;
}

async function send(method, path, body, s) {
  const headers = { Authorization: `Bearer ${s.access}`, Accept: "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  try {
    return await fetch(path, init);
  } catch {
    throw unreachable();
  }
}

export async function request(method, path, body) {
  const s = await currentSession();
  let r = await send(method, path, body, s);
  // the access token was refused (expired early, or revoked): one refresh through the cookie,
  // then the same request once more; a second 401 means the session is over
  if (r.status === 401) r = await send(method, path, body, await refresh(s));
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

// Log out this browser: every tab at once, and the server forgets the refresh token.
export async function logout() {
  session.clear();
  session.shareLogout();
  try {
    await post("/api/auth/logout");
  } catch {
    // unreachable: the cookie stays until it expires, but no tab holds an access token
  }
  leaving = true;
  location.assign("/login?reason=logout");
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, v);
  return q.toString();
}
