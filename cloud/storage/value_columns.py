"""A reading or alert value as the cloud's tables store it: three typed columns (value_num,
value_bool, value_str), of which at most one is set. split_value and join_value are the two
directions; every cloud store (core, sync, monitoring) goes through them, so a boolean never
comes back as 1.0 and a number never as a string."""

from __future__ import annotations

from common.model import Value


def split_value(value: Value | None) -> tuple[float | None, bool | None, str | None]:
    # bool before number: bool is an int subclass in Python
    if isinstance(value, bool):
        return None, value, None
    if isinstance(value, int | float):
        return float(value), None, None
    if isinstance(value, str):
        return None, None, value
    return None, None, None


def join_value(num: float | None, flag: bool | None, text: str | None = None) -> Value | None:
    """The value back from its columns (text may be left out where a table has no value_str)."""
    if flag is not None:
        return bool(flag)
    if num is not None:
        return float(num)
    return text
