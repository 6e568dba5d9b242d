"""Pure logic of the dead-letter-queue tool (the command line is worker/dlq_cli.py): parsing
operator input and formatting jobs for a terminal or for JSON. No I/O here, so every rule is
unit-tested."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Seconds per unit of an --older-than value.
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
LAST_ERROR_WIDTH = 60  # characters of last_error in the list table
STORE_ID_WIDTH = 8  # leading characters of a store uuid in the list table; enough to tell apart

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_WHITESPACE = re.compile(r"\s+")


def parse_duration(text: str) -> int:
    """Seconds in a duration like '30m', '2h', '7d' or '1d12h'; ValueError when malformed."""
    compact = text.strip().lower()
    if not compact:
        raise ValueError("empty duration")
    total = 0
    position = 0
    for match in _DURATION_PART.finditer(compact):
        if match.start() != position:
            break
        total += int(match.group(1)) * DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(compact):
        raise ValueError(
            f"bad duration {text!r}: use a number and a unit (s, m, h, d, w), e.g. 30m"
        )
    return total


def parse_job_id(text: str) -> str:
    """The canonical form of a job uuid; ValueError when it is not one."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise ValueError(f"bad id {text!r}: not a UUID") from None


def format_age(seconds: float | None) -> str:
    """A short human age: '45s', '12m', '3h 5m', '2d 4h'; '-' when unknown."""
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, _ = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def one_line(text: str | None, width: int) -> str:
    """Text on one line, cut to width with an ellipsis (error messages span lines)."""
    flat = _WHITESPACE.sub(" ", text or "").strip()
    if len(flat) <= width:
        return flat
    return flat[: max(0, width - 1)] + "…"


def dead_for_seconds(job: Mapping[str, Any], now: datetime) -> float | None:
    """How long the job has been dead-lettered, or None when it is not."""
    dead_at = job.get("dead_lettered_at")
    if not isinstance(dead_at, datetime):
        return None
    return (now - dead_at).total_seconds()


@dataclass(frozen=True)
class Column:
    """One column of a text table."""

    title: str
    align_right: bool = False


def render_table(columns: Sequence[Column], rows: Iterable[Sequence[str]]) -> str:
    """An aligned plain-text table; the last column is left ragged so long text never pads."""
    body = [list(row) for row in rows]
    widths = [len(c.title) for c in columns]
    for row in body:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for cells in [[c.title for c in columns], *body]:
        parts = []
        for i, (column, cell) in enumerate(zip(columns, cells, strict=True)):
            if i == len(columns) - 1:
                parts.append(cell)
            elif column.align_right:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


JOB_COLUMNS = (
    Column("ID"),
    Column("TYPE"),
    Column("STORE"),
    Column("ATTEMPTS", align_right=True),
    Column("ERROR"),
    Column("DEAD FOR", align_right=True),
    Column("LAST ERROR"),
)


def job_table(jobs: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """The `list` table: id, type, store, attempts, error type, dead for, last error."""
    rows = []
    for job in jobs:
        store = job.get("store_id")
        rows.append(
            [
                str(job["id"]),
                str(job.get("job_type") or ""),
                str(store)[:STORE_ID_WIDTH] if store else "-",
                f"{job.get('attempt_count', 0)}/{job.get('max_attempts', 0)}",
                str(job.get("last_error_type") or "-"),
                format_age(dead_for_seconds(job, now)),
                one_line(job.get("last_error"), LAST_ERROR_WIDTH),
            ]
        )
    return render_table(JOB_COLUMNS, rows)


def _when(value: Any, now: datetime) -> str:
    if not isinstance(value, datetime):
        return "-"
    ago = (now - value).total_seconds()
    suffix = f"{format_age(ago)} ago" if ago >= 0 else f"in {format_age(-ago)}"
    return f"{value.isoformat(timespec='seconds')} ({suffix})"


_EVENT_DETAIL_KEYS = (
    "attempt",
    "error_type",
    "error",
    "reason",
    "retry_at",
    "run_at",
    "worker_id",
)


def _event_detail(detail: Any) -> str:
    if not isinstance(detail, Mapping):
        return "" if detail is None else one_line(str(detail), 200)
    # The keys an operator reads first, then anything else, so nothing is hidden.
    keys = [k for k in _EVENT_DETAIL_KEYS if k in detail]
    keys += sorted(k for k in detail if k not in _EVENT_DETAIL_KEYS)
    return "  ".join(f"{k}={one_line(json_text(detail[k]), 200)}" for k in keys)


def job_details(job: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """The `show` text: the job's fields, payload, last error and its event history."""
    fields = [
        ("id", str(job["id"])),
        ("type", str(job.get("job_type") or "")),
        ("status", str(job.get("status") or "")),
        ("store", str(job.get("store_id") or "-")),
        ("conversation", str(job.get("conversation_id") or "-")),
        ("attempts", f"{job.get('attempt_count', 0)} of {job.get('max_attempts', 0)}"),
        # The claim is recorded on the row, not as an event: when the current (last) attempt
        # began, and who holds it while it runs; each attempt's worker is on its outcome event.
        ("last claimed", _when(job.get("started_at"), now)),
        ("held by", str(job.get("locked_by") or "-")),
        ("priority", str(job.get("priority", 0))),
        ("idempotency key", str(job.get("idempotency_key") or "-")),
        ("created", _when(job.get("created_at"), now)),
        ("next due", _when(job.get("next_retry_at"), now)),
        ("last error at", _when(job.get("last_error_at"), now)),
        ("dead-lettered", _when(job.get("dead_lettered_at"), now)),
        ("error type", str(job.get("last_error_type") or "-")),
    ]
    width = max(len(name) for name, _ in fields)
    lines = [f"{name.ljust(width)}  {value}" for name, value in fields]
    lines += ["", "last error:", _indent(str(job.get("last_error") or "-"))]
    lines += ["", "payload:", _indent(json.dumps(job.get("payload"), indent=2, sort_keys=True))]
    lines += ["", f"history ({len(events)} events):"]
    for event in events:
        when = event.get("created_at")
        stamp = when.isoformat(timespec="seconds") if isinstance(when, datetime) else "-"
        detail = _event_detail(event.get("detail"))
        lines.append(
            f"  {stamp}  {event.get('event_type', '')}" + (f"  {detail}" if detail else "")
        )
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines() or [""])


def json_default(value: Any) -> Any:
    """json.dumps hook for database rows: datetimes as ISO 8601."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_text(value: Any) -> str:
    """A value as it reads in an event line: strings bare, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, default=json_default)


def job_json(job: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """A job row for --json output, with the computed age added."""
    result = dict(job)
    age = dead_for_seconds(job, now)
    result["dead_for_seconds"] = None if age is None else round(age, 3)
    return result


def dumps(value: Any) -> str:
    """Pretty JSON for --json output."""
    return json.dumps(value, indent=2, default=json_default, ensure_ascii=False)
