"""What the local status page shows, as data and as HTML. Pure: no I/O, time passed in.

`build_view` turns the gateway's local facts (StatusData) into a small view model of summary
cards and tables whose cells are text or timestamps; `/status.json` serves the view model, the
page's script re-renders the same tables from it, and `render_*` produce the server-side HTML
(every value escaped). Timestamps travel as ms and are rendered as `<time data-ms>` in UTC; the
script shows them in the viewer's time zone (an installer's laptop, not the gateway's clock).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any

Cell = str | dict[str, int] | None  # text, {"ts": ms}, or nothing ("—")

LOCK_KEY = re.compile(r"\(([^()]*)\)\s*$")


@dataclass(frozen=True, slots=True)
class StatusData:
    """The gateway's local facts, gathered without the cloud."""

    status: Mapping[str, Any]  # Gateway.status()
    devices: Sequence[Mapping[str, Any]]  # GatewayStore.devices()
    latest: Mapping[str, Mapping[str, tuple[int, Any]]]  # GatewayStore.latest_values()
    rejections: Sequence[Mapping[str, Any]]
    audit: Sequence[Mapping[str, Any]]
    alerts: Sequence[Mapping[str, Any]]  # open alerts (active, acknowledged)
    locked: Sequence[tuple[str, float]]  # LockoutTracker.locked_keys()


@dataclass(frozen=True, slots=True)
class Table:
    id: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    empty: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "columns": list(self.columns),
            "rows": [list(r) for r in self.rows],
            "empty": self.empty,
        }


@dataclass(frozen=True, slots=True)
class View:
    generated_at: int
    cards: tuple[tuple[str, Cell], ...]
    tables: tuple[Table, ...]
    problems: tuple[str, ...] = field(default_factory=tuple)  # what needs attention, in words

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated_at": self.generated_at,
            "problems": list(self.problems),
            "cards": [[label, cell] for label, cell in self.cards],
            "tables": [t.to_dict() for t in self.tables],
        }


# -- the view model --------------------------------------------------------------------------


def _ts(ms: Any) -> Cell:
    return {"ts": int(ms)} if isinstance(ms, int | float) and not isinstance(ms, bool) else None


