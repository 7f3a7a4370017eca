// Buttons that change something (acknowledge, resolve, delete, save): the button is disabled
// while the request runs, and a failure is written next to it with the problem's title.

import { ApiError, Redirecting } from "./api.js";
import { h } from "./dom.js";

export function describe(error) {
  if (error instanceof ApiError) {
    if (error.unavailable) return "The service is temporarily unavailable; nothing was changed. Please try again in a few seconds.";
    return [error.problem.title, error.problem.detail].filter(Boolean).join(": ");
  }
  console.error(error);
  return "Something went wrong; please try again.";
}

export async function act(button, statusEl, fn) {
  button.disabled = true;
  statusEl.textContent = "";
  statusEl.classList.remove("error");
  try {
    return await fn();
  } catch (error) {
    if (error instanceof Redirecting) return undefined;
    statusEl.textContent = describe(error);
    statusEl.classList.add("error");
    return undefined;
  } finally {
    button.disabled = false;
  }
}

// A Delete button that asks twice instead of window.confirm() (keyboard-friendly and visible
// to screen readers): the first click arms it ("Confirm delete"), the second runs fn via act.
// `words` names another destructive action the same way (e.g. Revoke / Confirm revoke).
// The listener goes through h() and acts on the elements on screen (the clicked button, the
// status line by its id): a page patched in place (morph.js) keeps the old elements and
// moves only listeners h() registered onto them.
export function deleteButton(id, ariaLabel, statusEl, fn, words = { label: "Delete", confirm: "Confirm delete" }) {
  const onclick = (ev) => {
    const button = ev.currentTarget;
    if (button.dataset.armed !== "true") {
      button.dataset.armed = "true";
      button.textContent = words.confirm;
      return;
    }
    act(button, document.getElementById(statusEl.id) ?? statusEl, fn);
  };
  return h("button", { type: "button", class: "small danger", id, "aria-label": ariaLabel, onclick }, words.label);
}
