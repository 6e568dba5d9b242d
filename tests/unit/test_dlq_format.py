"""worker.dlq: the DLQ tool's parsing of operator input and its table/detail/JSON formatting."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from worker import dlq

NOW = datetime(2026, 3, 4, 12, 0, 0, tzinfo=UTC)
JOB_ID = "6f1c2d1e-8a4b-4c4e-9d55-0a1b2c3d4e5f"
STORE_ID = "0b7e3c52-1f7a-4a36-8d0e-2a4d1c9e5f60"


def dead_job(**overrides: object) -> dict[str, object]:
    job: dict[str, object] = {
        "id": JOB_ID,
        "job_type": "process_email",
        "status": "dead_letter",
        "store_id": STORE_ID,
        "conversation_id": None,
        "payload": {"message_id": "m-1"},
        "priority": 0,
        "idempotency_key": "email:abc:<q1@example.com>",
        "attempt_count": 5,
        "max_attempts": 5,
        "created_at": NOW - timedelta(days=2, hours=3),
        "next_retry_at": NOW - timedelta(days=2),
        "last_error": "smtp: rcpt: SMTP 550: mailbox\n   unavailable",
        "last_error_type": "permanent",
        "last_error_at": NOW - timedelta(hours=26),
        "dead_lettered_at": NOW - timedelta(hours=26, minutes=5),
        "started_at": NOW - timedelta(hours=26, minutes=6),
        "locked_by": None,
    }
    job.update(overrides)
    return job


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("30m", 1800),
        ("2h", 7200),
        ("7d", 604_800),
        ("1w", 604_800),
        ("1d12h", 129_600),
        (" 2H ", 7200),
        ("0m", 0),
    ],
)
def test_parse_duration_accepts_number_unit_pairs(text: str, seconds: int) -> None:
    assert dlq.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "m", "2x", "-5m", "1.5h", "2h 30m", "h2", "7d!"])
def test_parse_duration_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        dlq.parse_duration(text)


def test_parse_job_id_canonicalises_and_rejects_non_uuids() -> None:
    assert dlq.parse_job_id(" " + JOB_ID.upper() + " ") == JOB_ID
    with pytest.raises(ValueError, match="not a UUID"):
        dlq.parse_job_id("42")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-3, "0s"),
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h"),
        (3600 + 5 * 60, "1h 5m"),
        (86_400, "1d"),
        (2 * 86_400 + 4 * 3600 + 59, "2d 4h"),
    ],
)
def test_format_age(seconds: float | None, text: str) -> None:
    assert dlq.format_age(seconds) == text


def test_one_line_flattens_whitespace_and_cuts_with_an_ellipsis() -> None:
    assert dlq.one_line("a\n  b\tc", 20) == "a b c"
    assert dlq.one_line("abcdefghij", 5) == "abcd…"
    assert len(dlq.one_line("x" * 100, 60)) == 60
    assert dlq.one_line(None, 10) == ""


def test_render_table_aligns_columns_and_leaves_the_last_ragged() -> None:
    columns = [dlq.Column("A"), dlq.Column("N", align_right=True), dlq.Column("TEXT")]
    table = dlq.render_table(columns, [["xx", "5", "short"], ["y", "123", "a longer text"]])
    assert table.splitlines() == [
        "A     N  TEXT",
        "xx    5  short",
        "y   123  a longer text",
    ]


def test_job_table_row_has_full_id_short_store_attempts_type_age_and_cut_error() -> None:
    long_error = "Z" * 200
    table = dlq.job_table([dead_job(), dead_job(id="x" * 36, last_error=long_error)], NOW)
    header, first, second = table.splitlines()
    assert header.split() == "ID TYPE STORE ATTEMPTS ERROR DEAD FOR LAST ERROR".split()
    cells = first.split(None, 6)
    assert cells[:6] == [JOB_ID, "process_email", STORE_ID[:8], "5/5", "permanent", "1d"]
    assert cells[6] == "2h  smtp: rcpt: SMTP 550: mailbox unavailable"
    assert second.endswith("Z" * (dlq.LAST_ERROR_WIDTH - 1) + "…")
    # Every row starts its columns at the same offsets.
    assert first.index("process_email") == header.index("TYPE") == second.index("process_email")


def test_job_table_without_store_or_dead_time_shows_dashes() -> None:
    row = dlq.job_table([dead_job(store_id=None, dead_lettered_at=None)], NOW).splitlines()[1]
    assert row.split()[2] == "-"
    assert " - " in row


def test_job_details_shows_fields_payload_error_and_history() -> None:
    events = [
        {"event_type": "job.enqueued", "created_at": NOW - timedelta(days=2), "detail": None},
        {
            "event_type": "job.dead_lettered",
            "created_at": NOW - timedelta(hours=26),
            "detail": {"worker_id": "w1", "attempt": 5, "error": "boom\nagain", "x": [1]},
        },
    ]
    text = dlq.job_details(dead_job(), events, NOW)
    assert f"id               {JOB_ID}" in text
    assert "attempts         5 of 5" in text
    assert "dead-lettered    2026-03-03T09:55:00+00:00 (1d 2h ago)" in text
    # the claim is on the row: when the last attempt began, nobody holds it now
    assert "last claimed     2026-03-03T09:54:00+00:00 (1d 2h ago)" in text
    assert "held by          -" in text
    assert "  smtp: rcpt: SMTP 550: mailbox\n     unavailable" in text
    assert '  {\n    "message_id": "m-1"\n  }' in text
    assert "history (2 events):" in text
    assert "  2026-03-02T12:00:00+00:00  job.enqueued\n" in text
    # Known keys first in a fixed order, the rest after, each on one line.
    assert text.endswith(
        "  2026-03-03T10:00:00+00:00  job.dead_lettered  attempt=5  error=boom again"
        "  worker_id=w1  x=[1]"
    )


def test_job_json_adds_the_age_and_dumps_datetimes_as_iso() -> None:
    data = json.loads(dlq.dumps([dlq.job_json(dead_job(), NOW)]))
    assert data[0]["id"] == JOB_ID
    assert data[0]["dead_for_seconds"] == 26 * 3600 + 300
    assert data[0]["dead_lettered_at"] == "2026-03-03T09:55:00+00:00"
    assert data[0]["payload"] == {"message_id": "m-1"}
    assert dlq.job_json(dead_job(dead_lettered_at=None), NOW)["dead_for_seconds"] is None
