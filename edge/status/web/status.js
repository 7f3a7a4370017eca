// The gateway status page: shows times in the viewer's time zone and refreshes the tables
// from /status.json every few seconds. DOM built with textContent only (no HTML from data).
"use strict";
(function () {
  const REFRESH_MS = 5000;
  const fmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  function localize(root) {
    for (const t of root.querySelectorAll("time[data-ms]")) {
      t.textContent = fmt.format(new Date(Number(t.dataset.ms)));
    }
  }

  function cell(value) {
    if (value === null || value === undefined) {
      const s = document.createElement("span");
      s.className = "none";
      s.textContent = "\u2014";
      return s;
    }
    if (typeof value === "object" && typeof value.ts === "number") {
      const t = document.createElement("time");
      t.dataset.ms = String(value.ts);
      t.dateTime = new Date(value.ts).toISOString();
      t.textContent = fmt.format(new Date(value.ts));
      return t;
    }
    return document.createTextNode(String(value));
  }

  function renderTable(table) {
    const section = document.getElementById("s-" + table.id);
    if (!section) return;
    const body = section.querySelector("tbody");
    const rows = [];
    if (table.rows.length === 0) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = document.createElement("td");
      td.colSpan = table.columns.length;
      td.textContent = table.empty;
      tr.append(td);
      rows.push(tr);
    }
    for (const row of table.rows) {
      const tr = document.createElement("tr");
      for (const [i, value] of row.entries()) {
        const td = document.createElement("td");
        td.dataset.label = table.columns[i] ?? "";
        td.append(cell(value));
        tr.append(td);
      }
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function render(view) {
    const cards = document.querySelectorAll("#s-summary .card dd");
    view.cards.forEach((pair, i) => { if (cards[i]) cards[i].replaceChildren(cell(pair[1])); });
    view.tables.forEach(renderTable);
    const problems = document.getElementById("problems");
    problems.replaceChildren(...view.problems.map((p) => {
      const li = document.createElement("li");
      li.textContent = p;
      return li;
    }));
    problems.hidden = view.problems.length === 0;
    document.getElementById("updated").replaceChildren(cell({ ts: view.generated_at }));
  }

  async function refresh() {
    const conn = document.getElementById("conn");
    try {
      const resp = await fetch("/status.json", { cache: "no-store", credentials: "same-origin" });
      if (resp.status === 401 || resp.status === 403) {
        window.location.assign("/login");
        return;
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      render(await resp.json());
      conn.textContent = "live";
      conn.className = "ok";
      document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
    } catch (err) {
      conn.textContent = "gateway not answering (" + err.message + ")";
      conn.className = "bad";
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    localize(document);
    const tz = document.getElementById("tz");
    if (tz) tz.textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
    if (document.getElementById("s-summary")) setInterval(refresh, REFRESH_MS);
  });
})();
