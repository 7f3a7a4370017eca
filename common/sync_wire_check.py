"""How the cloud refuses a sync body: WireError (a ProblemError, 400 or 415, with field
errors) and DocCheck, which reads an untrusted parsed document field by field and collects
what is wrong. Every reader of the wire form (common.sync_batch_doc, common.sync_columns,
common.sync_wire) checks through it, so anything the decoder does not like is a WireError,
never another exception, and the endpoint can reply without a try-all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from common.model import FieldError
from common.problem import Problem, ProblemError
from common.sync_wire_spec import INT64_MAX, INT64_MIN, MAX_STR

MAX_FIELD_ERRORS = 50  # a hostile body could name thousands; the first ones say enough


class WireError(ProblemError):
    """A sync body the cloud cannot accept: 400 (malformed) or 415 (unsupported format)."""

    def __init__(
        self, detail: str, errors: Sequence[FieldError] = (), *, status: int = 400
    ) -> None:
        if status == 415:
            problem = Problem("unsupported-media-type", "Unsupported sync encoding", 415, detail)
        else:
            problem = Problem("invalid-sync-batch", "Invalid sync batch", 400, detail, errors)
        super().__init__(problem)


class DocCheck:
    """Collects field errors while reading an untrusted document."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        if len(self.errors) < MAX_FIELD_ERRORS:
            self.errors.append(FieldError(path, message))

    def raise_if_any(self) -> None:
        if self.errors:
            raise WireError(f"{len(self.errors)} invalid field(s)", self.errors)

    def abort(self, path: str, message: str) -> NoReturn:
        self.fail(path, message)
        raise WireError(f"{len(self.errors)} invalid field(s)", self.errors)

    def int_(self, doc: Mapping[str, Any], key: str, path: str, lo: int = INT64_MIN) -> int:
        v = doc.get(key)
        if type(v) is not int or not lo <= v <= INT64_MAX:
            self.fail(path, f"must be an integer >= {lo}" if lo > INT64_MIN else "must be int64")
            return 0
        return v

    def opt_int(self, v: object, path: str) -> int | None:
        if v is None:
            return None
        if type(v) is not int or not INT64_MIN <= v <= INT64_MAX:
            self.fail(path, "must be an int64 or null")
            return None
        return v

    def str_(self, v: object, path: str, *, max_len: int = MAX_STR, empty: bool = False) -> str:
        if type(v) is not str or len(v) > max_len or (not v and not empty):
            self.fail(path, f"must be a {'' if empty else 'non-empty '}string of <= {max_len}")
            return ""
        return v

    def opt_str(self, v: object, path: str) -> str | None:
        return None if v is None else self.str_(v, path, empty=True)

    def list_(self, v: object, path: str, max_len: int) -> list[Any]:
        if type(v) is not list:
            self.abort(path, "must be an array")
        if len(v) > max_len:
            self.abort(path, f"must have at most {max_len} items")
        return v

    def row(self, v: object, path: str, fields: Sequence[str], optional: int = 0) -> list[Any]:
        """A positional row of len(fields) items, plus up to `optional` trailing ones that newer
        writers add (older readers' rows stay valid); aborts naming its layout."""
        row = self.list_(v, path, len(fields) + optional)
        if len(row) < len(fields):
            self.abort(path, f"must be [{', '.join(fields)}]")
        return row

    def map_(self, v: object, path: str) -> dict[Any, Any]:
        if type(v) is not dict:
            self.abort(path, "must be a map")
        return v

    def int_column(
        self, v: object, path: str, n: int, lo: int = INT64_MIN, hi: int = INT64_MAX
    ) -> list[int]:
        col = self.list_(v, path, n)
        if len(col) != n:
            self.abort(path, f"must have {n} items (one per reading), not {len(col)}")
        # The fast path is C-speed builtins; the index loop runs only to name the culprit.
        if all(type(x) is int for x in col) and (not col or (lo <= min(col) and max(col) <= hi)):
            return col
        for i, x in enumerate(col):
            if type(x) is not int or not lo <= x <= hi:
                self.abort(f"{path}/{i}", f"must be an integer in [{lo}, {hi}]")
        return col  # unreachable: one element failed above
