// The signed-in session: tokens live in this tab's sessionStorage only (gone when the tab
// closes, never shared with other tabs or sent anywhere but our own API). The pages' CSP
// allows no foreign or inline script, which is what could otherwise read them.

const KEY = "iotsphere.session";

export function load() {
  try {
    const s = JSON.parse(sessionStorage.getItem(KEY));
    return s && typeof s.access === "string" && typeof s.refresh === "string" ? s : null;
  } catch {
    return null;
  }
}

// `tokens` is the API's login/refresh answer; expiry is kept in this browser's own clock.
export function save(tokens, now = Date.now()) {
  const ttl = Math.max(1, Number(tokens.expires_in) || 0) * 1000;
  const s = { access: tokens.access_token, refresh: tokens.refresh_token, expiresAt: now + ttl, ttl };
  sessionStorage.setItem(KEY, JSON.stringify(s));
  return s;
}

export function clear() {
  sessionStorage.removeItem(KEY);
}

// Refresh a little before expiry (a fifth of the lifetime, at most a minute), so a request
// never goes out with a token about to lapse.
export function needsRefresh(s, now = Date.now()) {
  return now >= s.expiresAt - Math.min(60_000, s.ttl / 5);
}
