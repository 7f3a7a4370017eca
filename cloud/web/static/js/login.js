// The login page: e-mail and password to POST /api/auth/login (the refresh token comes back as
// an HttpOnly cookie, shared by every tab); then back to where the user was
// (?next=, a path on this site only).

import * as api from "./api.js";
import * as session from "./session.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const submit = document.getElementById("login-submit");
const params = new URLSearchParams(location.search);
const reasons = {
  expired: "Your session has ended. Please log in again to continue where you were.",
  logout: "You are logged out.",
  signin: "Please log in to continue.",
};
if (reasons[params.get("reason")]) document.getElementById("login-reason").textContent = reasons[params.get("reason")];

// Logged in from another tab meanwhile: the session is this browser's, so go on from here too.
session.onToken(() => location.replace(api.safeNext(params.get("next") ?? "/")));

form.addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const email = form.email.value.trim();
  const password = form.password.value;
  if (!email || !password) {
    error.textContent = "Enter your e-mail and password.";
    (email ? form.password : form.email).focus();
    return;
  }
  submit.disabled = true;
  error.textContent = "";
  try {
    await api.login(email, password);
    location.replace(api.safeNext(params.get("next") ?? "/"));
  } catch (e) {
    if (e instanceof api.ApiError && e.unavailable) {
      error.textContent = "The service is temporarily unavailable. Please try again in a few seconds.";
    } else if (e instanceof api.ApiError && e.status === 401) {
      error.textContent = "Wrong e-mail or password.";
    } else if (e instanceof api.ApiError) {
      error.textContent = [e.problem.title, e.problem.detail].filter(Boolean).join(": ");
    } else {
      error.textContent = "Something went wrong; please try again.";
    }
    form.password.select();
  } finally {
    submit.disabled = false;
  }
});
