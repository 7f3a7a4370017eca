// Outages: when the server answers 503 (its data store is down) or does not answer at all, the
// page keeps what it last showed under a "stale since" banner, counts down to an automatic
// retry that honours the 503's Retry-After, and offers "Retry now". The banner's text is a
// role="status" live region (announced once per outage; the ticking seconds are aria-live
// "off" so a screen reader is not interrupted every second), and it says so in words, not
// only in colour.

import { h } from "./dom.js";

const DEFAULT_WAIT_S = 5; // no Retry-After (the server did not answer): the cloud's own default
const MAX_WAIT_S = 300;

// Retry-After is seconds or an HTTP date; anything else, or nothing, is the default.
export function retryAfterSeconds(value, now = Date.now()) {
  if (value === null || value === undefined || String(value).trim() === "") return DEFAULT_WAIT_S;
  let s = Number(value);
  if (!Number.isFinite(s)) {
    const at = Date.parse(value);
    s = Number.isFinite(at) ? (at - now) / 1000 : DEFAULT_WAIT_S;
  }
  return Math.min(MAX_WAIT_S, Math.max(1, Math.ceil(s)));
}

const clockTime = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

// The banner lives in index.html (#outage, with its #outage-status live region and the
// #retry-now button) so the live region exists before anything is written into it.
export function createOutage(root) {
  const status = root.querySelector("#outage-status");
  const button = root.querySelector("#retry-now");
  let ticker = null;
  let due = 0;

  const stop = () => {
    clearInterval(ticker);
    ticker = null;
  };
  // every countdown on the page ([data-countdown]: the banner's, or the error view's)
  const paint = () => {
    const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
    for (const el of document.querySelectorAll("[data-countdown]")) {
      el.textContent = left > 0 ? `${left} s` : "now";
    }
  };
  const countDown = (seconds) => {
    stop();
    due = Date.now() + seconds * 1000;
    paint();
    ticker = setInterval(paint, 250);
  };

  return {
    // data on screen: keep it, say since when it is stale, count down to the next try
    stale(since, seconds, retryNow) {
      root.classList.add("shown");
      button.hidden = false;
      button.onclick = retryNow;
      const text = [
        h("strong", {}, `Stale since ${clockTime(since)}`),
        ": the server cannot reach its data store, so this page shows what it last received. ",
        "Trying again automatically in ",
        h("span", { id: "outage-countdown", "data-countdown": true, "aria-live": "off" }),
        ".",
      ];
      // rewrite the live region only when the outage starts, not on every failed try
      if (status.dataset.since !== String(since.getTime())) {
        status.dataset.since = String(since.getTime());
        status.replaceChildren(...text);
      }
      countDown(seconds);
    },
    // nothing on screen yet (the error view shows its own countdown): just count
    waiting(seconds) {
      countDown(seconds);
    },
    clear() {
      stop();
      if (!root.classList.contains("shown") && !status.childNodes.length) return;
      root.classList.remove("shown");
      button.hidden = true;
      delete status.dataset.since;
      status.replaceChildren();
    },
    stop,
    clockTime,
  };
}
