// Live by push: one Server-Sent Events stream per tab (GET /api/events) tells the shell which
// kinds of data changed in the user's org (devices, gateways, alerts, deliveries); the shell
// then fetches the current page's data and patches it in place. Polling is the fallback while
// the stream is down (app.js): no EventSource, a proxy that buffers, the server restarting.
//
// EventSource cannot send the Authorization header, so each connection first asks for a
// short-lived stream ticket with the bearer token (POST /api/events/ticket) and puts that in
// the URL, never the access token. The server ends a stream after 5 minutes, or when the tab
// does not keep up; we then take a new ticket and reconnect, and `ready` makes the page
// refetch, so nothing is missed across a reconnect.

import * as api from "./api.js";

const MAX_BACKOFF_S = 30;

// onChange(kinds): kinds is an array, or null after (re)connecting (refetch everything).
// onState(pushing): true while the stream is open.
export function connect({ onChange, onState }) {
  let source = null;
  let timer = null;
  let failures = 0;
  let stopped = false;
  let attempt = 0; // each open() and stop() moves it: an open() that awaited its ticket across
  // a stop() and start() (a tab hidden and shown quickly) is stale and must not open a second
  // stream

  const retry = () => {
    clearTimeout(timer);
    const wait = Math.min(MAX_BACKOFF_S, 2 ** failures);
    failures += 1;
    timer = setTimeout(open, wait * 1000);
  };

  async function open() {
    if (stopped || source) return;
    if (typeof EventSource !== "function") { onState(false); return; }
    const mine = ++attempt;
    let ticket;
    try {
      ticket = (await api.postJson("/api/events/ticket")).ticket;
    } catch (e) {
      if (e instanceof api.Redirecting || mine !== attempt) return;
      onState(false);
      retry();
      return;
    }
    if (stopped || mine !== attempt || source) return;
    const es = new EventSource(`/api/events?ticket=${encodeURIComponent(ticket)}`);
    source = es;
    es.addEventListener("ready", () => {
      failures = 0;
      onState(true);
      onChange(null);
    });
    es.addEventListener("change", (ev) => {
      let kinds = null;
      try { kinds = JSON.parse(ev.data).kinds; } catch { /* refetch everything */ }
      onChange(Array.isArray(kinds) ? kinds : null);
    });
    // closed by the server (lifetime, a slow tab, a restart) or never opened: the ticket in
    // the URL is short-lived, so reconnect ourselves with a new one instead of the browser
    es.addEventListener("error", () => {
      es.close();
      if (source === es) source = null;
      onState(false);
      if (!stopped) retry();
    });
  }

  open();
  return {
    stop() {
      stopped = true;
      attempt += 1;
      clearTimeout(timer);
      source?.close();
      source = null;
      onState(false);
    },
    start() {
      if (!stopped) return;
      stopped = false;
      failures = 0;
      open();
    },
  };
}
