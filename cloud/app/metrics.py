"""A tiny Prometheus text exposition (format 0.0.4): counters and histograms with labels.

Small on purpose (prometheus_client is not a dependency). Other areas register their own
series on the app's Registry (e.g. alerts raised, notification attempts).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence
from typing import TypeVar

LabelValues = tuple[str, ...]

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x))


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self._values: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            for key, v in sorted(self._values.items()):
                lines.append(f"{self.name}{_labels(self.label_names, key)} {_num(v)}")
        return lines


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.name, self.help, self.label_names = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            counts = self._counts.setdefault(labels, [0] * (len(self.buckets) + 1))
            counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sums[labels] = self._sums.get(labels, 0.0) + value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            for key, counts in sorted(self._counts.items()):
                running = 0
                for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                    running += n
                    le = f'le="{_num(bound)}"'
                    lines.append(
                        f"{self.name}_bucket{_labels(self.label_names, key, le)} {running}"
                    )
                lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {self._sums[key]}")
                lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


_Series = TypeVar("_Series", Counter, Histogram)


class Registry:
    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self._series: dict[str, Counter | Histogram] = {}

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        return self._series_named(Counter, name, help_text, labels)

    def histogram(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Histogram:
        return self._series_named(Histogram, name, help_text, labels)

    def _series_named(
        self, kind: type[_Series], name: str, help_text: str, labels: Sequence[str]
    ) -> _Series:
        """The series registered under `name` if it is of this kind (asking twice gives one
        series), else a new one in its place."""
        existing = self._series.get(name)
        if isinstance(existing, kind):
            return existing
        series = kind(name, help_text, labels)
        self._series[name] = series
        return series

    def render(self) -> str:
        lines: list[str] = []
        for series in self._series.values():
            lines.extend(series.render())
        return "\n".join(lines) + "\n"
