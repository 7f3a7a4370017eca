"""The figures of the cloud API benchmark (bench/cloud_api.py): each target's rounds summed up
(medians and ranges), the same-round ratios between targets, the issue's targets, and the
human-readable lines printed after the measurements (for information only: nothing is
asserted)."""

from __future__ import annotations

import statistics
from typing import Any

# The targets for this machine.
TARGET_DASHBOARD_P95_MS = 100.0
TARGET_BUCKETS_P95_MS = 100.0
# dashboard requests/s with 20 clients (each asking a different overview page), 2 workers / 1
TARGET_TWO_WORKERS_X_ONE = 1.6
TARGET_TWO_WORKERS_X_DUCKDB = 3.0  # the same, 2 PostgreSQL workers / DuckDB's one process

SECTIONS = ("floor", "dashboard", "buckets", "overview", "floor_concurrent", "dashboard_concurrent")
RANGED = ("p50_ms", "p95_ms", "requests_per_s")


def _verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def _median(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return values[0] if values else None
    return round(statistics.median(nums), 2)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's rounds: each figure's median over the rounds, and [min, max] of the
    latencies and rates (the spread a shared host gives)."""
    out: dict[str, Any] = {"rounds": len(runs)}
    for section in (*SECTIONS, "versus_floor"):
        rows = [r[section] for r in runs]
        merged: dict[str, Any] = {}
        for key in rows[0]:
            if isinstance(rows[0][key], dict):
                merged[key] = {k: _median([r[key][k] for r in rows]) for k in rows[0][key]}
            else:
                merged[key] = _median([r[key] for r in rows])
        if section != "versus_floor":
            merged["range"] = {
                k: [min(r[k] for r in rows), max(r[k] for r in rows)]
                for k in RANGED
                if k in rows[0]
            }
        out[section] = merged
    return out


def ratios(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Dashboard requests/s with N clients, one target over another within the same round
    (both measured minutes apart under the same load), per round and the median: PostgreSQL
    over DuckDB, N workers over 1, and (with --compare-tree) each target over its `base_` twin."""
    rate = {
        name: [r["dashboard_concurrent"]["requests_per_s"] for r in runs]
        for name, runs in rounds.items()
    }
    pairs: list[tuple[str, str]] = []
    for prefix in ("", "base_"):
        pg = sorted(
            (n for n in rate if n.startswith(prefix + "postgresql_")),
            key=lambda n: int(n.rsplit("_", 1)[1][:-1]),
        )
        pairs += [(a, prefix + "duckdb") for a in pg if prefix + "duckdb" in rate]
        pairs += [(a, pg[0]) for a in pg[1:]]
    pairs += [(n.removeprefix("base_"), n) for n in rate if n.startswith("base_")]
    out: dict[str, Any] = {}
    for a, b in pairs:
        both = zip(rate[a], rate[b], strict=True)
        per_round = [round(x / y, 2) if y > 0 else None for x, y in both]
        out[f"{a}_over_{b}"] = {"per_round": per_round, "median": _median(per_round)}
    return out


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The 1-client p95s (medians over the rounds) against the targets."""
    return {
        "overview_page_p95": {
            "value": summary["overview"]["p95_ms"],
            "target": TARGET_DASHBOARD_P95_MS,
            "verdict": _verdict(summary["overview"]["p95_ms"], TARGET_DASHBOARD_P95_MS),
        },
        "dashboard_p95": {
            "value": summary["dashboard"]["p95_ms"],
            "target": TARGET_DASHBOARD_P95_MS,
            "verdict": _verdict(summary["dashboard"]["p95_ms"], TARGET_DASHBOARD_P95_MS),
        },
        "buckets_p95": {
            "value": summary["buckets"]["p95_ms"],
            "target": TARGET_BUCKETS_P95_MS,
            "verdict": _verdict(summary["buckets"]["p95_ms"], TARGET_BUCKETS_P95_MS),
        },
    }


def _cpu(cpu: dict[str, Any]) -> str:
    pg = f", postgres {cpu['postgres']}%" if cpu.get("postgres") is not None else ""
    return (
        f"CPU server {cpu['server']}%{pg}, load generator {cpu['load_generator']}%, "
        f"other {cpu['other_processes']}%"
    )


def _span(section: dict[str, Any], key: str) -> str:
    lo, hi = section["range"][key]
    return f"{section[key]} [{lo}-{hi}]"


def brief(name: str, r: dict[str, Any]) -> None:
    """One round of one target, as it finishes."""
    d, b, c, fc = r["dashboard"], r["buckets"], r["dashboard_concurrent"], r["floor_concurrent"]
    o = r["overview"]
    print(
        f"  {name}: dashboard p50/p95 {d['p50_ms']}/{d['p95_ms']} ms, overview page p50/p95 "
        f"{o['p50_ms']}/{o['p95_ms']} ms, buckets p50/p95 "
        f"{b['p50_ms']}/{b['p95_ms']} ms, {c['clients']} clients {c['requests_per_s']} req/s "
        f"(/healthz {fc['requests_per_s']} req/s); {_cpu(c['cpu_percent'])}",
        flush=True,
    )


def report(result: dict[str, Any], bucket: str) -> None:
    """Every target's medians [min-max over the rounds], then ratios and targets; `bucket` is
    the telemetry query's bucket width as the API takes it ("5m")."""
    st = result["settings"]
    print(
        f"\n{st['rounds']} round(s), targets interleaved; medians [min-max]; "
        f"CPU 100% = one core of {st['cores']}"
    )
    for name, t in result["by_target"].items():
        f, fc, d = t["floor"], t["floor_concurrent"], t["dashboard"]
        b, c, o = t["buckets"], t["dashboard_concurrent"], t["overview"]
        print(
            f"\n{name}\n"
            f"  GET /healthz, 1 client            p50 {_span(f, 'p50_ms')} ms\n"
            f"  GET /healthz, {fc['clients']} clients         {_span(fc, 'requests_per_s')} req/s; "
            f"{_cpu(fc['cpu_percent'])}\n"
            f"  GET /api/dashboard, 1 client      p50 {_span(d, 'p50_ms')} ms, "
            f"p95 {_span(d, 'p95_ms')} ms ({d['response_bytes'] / 1000:.0f} kB)\n"
            f"  24 h / {bucket} buckets, 1 client    p50 {_span(b, 'p50_ms')} ms, "
            f"p95 {_span(b, 'p95_ms')} ms ({b['buckets_per_answer']} buckets)\n"
            f"  overview page (limit 50), 1 client p50 {_span(o, 'p50_ms')} ms, "
            f"p95 {_span(o, 'p95_ms')} ms ({o['response_bytes'] / 1000:.0f} kB)\n"
            f"  overview pages, {c['clients']} clients   {_span(c, 'requests_per_s')} req/s, "
            f"p95 {_span(c, 'p95_ms')} ms; {_cpu(c['cpu_percent'])}"
        )
    print("\nsame-round ratios of the dashboard's requests/s (median; per round)")
    for key, v in result["ratios"].items():
        print(f"  {key:40} {v['median']}  {v['per_round']}")
    print("\ntargets (information only; nothing is asserted)")
    for name, t in result["by_target"].items():
        for key, target in (("dashboard", TARGET_DASHBOARD_P95_MS),
                            ("overview", TARGET_DASHBOARD_P95_MS),
                            ("buckets", TARGET_BUCKETS_P95_MS)):  # fmt: skip
            v = t[key]["p95_ms"]
            print(f"  {name:16} {key + ' p95':16} {v:>8} ms  <= {target} ms  {_verdict(v, target)}")
    for key, target in (("postgresql_2w_over_postgresql_1w", TARGET_TWO_WORKERS_X_ONE),
                        ("postgresql_2w_over_duckdb", TARGET_TWO_WORKERS_X_DUCKDB)):  # fmt: skip
        if key in result["ratios"] and result["ratios"][key]["median"] is not None:
            v = result["ratios"][key]["median"]
            print(f"  {key:33} {v:>8}x  >= {target}x  {_verdict(v, target, True)}")
