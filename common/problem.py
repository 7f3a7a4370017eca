"""RFC 9457 problem documents: the one error shape on every wire."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from common.model import FieldError

PROBLEM_BASE = "https://iotsphere.dev/problems/"


@dataclass(frozen=True, slots=True)
class Problem:
    slug: str  # short machine name, becomes the type URI
    title: str
    status: int
    detail: str = ""
    errors: Sequence[FieldError] = field(default_factory=tuple)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "errors": [{"path": e.path, "message": e.message} for e in self.errors],
        }
        doc.update(self.extra)
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()


class ProblemError(Exception):
    """An error that becomes a reply: it carries its own problem document (and wire code)."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(f"{problem.title}: {problem.detail}" if problem.detail else problem.title)
        self.problem = problem
