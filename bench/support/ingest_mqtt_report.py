"""The figures of the MQTT ingest benchmark (bench/ingest_mqtt.py) against its targets, and the
human-readable lines it prints: a block per phase, then the targets as met / MISSED (for
information only: nothing is asserted)."""

from __future__ import annotations

from typing import Any

from bench.support.ingest_mqtt_phases import Settings

# The targets for this 2-core machine, broker and load generator included, for the
# common sensor: one reading per QoS 1 message, 10 devices.
TARGET_READINGS_PER_S = 25_000
TARGET_CPU_US_PER_READING = 20.0  # gateway + its Mosquitto
TARGET_P99_MS = 100  # publish -> PUBACK, which the front writes when the commit returns
TARGET_LATENCY_RATE = 10_000
TARGET_RSS_MB = 150
TARGET_CEILING_SHARE = 0.60


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def targets(result: dict[str, Any], s: Settings) -> dict[str, Any]:
    a, b, c = result.get("ceiling"), result.get("saturated"), result.get("latency")
    out: dict[str, Any] = {}
    if b is not None:
        out["readings_per_s"] = {
            "target": f">= {TARGET_READINGS_PER_S}",
            "value": b["readings_per_s"],
            "met": b["readings_per_s"] >= TARGET_READINGS_PER_S,
        }
    if b is not None and b.get("cpu_us_per_reading") is not None:
        out["cpu_us_per_reading"] = {
            "target": f"<= {TARGET_CPU_US_PER_READING:g} (gateway + its Mosquitto)",
            "value": b["cpu_us_per_reading"],
            "met": b["cpu_us_per_reading"] <= TARGET_CPU_US_PER_READING,
        }
    if c is not None:
        p99 = c["ingest_lag_at_end"].get("p99_ms")
        out["p99_ms_at_rate"] = {
            "target": f"<= {TARGET_P99_MS} at {TARGET_LATENCY_RATE} readings/s",
            "rate_offered": s.rate,
            "rate_stored": c["readings_per_s"],
            "value": p99,
            "met": (
                None
                if p99 is None or s.rate != TARGET_LATENCY_RATE
                else p99 <= TARGET_P99_MS and c["readings_per_s"] >= 0.95 * s.rate
            ),
        }
    rss = [r["peak_rss_mb"]["gateway"] for r in (b, c) if r is not None]
    if rss:
        out["gateway_rss_mb"] = {
            "target": f"<= {TARGET_RSS_MB}",
            "value": max(rss),
            "met": max(rss) <= TARGET_RSS_MB,
        }
    if a is not None and b is not None and a["msgs_per_s"]:
        share = b["msgs_per_s"] / a["msgs_per_s"]
        out["share_of_ceiling"] = {
            "target": f">= {TARGET_CEILING_SHARE:.0%}",
            "value": round(share, 3),
            "met": share >= TARGET_CEILING_SHARE,
        }
        if a.get("puback_msgs_per_s"):
            out["share_of_plain_puback"] = {
                "target": "information: plain Mosquitto PUBACKs from memory",
                "value": round(b["msgs_per_s"] / a["puback_msgs_per_s"], 3),
                "met": None,
            }
    return out


def print_phase(title: str, r: dict[str, Any]) -> None:
    print(f"\n{title}")
    for key in ("msgs_per_s", "puback_msgs_per_s", "readings_per_s", "readings_per_message",
                "readings_per_message_measured", "window_s", "cpu_us_per_reading",
                "readings_per_commit"):  # fmt: skip
        if key in r:
            print(f"  {key:32} {r[key]}")
    if "ingest_lag_at_end" in r:
        lag = r["ingest_lag_at_end"]
        print(
            f"  {'publish->commit (last commits)':32} p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} "
            f"ms, max {lag['max_ms']} ms over {lag['samples']} messages"
        )
        print(f"  {'worst p99 during window':32} {r['ingest_lag_p99_worst_ms']} ms")
        print(f"  {'broker backlog at end (msgs)':32} {r['broker_backlog_at_end']}")
        print(f"  {'last status answer took':32} {r['status_answer_s']} s")
    cpu = r["cpu"]
    procs = ", ".join(f"{k} {v}%" for k, v in cpu["process_percent"].items())
    print(f"  {'CPU (100% = one core)':32} {procs}")
    print(
        f"  {'host busy':32} {cpu['host_busy_percent']}% of {cpu['cores']} cores; "
        f"other processes {cpu['other_processes_percent']}%"
    )
    idle = r["start_rss_mb"]
    rss = ", ".join(
        f"{k} {v} MB" + (f" (idle {idle[k]})" if k in idle else "")
        for k, v in r["peak_rss_mb"].items()
    )
    print(f"  {'peak RSS':32} {rss}")
    sim = r["sim"]
    print(
        f"  {'publish->PUBACK (generator)':32} p50 {sim.get('puback_p50_ms')} ms, "
        f"p99 {sim.get('puback_p99_ms')} ms; paced sends held back by the window "
        f"{sim.get('late')}\n"
        f"  {'simulator':32} acked {sim.get('acked')} ({sim.get('acked_per_s')} msgs/s avg), "
        f"dropped unsent {sim.get('dropped')}, errors {sim.get('errors')}, "
        f"reconnects {sim.get('reconnects')}"
    )


def phase_titles(s: Settings) -> dict[str, str]:
    """The heading printed above each phase's figures, by the phase's key in the result."""
    return {
        "ceiling": "A. ceiling: plain Mosquitto + bare subscriber, simulator at full speed",
        "saturated": "B. gateway saturated: simulator at full speed",
        "latency": f"C. gateway at {s.rate:g} readings/s ({s.metrics} readings per message)",
    }


def print_targets(checked: dict[str, Any]) -> None:
    """What `targets` returned, one line each."""
    print("\ntargets (information only; nothing is asserted)")
    for name, t in checked.items():
        print(f"  {name:20} {t['value']!s:>10}  target {t['target']:40} {_verdict(t['met'])}")