def _text(value: Any) -> Cell:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def age(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def size(n: Any) -> str | None:
    if not isinstance(n, int):
        return None
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return None  # unreachable


def who_is_locked(key: str) -> tuple[str, str]:
    """A lockout key as an installer reads it: (kind, name)."""
    if key.startswith("user:token:"):
        return "device token", key.removeprefix("user:token:") + "…"
    if key.startswith("user:"):
        return "device", key.removeprefix("user:")
    if key.startswith("addr:"):
        return "source address", key.removeprefix("addr:")
    return "other", key


def storage_text(storage: Mapping[str, Any]) -> str | None:
    """`status["storage"]` in one line: "available", or why not and for how long."""
    state = storage.get("state")
    if state is None:
        return None
    if state != "unavailable":
        return str(state)
    text = f"unavailable: {storage.get('reason')}"
    down = age(storage.get("unavailable_for_s"))
    if down is not None:
        text += f", for {down}"
    return text + f" ({storage.get('failed_commits', 0)} failed commits)"


def _latest_text(values: Mapping[str, tuple[int, Any]]) -> str | None:
    if not values:
        return None
    return ", ".join(f"{metric} {_text(v)}" for metric, (_ts_ms, v) in sorted(values.items()))


def connection_counts(connections: Mapping[str, Any]) -> tuple[int, int]:
    """(connections refused at the caps, failed accepts) over every listener."""
    refused = failed = 0
    for listener in connections.values():
        if isinstance(listener, Mapping):
            refused += int(listener.get("refused_max_connections", 0))
            refused += int(listener.get("refused_per_address", 0))
            failed += int(listener.get("accept_failures", 0))
    return refused, failed


def build_view(data: StatusData, now_ms: int) -> View:
    return View(now_ms, _cards(data.status), _tables(data, now_ms), _problems(data))


def _problems(data: StatusData) -> tuple[str, ...]:
    """What needs the installer's attention, in words, in the order the page lists it."""
    st = data.status
    sync: Mapping[str, Any] = st.get("sync") or {}
    broker: Mapping[str, Any] = st.get("broker") or {}
    storage: Mapping[str, Any] = st.get("storage") or {}
    connections: Mapping[str, Any] = st.get("connections") or {}
    problems: list[str] = []
    _refused, accept_failures = connection_counts(connections)
    if accept_failures:
        wanted = connections.get("fd_limit_wanted")
        short = isinstance(wanted, int) and connections.get("fd_limit", wanted) < wanted
        problems.append(
            f"the gateway ran out of file descriptors ({accept_failures} failed accepts)"
            + (f": give its service LimitNOFILE={wanted} or more" if short else "")
        )
    for key, _remaining in data.locked:
        kind, name = who_is_locked(key)
        problems.append(f"{kind} {name} is locked out")
    if sync.get("consecutive_failures"):
        problems.append("the cloud is not reachable; readings are kept here until it is")
    if broker.get("mode") == "managed" and broker.get("state") != "running":
        problems.append("the MQTT broker is restarting")
    if storage.get("state") == "unavailable":
        problems.append(
            f"the gateway cannot store data ({storage.get('reason')}): devices are told to "
            "retry later" + (", free disk space" if storage.get("disk_full") else "")
        )
    if data.alerts:
        n = len(data.alerts)
        problems.append(f"{n} open alert{'s' if n != 1 else ''}")
    return tuple(problems)


def _cards(st: Mapping[str, Any]) -> tuple[tuple[str, Cell], ...]:
    """The summary: one labelled value each."""
    sync: Mapping[str, Any] = st.get("sync") or {}
    broker: Mapping[str, Any] = st.get("broker") or {}
    disk: Mapping[str, Any] = st.get("disk") or {}
    connections: Mapping[str, Any] = st.get("connections") or {}
    refused, accept_failures = connection_counts(connections)
    sync_state = str(sync.get("state") or "unknown")
    if sync.get("consecutive_failures"):
        sync_state += f" (failing: {sync['consecutive_failures']} attempts)"
    broker_state = str(broker.get("state") or broker.get("mode") or "unknown")
    if broker.get("mode") == "managed":
        broker_state += f", {broker.get('restarts', 0)} restarts"
    last_error = sync.get("last_error") or sync.get("error")
    return (
        ("Gateway started", _ts(st.get("started_at"))),
        ("Readings stored", _text(st.get("readings_stored"))),
        ("Cloud sync", sync_state),
        ("Cloud", _text(sync.get("cloud"))),
        ("Sync backlog (readings)", _text(sync.get("backlog_readings"))),
        ("Oldest unsynced reading", age(sync.get("oldest_unsynced_age_s"))),
        ("Last successful sync", _ts(sync.get("last_success_at"))),
        ("Last sync error", _text(last_error)),
        ("Last sync error at", _ts(sync.get("last_error_at"))),
        ("MQTT broker", broker_state),
        ("Storage", storage_text(st.get("storage") or {})),
        ("Disk used (data folder)", size(disk.get("used_bytes"))),
        ("Database", size(disk.get("database_bytes"))),
        ("Broker queue", size(disk.get("broker_queue_bytes"))),
        ("Rejected messages", _text(st.get("rejections"))),
        ("Authentication failures", _text(st.get("auth_failures"))),
        ("Connections refused at the limits", _text(refused) if connections else None),
        ("TLS certificate (SHA-256)", _text((st.get("tls") or {}).get("fingerprint_sha256"))),
        ("Accepts failed (out of file descriptors)",
         _text(accept_failures) if connections else None),
    )  # fmt: skip


def _tables(data: StatusData, now_ms: int) -> tuple[Table, ...]:
    return (
        Table("locked", "Locked out now", ("Kind", "Who", "Locked until"),
              _locked_rows(data, now_ms), "Nothing is locked out."),
        Table("devices", "Devices", ("Device", "Type", "Status", "Last seen", "Latest values"),
              _device_rows(data, now_ms), "No devices yet: iotsphere gateway device add ID"),
        Table("alerts", "Open alerts",
              ("Since", "Severity", "State", "Rule", "Device / key", "Metric", "Value"),
              _alert_rows(data), "No open alerts."),
        Table("rejections", "Recently rejected messages",
              ("Time", "Device", "Transport", "Status", "Reason"),
              _rejection_rows(data), "No rejected messages."),
        Table("audit", "Authentication failures and lockouts",
              ("Time", "Kind", "Transport", "Address", "Who", "Reason"),
              _audit_rows(data), "No authentication failures."),
    )  # fmt: skip


def _locked_rows(data: StatusData, now_ms: int) -> tuple[tuple[Cell, ...], ...]:
    rows = []
    for key, remaining in data.locked:
        kind, name = who_is_locked(key)
        rows.append((kind, name, _ts(now_ms + int(remaining * 1000))))
    return tuple(rows)


# A device not heard from for longer is "silent" (the cloud's online_threshold_s, the same 5
# minutes, calls it offline); "active" said only that its token was not revoked.
SILENT_AFTER_S = 300


def device_state(dev: Mapping[str, Any], now_ms: int) -> str:
    """What an installer needs to know about a device: revoked, never sent, sending, or
    silent for how long."""
    if dev.get("status") == "revoked":
        return "revoked"
    last_seen = dev.get("last_seen")
    if not isinstance(last_seen, int | float) or isinstance(last_seen, bool):
        return "never sent"
    quiet_s = max(0, (now_ms - int(last_seen)) // 1000)
    if quiet_s <= SILENT_AFTER_S:
        return "sending"
    if quiet_s < 3600:
        return f"silent for {quiet_s // 60} min"
    if quiet_s < 86400:
        return f"silent for {quiet_s // 3600} h {quiet_s % 3600 // 60} min"
    return f"silent for {quiet_s // 86400} d {quiet_s % 86400 // 3600} h"


def _device_rows(data: StatusData, now_ms: int) -> tuple[tuple[Cell, ...], ...]:
    rows = []
    for dev in data.devices:
        device_id = str(dev.get("device_id"))
        rows.append(
            (
                device_id,
                _text(dev.get("type")),
                device_state(dev, now_ms),
                _ts(dev.get("last_seen")),
                _latest_text(data.latest.get(device_id, {})),
            )
        )
    return tuple(rows)


def _alert_rows(data: StatusData) -> tuple[tuple[Cell, ...], ...]:
    return tuple(
        (
            _ts(a.get("started_at")),
            _text(a.get("severity")),
            _text(a.get("state")),
            _text(a.get("rule_id")),
            _text(a.get("device_id")),
            _text(a.get("metric")),
            _text(
                json.dumps(a.get("value")) if isinstance(a.get("value"), dict) else a.get("value")
            ),
        )
        for a in data.alerts
    )


SHOWN_ERRORS = 3  # a payload with many bad fields: the first few, and how many more


def rejection_reason(rejection: Mapping[str, Any]) -> str:
    """What the device was told: each field error's message and where it was (e.g. "string
    of 300 characters; the limit is 256 (at /values/label)"), not the summary "1 error in
    the payload"; a refusal without field errors keeps its title and detail."""
    errors = [e for e in rejection.get("errors") or () if isinstance(e, Mapping)]
    if not errors:
        title, detail = rejection.get("title"), rejection.get("detail")
        return f"{title}: {detail}" if detail else str(title)
    parts = [
        f"{e.get('message')} (at {e.get('path')})" if e.get("path") else str(e.get("message"))
        for e in errors[:SHOWN_ERRORS]
    ]
    if len(errors) > SHOWN_ERRORS:
        parts.append(f"and {len(errors) - SHOWN_ERRORS} more")
    return " · ".join(parts)


def _rejection_rows(data: StatusData) -> tuple[tuple[Cell, ...], ...]:
    return tuple(
        (
            _ts(r.get("at")),
            _text(r.get("device_id")),
            _text(r.get("transport")),
            _text(r.get("status")),
            rejection_reason(r),
        )
        for r in data.rejections
    )


def _audit_rows(data: StatusData) -> tuple[tuple[Cell, ...], ...]:
    return tuple(
        (
            _ts(a.get("at")),
            _text(a.get("kind")),
            _text(a.get("transport")),
            _text(a.get("address")),
            _text(a.get("username")),
            _text(a.get("reason")),
        )
        for a in data.audit
    )


# -- HTML ---------------------------------------------------------------------------------------


def iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def render_cell(cell: Cell) -> str:
    if cell is None:
        return '<span class="none">—</span>'
    if isinstance(cell, dict):
        ms = int(cell["ts"])
        stamp = iso(ms)
        return f'<time datetime="{stamp}" data-ms="{ms}">{stamp.replace("T", " ")}</time>'
    return escape(cell)


def render_table(table: Table) -> str:
    head = "".join(f'<th scope="col">{escape(c)}</th>' for c in table.columns)
    if table.rows:
        # data-label: on a phone each row is a card whose cells name their column (status.css)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td data-label="{escape(label)}">{render_cell(c)}</td>'
                for label, c in zip(table.columns, row, strict=False)
            )
            + "</tr>"
            for row in table.rows
        )
    else:
        body = (
            f'<tr class="empty"><td colspan="{len(table.columns)}">{escape(table.empty)}</td></tr>'
        )
    return (
        f'<section id="s-{escape(table.id)}"><h2>{escape(table.title)}</h2>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>"
    )


