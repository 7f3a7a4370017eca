// Patching a page in place: the new render is morphed onto what is on screen with idiomorph
// (npm, served at /static/vendor/idiomorph/), so what the user did survives an update: an open
// <details> (data tables) stays open, focus and a text field being typed in keep their place,
// scroll does not jump, and a chart keeps its uPlot instance (and zoom) and only gets new data.
// Without idiomorph (not installed) the page is replaced whole, as before.
//
// The contract for pages: render() returns a fresh tree built with dom.js's h() (its listeners
// are remembered there and moved onto the kept elements here); stable ids help matching; an
// element may opt out of patching with data-keep (kept as it is) or the page with morph: false.

let Idiomorph = null;
export const ready = import("/static/vendor/idiomorph/idiomorph.esm.js")
  .then((m) => { Idiomorph = m.Idiomorph; })
  .catch(() => { /* not installed: replace whole */ });

function moveListeners(kept, fresh) {
  for (const [type, fn] of kept.iotListeners ?? []) kept.removeEventListener(type, fn);
  kept.iotListeners = fresh.iotListeners ?? undefined;
  for (const [type, fn] of fresh.iotListeners ?? []) kept.addEventListener(type, fn);
}

const callbacks = {
  beforeNodeMorphed(kept, fresh) {
    if (!(kept instanceof Element) || !(fresh instanceof Element)) return true;
    if (kept.hasAttribute("data-keep")) return false;
    moveListeners(kept, fresh);
    // a chart: keep its canvas (and zoom), hand it the new data (chart.js)
    if (typeof kept.iotUpdate === "function" && fresh.iotData) {
      kept.iotUpdate(fresh.iotData);
      return false;
    }
    return true;
  },
  // the user opened a data table: the update must not close it
  beforeAttributeUpdated(name, element, how) {
    return !(name === "open" && element.tagName === "DETAILS" && how === "remove");
  },
};

// Show `node` as `target`'s only child; patch in place when possible. Returns true if patched.
export function patch(target, node, { morph = true } = {}) {
  if (!Idiomorph || !morph || !target.firstElementChild) {
    target.replaceChildren(node);
    return false;
  }
  Idiomorph.morph(target, node, { morphStyle: "innerHTML", ignoreActiveValue: true, callbacks });
  return true;
}
