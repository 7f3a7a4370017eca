// A tiny element builder. Data always becomes text nodes or attribute values, never HTML,
// so a device id like "<img onerror=...>" is shown, not run.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
      // remembered: patching a page in place (morph.js) moves them onto the kept element
      (el.iotListeners ??= []).push([key.slice(2), value]);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "text") {
      el.textContent = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

// A table with a caption and header row; `rows` are arrays of cells (nodes or text). Each
// cell carries its column's name in data-label: on a phone the CSS turns every row into a
// card whose cells are labelled by it, so the actions column is on screen, not scrolled to.
export function table(caption, headers, rows, empty) {
  if (rows.length === 0) return h("p", { class: "empty" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", { class: "cards" },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((cells) => h("tr", {},
        cells.map((c, i) => h("td", { "data-label": headers[i] || null }, c)))))));
}

export function section(title, ...children) {
  const id = "s-" + title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
  return h("section", { id, "aria-labelledby": `${id}-title` }, h("h2", { id: `${id}-title` }, title), ...children);
}

export function badge(text, kind) {
  return h("span", { class: `badge ${kind ?? text}` }, text);
}

// An inline status line for form and button results (read out by screen readers).
export function statusLine(id) {
  return h("p", { id, class: "status", role: "status", "aria-live": "polite" });
}
