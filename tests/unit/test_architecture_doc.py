"""docs/ARCHITECTURE.md cannot rot: every repository path it names exists, and every
`path::name` (or `path::Class.method`) it names is defined in that file.

Text only, no imports of the named modules: a definition is found by grepping the file for
`def name` / `class name` (Python) or `function name` / `class name` / `const name` (JS).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "ARCHITECTURE.md"

# A path starts at one of the top-level folders (not inside a longer path such as
# /work/shared/docs/...); an optional ::name or ::Class.method follows.
REFERENCE = re.compile(
    r"(?<![\w./-])"
    r"((?:edge|cloud|common|tests|bench|docs|firmware_stubs)/[\w./-]*)"
    r"(?:::([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*))?"
)
DEFINITION = {
    ".py": r"^\s*(?:async\s+def|def|class)\s+{name}\b",
    ".js": r"^\s*(?:export\s+)?(?:async\s+)?(?:function|class|const|let)\s+{name}\b",
}


def references(text: str) -> list[tuple[str, str | None]]:
    """(path, dotted name or None) for every reference in the text, in order."""
    found = []
    for m in REFERENCE.finditer(text):
        path = m.group(1).rstrip(".")  # a sentence may end right after a path
        found.append((path.rstrip("/") or path, m.group(2)))
    return found


def problems(refs: list[tuple[str, str | None]], root: Path) -> list[str]:
    """What does not exist, one line each."""
    out = []
    for path, name in refs:
        target = root / path
        if not target.exists():
            out.append(f"{path}: no such file or folder")
            continue
        if name is None:
            continue
        pattern = DEFINITION.get(target.suffix)
        if pattern is None or not target.is_file():
            out.append(f"{path}::{name}: cannot look up names in this kind of file")
            continue
        source = target.read_text(encoding="utf-8")
        for part in name.split("."):
            if not re.search(pattern.format(name=re.escape(part)), source, re.MULTILINE):
                out.append(f"{path}::{name}: no definition of {part!r}")
    return out


def test_every_path_and_name_in_the_architecture_doc_exists() -> None:
    refs = references(DOC.read_text(encoding="utf-8"))
    assert len(refs) > 100, "the doc names far fewer paths than it should: is the parser broken?"
    assert sum(1 for _, name in refs if name) > 50
    missing = problems(refs, REPO)
    assert not missing, "docs/ARCHITECTURE.md names what does not exist:\n" + "\n".join(missing)


def test_the_checker_finds_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "edge").mkdir()
    (tmp_path / "edge" / "m.py").write_text("class A:\n    async def go(self): ...\n")
    (tmp_path / "cloud").mkdir()
    (tmp_path / "cloud" / "app.js").write_text("export async function request() {}\n")
    text = (
        "See edge/m.py::A.go, cloud/app.js::request and edge/ (ok). Then edge/gone.py, "
        "edge/m.py::A.stop, edge/m.py::B and /work/shared/docs/x.md (not ours)."
    )
    refs = references(text)
    assert refs == [
        ("edge/m.py", "A.go"),
        ("cloud/app.js", "request"),
        ("edge", None),
        ("edge/gone.py", None),
        ("edge/m.py", "A.stop"),
        ("edge/m.py", "B"),
    ]
    assert problems(refs, tmp_path) == [
        "edge/gone.py: no such file or folder",
        "edge/m.py::A.stop: no definition of 'stop'",
        "edge/m.py::B: no definition of 'B'",
    ]