def _layout(title: str, body: str, *, script: bool = False) -> str:
    js = '<script src="/static/status.js" defer></script>' if script else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title>"
        f'<link rel="stylesheet" href="/static/status.css">{js}</head>'
        f"<body>{body}</body></html>"
    )


def render_status(view: View, gateway_name: str) -> str:
    cards = "".join(
        f'<div class="card"><dt>{escape(label)}</dt><dd>{render_cell(cell)}</dd></div>'
        for label, cell in view.cards
    )
    problems = "".join(f"<li>{escape(p)}</li>" for p in view.problems)
    attention = (
        f'<ul id="problems" class="problems">{problems}</ul>'
        if problems
        else '<ul id="problems" class="problems" hidden></ul>'
    )
    body = (
        f"<header><h1>{escape(gateway_name)}</h1>"
        '<form method="post" action="/logout"><button type="submit" id="logout">Log out</button>'
        "</form></header><main>"
        f'<p class="meta">Updated <span id="updated">{render_cell(_ts(view.generated_at))}</span>'
        ' · times in <span id="tz">UTC</span> · <span id="conn" class="ok">live</span></p>'
        f"{attention}"
        f'<section id="s-summary"><h2>Summary</h2><dl class="cards">{cards}</dl></section>'
        + "".join(render_table(t) for t in view.tables)
        + "</main>"
    )
    return _layout(f"{gateway_name} status", body, script=True)


def render_login(message: str | None = None) -> str:
    note = (
        f'<p class="error" id="login-error" role="alert">{escape(message)}</p>' if message else ""
    )
    body = (
        '<main class="narrow"><h1>Gateway status</h1>'
        "<p>Enter the local status password set at installation.</p>"
        f"{note}"
        '<form method="post" action="/login" id="login-form">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password"'
        " required autofocus>"
        '<button type="submit">Log in</button></form></main>'
    )
    return _layout("Gateway status: log in", body)


def render_no_password() -> str:
    body = (
        '<main class="narrow"><h1>Gateway status</h1>'
        '<p id="no-password">No status page password is set on this gateway, so nothing is '
        "shown here. On the gateway, run:</p>"
        "<pre>iotsphere gateway password set</pre>"
        "<p>then reload this page and log in with that password.</p></main>"
    )
    return _layout("Gateway status: set a password", body)
