// Hash routes ("#/devices/abc?range=6h"): the server serves one page, and the current view,
// including its query, survives a trip through the login page.

export function current() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = raw.split("?", 2);
  return { path, parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(search) };
}

export function href(path, query) {
  const q = query ? new URLSearchParams(query).toString() : "";
  return "#" + path + (q ? "?" + q : "");
}

export function go(path, query) {
  location.hash = href(path, query);
}

export function match(routes, route) {
  for (const r of routes) {
    if (r.parts.length !== route.parts.length) continue;
    const params = {};
    const ok = r.parts.every((p, i) => {
      if (p.startsWith(":")) {
        params[p.slice(1)] = route.parts[i];
        return true;
      }
      return p === route.parts[i];
    });
    if (ok) return { ...r, params };
  }
  return null;
}
