// Patching a page in place: the new render is morphed onto what is on screen with idiomorph
// (npm, served at /static/vendor/idiomorph/), so what the user did survives an update: an open
// <details> (data tables) stays open, focus and a text field being typed in keep their place,
// scroll does not jump, and a chart keeps its uPlot instance (and zoom) and only gets new data.
// Without idiomorph (not installed) the page is replaced whole, as before.
//
// The contract for pages: render() returns a fresh tree built with dom.js's h() (its listeners
// are remembered there and moved onto the kept elements here); stable ids help matching; an
// element may opt out of patching with data-keep (kept as it is) or the page with morph: false.
// Elements the patch inserts are COPIES of the render's (idiomorph uses importNode), which
// carry no listeners or properties: every listener added to an element is therefore
// remembered (iotAll, below) and adopt() gives each copy its original's, and an original
// learns its copy (iotCopy: a chart drawn later draws into the copy on screen).

let Idiomorph = null;
export const ready = import("/static/vendor/idiomorph/idiomorph.esm.js")
  .then((m) => { Idiomorph = m.Idiomorph; })
  .catch(() => { /* not installed: replace whole */ });

const addListener = EventTarget.prototype.addEventListener;
EventTarget.prototype.addEventListener = function remembered(type, fn, options) {
  if (this instanceof Element) (this.iotAll ??= []).push([type, fn, options]);
  return addListener.call(this, type, fn, options);
};

function moveListeners(kept, fresh) {
  for (const [type, fn] of kept.iotListeners ?? []) kept.removeEventListener(type, fn);
  kept.iotListeners = fresh.iotListeners ?? undefined;
  for (const [type, fn] of fresh.iotListeners ?? []) addListener.call(kept, type, fn);
}

// a copy inserted by the patch gets what its original had (walked in step: same structure)
function adopt(original, copy) {
  if (!(original instanceof Element) || !(copy instanceof Element) || copy === original) return;
  if (copy.iotAdopted !== original) {
    copy.iotAdopted = original;
    // a copy morphed into shape (idiomorph's path for subtrees with ids) already got the h()
    // ones from moveListeners: add the rest
    const moved = new Set(copy.iotListeners === original.iotListeners ? (original.iotListeners ?? []).map((l) => l[1]) : []);
    for (const [type, fn, options] of original.iotAll ?? []) {
      if (!moved.has(fn)) addListener.call(copy, type, fn, options);
    }
    copy.iotListeners = original.iotListeners;
    if (original.iotData) copy.iotData = original.iotData;
    original.iotCopy = copy;
  }
  const a = original.children;
  const b = copy.children;
  for (let i = 0; i < a.length && i < b.length; i++) adopt(a[i], b[i]);
}

const adding = []; // the originals being inserted (beforeNodeAdded -> afterNodeAdded)

const callbacks = {
  beforeNodeAdded(original) {
    adding.push(original);
    return true;
  },
  afterNodeAdded(copy) {
    adopt(adding.pop(), copy);
  },
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
