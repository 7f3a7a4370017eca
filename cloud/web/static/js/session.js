// The signed-in session, shared by every tab of this browser (docs/decisions/dashboard-sessions.md).
//
// The refresh token is an HttpOnly cookie scoped to /api/auth: no script here can read it, and
// data requests never carry it. The access token (minutes) lives only in this module's memory,
// so a page load starts by refreshing. The tabs coordinate over a BroadcastChannel: a tab that
// refreshed hands the new access token to all the others (one refresh serves every tab), and a
// logout in one tab logs out all of them. Refreshes are serialized across tabs by a Web Lock:
// a refresh token is single-use, and the same one presented twice is taken for a stolen copy
// (the server ends the whole session).

const CHANNEL = "iotsphere.session";
const LOCK = "iotsphere.session.refresh";

let current = null; // { access, expiresAt, ttl }, expiry in this browser's own clock
const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL) : null;
const logoutListeners = [];
const tokenListeners = [];

export function get() {
  return current;
}

// `tokens` is the API's login/refresh answer.
export function adopt(tokens, now = Date.now()) {
  const ttl = Math.max(1, Number(tokens.expires_in) || 0) * 1000;
  current = { access: tokens.access_token, expiresAt: now + ttl, ttl };
  return current;
}

// Replace the in-memory session (tests use it to hand the page an expired token).
export function set(s) {
  current = s;
}

export function clear() {
  current = null;
}

// The server sets a secret-free hint cookie beside the HttpOnly refresh cookie (and clears
// both): without it a refresh could only answer 401.
export function mayRefresh() {
  return document.cookie.split(";").some((c) => c.trim() === "iotsphere_signed_in=1");
}

// Refresh a little before expiry (a fifth of the lifetime, at most a minute), so a request
// never goes out with a token about to lapse.
export function needsRefresh(s, now = Date.now()) {
  return now >= s.expiresAt - Math.min(60_000, s.ttl / 5);
}

// Tell the other tabs: a fresh access token, or that the user logged out.
export function shareToken(s) {
  channel?.postMessage({ type: "token", session: s });
}

export function shareLogout() {
  channel?.postMessage({ type: "logout" });
}

export function onLogout(fn) {
  logoutListeners.push(fn);
}

export function onToken(fn) {
  tokenListeners.push(fn);
}

// the user and org an access token names (its claims are readable: only the server can sign)
function whose(access) {
  try {
    const claims = JSON.parse(atob(access.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return `${claims.sub}|${claims.org}`;
  } catch {
    return null;
  }
}

channel?.addEventListener("message", (ev) => {
  const msg = ev.data ?? {};
  if (msg.type === "logout") {
    current = null;
    for (const fn of logoutListeners) fn();
  } else if (msg.type === "token" && msg.session && typeof msg.session.access === "string") {
    if (current && whose(msg.session.access) !== whose(current.access)) {
      // another user signed in from another tab (the cookie is theirs now): this tab must not
      // go on sending their token under what it shows of ours; start over as them
      current = null;
      location.reload();
      return;
    }
    if (!current || msg.session.expiresAt > current.expiresAt) current = msg.session;
    for (const fn of tokenListeners) fn(current);
  }
});

// Run fn while no other tab of this browser refreshes: a Web Lock where there is one (a
// secure context: HTTPS or localhost), else a lease in localStorage (plain HTTP on a LAN).
// Without either, of 5 tabs opened at once after a login only 1 or 2 stayed signed in (3 runs):
// the others presented a refresh token a sibling had just used, which ends the session.
export function exclusive(fn) {
  return globalThis.navigator?.locks ? navigator.locks.request(LOCK, fn) : leased(fn);
}

const LEASE_MS = 10_000; // longer than a refresh takes; a tab closed mid-refresh frees it by then
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Write our id, wait, read it back: of tabs racing, the last writer wins and the others see
// it and wait (a lease is not a lock, but two tabs need to write within the same 50 ms and
// both read their own id for it to fail).
async function leased(fn) {
  const id = Math.random().toString(36).slice(2);
  for (;;) {
    const held = JSON.parse(localStorage.getItem(LOCK) || "null");
    if (!held || held.until < Date.now()) {
      localStorage.setItem(LOCK, JSON.stringify({ id, until: Date.now() + LEASE_MS }));
      await sleep(50);
      if (JSON.parse(localStorage.getItem(LOCK) || "null")?.id === id) break;
    }
    await sleep(100 + Math.random() * 100);
  }
  try {
    return await fn();
  } finally {
    if (JSON.parse(localStorage.getItem(LOCK) || "null")?.id === id) localStorage.removeItem(LOCK);
  }
}
