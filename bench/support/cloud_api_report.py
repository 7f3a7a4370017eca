"""The figures of the cloud API benchmark (bench/cloud_api.py) against its targets, and the
human-readable lines it prints after the measurements (for information only: nothing is
asserted)."""

from __future__ import annotations

from typing import Any

# The targets for this machine.
TARGET_DASHBOARD_P95_MS = 100.0
TARGET_BUCKETS_P95_MS = 100.0


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else "MISSED"


def _cpu_line(cpu: dict[str, Any]) -> str:
    return (
        f"CPU server {cpu['server']}%, bench client {cpu['bench_client']}%, "
        f"other processes {cpu['other_processes']}%"
    )


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The 1-client p95s against the targets: value, target and verdict each."""
    return {
        "dashboard_p95": {
            "value": result["dashboard"]["p95_ms"],
            "target": TARGET_DASHBOARD_P95_MS,
            "verdict": _verdict(result["dashboard"]["p95_ms"], TARGET_DASHBOARD_P95_MS),
        },
        "buckets_p95": {
            "value": result["buckets"]["p95_ms"],
            "target": TARGET_BUCKETS_P95_MS,
            "verdict": _verdict(result["buckets"]["p95_ms"], TARGET_BUCKETS_P95_MS),
        },
    }


def report(result: dict[str, Any], bucket: str) -> None:
    """Every figure of the result, the floor first, then the targets; `bucket` is the
    telemetry query's bucket width as the API takes it ("5m")."""
    d, b, c = result["dashboard"], result["buckets"], result["dashboard_concurrent"]
    f, fc, vs = result["floor"], result["floor_concurrent"], result["versus_floor"]
    cores = c["cpu_percent"]["cores"]
    print(f"\n(CPU: 100% = one core of {cores}; 'other processes' should be near 0)")
    print(
        f"  GET /healthz (floor), 1 client     p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms "
        f"over {f['requests']} requests\n"
        f"  GET /healthz (floor), {fc['clients']} clients    {fc['requests_per_s']} requests/s, "
        f"p50 {fc['p50_ms']} ms, p95 {fc['p95_ms']} ms over {fc['requests']} requests"
    )
    print(
        f"  GET /api/dashboard, 1 client       p50 {d['p50_ms']} ms, p95 {d['p95_ms']} ms, "
        f"max {d['max_ms']} ms over {d['requests']} requests\n"
        f"  {'':35}{d['response_bytes'] / 1000:.0f} kB, {d['devices_online']} devices online; "
        f"{_cpu_line(d['cpu_percent'])}"
    )
    print(
        f"  24 h / {bucket} telemetry, 1 client   p50 {b['p50_ms']} ms, p95 {b['p95_ms']} ms, "
        f"max {b['max_ms']} ms over {b['requests']} requests\n"
        f"  {'':35}{b['buckets_per_answer']} buckets of {b['readings_per_answer']} readings; "
        f"{_cpu_line(b['cpu_percent'])}"
    )
    print(
        f"  GET /api/dashboard, {c['clients']} clients     {c['requests_per_s']} requests/s, "
        f"p50 {c['p50_ms']} ms, p95 {c['p95_ms']} ms over {c['requests']} requests\n"
        f"  {'':35}{_cpu_line(c['cpu_percent'])}"
    )
    print(
        f"\nagainst the floor (same run): dashboard p50 {vs['dashboard_p50_x_floor']}x, "
        f"telemetry p50 {vs['buckets_p50_x_floor']}x; {c['clients']}-client dashboard rate "
        f"{vs['dashboard_concurrent_share_of_floor_rate']} of the floor's"
    )
    print("\ntargets (information only; nothing is asserted)")
    for name, t in result["targets"].items():
        print(f"  {name:22} {t['value']!s:>8} ms  target {t['target']:>8} ms  {t['verdict']}")
