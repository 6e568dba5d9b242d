"""The hostile-mail corpus end to end (issue 13): each message is delivered through Dovecot,
fetched and processed, and ends with one clear outcome, while a good message delivered after it
is still answered. Same harness as test_process_pipeline.py.
"""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.corpus import hostile
from tests.integration.test_process_pipeline import (
    Pipeline,
    classification,
    make_email,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from worker import fetch, imap, mime, mime_limits, parse_pool, privacy, services

pytestmark = pytest.mark.integration

# A short wall-clock limit, so the bomb that escapes the pre-scan costs the suite a second.
PARSE_TIMEOUT_SECONDS = 1.0


def fetch_and_process(pipeline: Pipeline, *raw: bytes) -> tuple[fetch.StoreOutcome, float]:
    """Deliver `raw` to the store's mailbox, fetch it once, then process what was queued."""
    pipeline.dovecot.deliver(pipeline.mail_user.name, list(raw))
    store = pipeline.db.get_store(pipeline.store_id)
    assert store is not None
    options = dataclasses.replace(
        services.fetch_options(pipeline.worker.settings),
        parse=parse_pool.ParseConfig(timeout_seconds=PARSE_TIMEOUT_SECONDS),
    )
    started = time.monotonic()
    outcome = fetch.fetch_store(
        pipeline.db, store, imap.open_mailbox, options, deadline=time.monotonic() + 60
    )
    took = time.monotonic() - started
    pipeline.own_jobs(outcome.job_ids)
    pipeline.run()
    return outcome, took


def message_row(pipeline: Pipeline, message_id: str) -> dict[str, Any]:
    row = pipeline.sql.execute(
        "select * from public.messages where store_id = %s and message_id = %s",
        (pipeline.store_id, message_id),
    ).fetchone()
    assert row is not None, f"{message_id} was not stored"
    return row


def reply_status(pipeline: Pipeline, message_uuid: Any) -> str | None:
    row = pipeline.sql.execute(
        "select status from public.replies where message_id = %s", (message_uuid,)
    ).fetchone()
    return None if row is None else str(row["status"])


def skip_outcome(pipeline: Pipeline, message_uuid: Any) -> str | None:
    """The reason a processed message was not answered, from its process.skipped event."""
    row = pipeline.sql.execute(
        "select detail from public.events where message_id = %s"
        " and event_type = 'process.skipped' order by id limit 1",
        (message_uuid,),
    ).fetchone()
    return None if row is None else str(row["detail"].get("reason"))


MESSAGE_IDS = {
    "parts_bomb": "<bomb@example.com>",
    "split_boundary_bomb": "<split-bomb@example.com>",
    "deep_nesting": "<deep@example.com>",
    "huge_headers": "<headers@example.com>",
}
STUBS: list[tuple[str, Callable[[], bytes], str]] = [
    ("parts_bomb", hostile.parts_bomb, mime_limits.TOO_MANY_PARTS),
    ("split_boundary_bomb", hostile.split_boundary_bomb, mime_limits.PARSE_TIMEOUT),
    ("deep_nesting", hostile.deep_nesting, mime_limits.TOO_DEEP),
    ("huge_headers", hostile.huge_headers, mime_limits.HEADERS_TOO_LARGE),
]


@pytest.mark.parametrize(("name", "build", "reason"), STUBS, ids=[s[0] for s in STUBS])
def test_a_message_beyond_the_parse_limits_is_a_stub_and_the_next_one_is_answered(
    pipeline: Pipeline, name: str, build: Callable[[], bytes], reason: str
) -> None:
    raw = build()
    outcome, took = fetch_and_process(pipeline, raw, hostile.good(1))

    assert (outcome.status, outcome.stored, outcome.skipped) == ("ok", 1, 1)
    assert took < 15.0  # the bound is what makes this fast: unbounded, the bomb takes minutes
    stub = message_row(pipeline, MESSAGE_IDS[name])
    assert stub["skip_reason"] == reason
    assert stub["body_text"] == "" and stub["size_bytes"] == len(raw)
    good = message_row(pipeline, "<good-1@example.com>")
    assert reply_status(pipeline, good["id"]) == "sent"
    state = pipeline.sql.execute(
        "select last_uid from public.mailbox_state where store_id = %s", (pipeline.store_id,)
    ).fetchone()
    assert state is not None and state["last_uid"] == 2  # the UID moved past both


@pytest.mark.parametrize(
    "build", [hostile.nul_content_type, hostile.invalid_charset], ids=["nul", "charset"]
)
def test_bad_bytes_are_cleaned_and_the_message_answered_with_the_good_one(
    pipeline: Pipeline, build: Callable[[], bytes]
) -> None:
    outcome, _ = fetch_and_process(pipeline, build(), hostile.good(2))

    assert (outcome.status, outcome.stored, outcome.skipped) == ("ok", 2, 0)
    rows = pipeline.sql.execute(
        "select * from public.messages where store_id = %s order by imap_uid",
        (pipeline.store_id,),
    ).fetchall()
    for row in rows:
        assert "\x00" not in repr(dict(row))
        assert reply_status(pipeline, row["id"]) == "sent"


def test_an_encoded_word_sender_is_refused_before_any_charge_and_the_next_one_is_answered(
    pipeline: Pipeline,
) -> None:
    outcome, _ = fetch_and_process(pipeline, hostile.encoded_word_sender(), hostile.good(3))

    assert (outcome.status, outcome.stored) == ("ok", 2)
    hostile_row = message_row(pipeline, "<encoded-sender@example.com>")
    assert skip_outcome(pipeline, hostile_row["id"]) == "invalid_sender"
    assert reply_status(pipeline, hostile_row["id"]) is None
    charged = pipeline.sql.execute(
        "select count(*) as n from public.credit_ledger l join public.job_queue j"
        " on j.id = l.job_id where j.payload ->> 'message_id' = %s",
        (str(hostile_row["id"]),),
    ).fetchone()
    assert charged is not None and charged["n"] == 0
    good = message_row(pipeline, "<good-3@example.com>")
    assert reply_status(pipeline, good["id"]) == "sent"
    assert pipeline.credits() == 9  # one credit, for the one reply sent


BURST = 200  # emails from one sender, each starting its own conversation


def test_a_burst_from_one_sender_gets_at_most_the_cap_in_replies_with_16_slots(
    pipeline: Pipeline,
) -> None:
    # Spellings of one mailbox: case, plus-tags and Gmail dots do not make new customers.
    spellings = ["ana.souza@gmail.com", "AnaSouza@gmail.com", "ana.souza+{n}@googlemail.com"]
    burst = [
        make_email(f"Ana <{spellings[n % 3].format(n=n)}>", f"Pedido {n}", "Cade meu pedido?")
        for n in range(BURST)
    ]
    job_ids = pipeline.ingest(*burst)
    assert len(job_ids) == BURST  # no threading headers: each is its own conversation

    summary = pipeline.run(concurrency=16)

    cap = pipeline.options.reply_cap_per_customer
    sent = pipeline.sql.execute(
        "select count(*) as n from public.replies where store_id = %s and status = 'sent'",
        (pipeline.store_id,),
    ).fetchone()
    assert sent is not None and sent["n"] <= cap
    assert len(pipeline.sink.messages) <= cap
    assert summary["outcomes"].get("replied", 0) <= cap
    assert pipeline.credits() >= 10 - cap


def test_a_reply_that_cannot_be_built_never_enters_sending_and_is_refunded(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation now refuses such addresses; this stands in for the next gap anyone finds.
    unbuildable = "=?utf-8?q?a?=@example.com"
    monkeypatch.setattr(
        privacy, "reply_recipient", lambda sender, reply_to, facts: (unbuildable, False)
    )
    job_id = pipeline.one(make_email("Bia <bia@example.com>", "Pedido", "Cade meu pedido?"))

    pipeline.run()

    job = pipeline.job(job_id)
    assert job["status"] == "dead_letter"
    assert "reply cannot be built" in str(job["last_error"])
    reply = pipeline.reply(job_id)
    # Never `sending`; dead-lettering settled the unsent draft as failed (issue 16).
    assert reply is not None and reply["status"] == "failed"
    assert str(reply["error"]).startswith("dead_lettered: ")
    assert "reply.sending" not in pipeline.event_types(job_id)
    assert pipeline.ledger(job_id) == [("reply", -1), ("refund", 1)]
    assert pipeline.credits() == 10
    assert pipeline.sink.messages == []


def sent_subjects(pipeline: Pipeline) -> list[str]:
    return [str(m.message()["Subject"]) for m in pipeline.sink.messages]


def test_a_reflected_subject_is_not_echoed_and_the_next_mail_is_answered(
    pipeline: Pipeline,
) -> None:
    fetch_and_process(pipeline, hostile.reflected_subject(), hostile.good(4))

    for message_id in ("<reflected@example.com>", "<good-4@example.com>"):
        assert reply_status(pipeline, message_row(pipeline, message_id)["id"]) == "sent"
    subjects = sent_subjects(pipeline)
    assert "Re: Your message to Loja Demo" in subjects  # the store's neutral subject
    assert not any("evil.example" in s or "locked" in s for s in subjects)
    assert "Re: Pedido 1001 (4)" in subjects  # an ordinary subject is kept


def test_an_injected_reply_is_held_with_the_reason_and_the_next_mail_is_answered(
    pipeline: Pipeline,
) -> None:
    pipeline.claude.reply_tool(
        "record_answer",
        classification(
            order_numbers=["1001"],
            reply={"body_text": hostile.INJECTED_REPLY, "language": "pt-BR"},
        ),
    )
    fetch_and_process(pipeline, hostile.injection())
    assert pipeline.claude.pending_replies == 0  # the scripted answers went to this message
    fetch_and_process(pipeline, hostile.good(5))

    injected = message_row(pipeline, "<injection@example.com>")
    row = pipeline.sql.execute(
        "select status, hold_reason from public.replies where message_id = %s", (injected["id"],)
    ).fetchone()
    assert row is not None and (row["status"], row["hold_reason"]) == ("held", "unexpected_link")
    assert all("evil" not in m.message().get_content() for m in pipeline.sink.messages)
    good = message_row(pipeline, "<good-5@example.com>")
    assert reply_status(pipeline, good["id"]) == "sent"


def test_an_unauthenticated_sender_gets_no_order_data_and_a_held_reply(
    pipeline: Pipeline,
) -> None:
    fetch_and_process(pipeline, hostile.unauthenticated())
    fetch_and_process(pipeline, hostile.good(6))

    forged = message_row(pipeline, "<dmarc-fail@example.com>")
    row = pipeline.sql.execute(
        "select status, hold_reason, body_text from public.replies where message_id = %s",
        (forged["id"],),
    ).fetchone()
    assert row is not None
    assert (row["status"], row["hold_reason"]) == ("held", "sender_unauthenticated")
    assert "BR123456789BR" not in row["body_text"]  # no order data, even held
    lookups = pipeline.sql.execute(
        "select count(*) as n from public.events where message_id = %s"
        " and event_type = 'process.shopify_lookup'",
        (forged["id"],),
    ).fetchone()
    assert lookups is not None and lookups["n"] == 0
    good = message_row(pipeline, "<good-6@example.com>")
    assert reply_status(pipeline, good["id"]) == "sent"
    assert "BR123456789BR" in pipeline.sink.messages[0].message().get_content()


def test_a_store_past_its_hourly_rate_defers_replies_and_then_model_calls(
    pipeline: Pipeline,
) -> None:
    senders = [f"Cliente {n} <cliente{n}@example.com>" for n in range(4)]
    job_ids = pipeline.ingest(*(make_email(s, "Pedido", "Cade meu pedido?") for s in senders))

    pipeline.run(store_replies_per_hour=2)

    assert len(pipeline.sink.messages) == 2  # many senders cannot drain the store in an hour
    waiting = [j for j in job_ids if pipeline.job(j)["status"] == "pending"]
    assert len(waiting) == 2
    assert all(pipeline.job(j)["attempt_count"] <= 1 for j in waiting)
    assert pipeline.credits() == 8
    calls = len(pipeline.claude.messages)
    for job_id in waiting:
        pipeline.make_due(job_id)

    pipeline.run(store_replies_per_hour=2)

    # Still past the rate: deferred again, before any model call.
    assert len(pipeline.claude.messages) == calls
    assert [pipeline.job(j)["status"] for j in waiting] == ["pending", "pending"]
    assert len(pipeline.sink.messages) == 2


def test_a_message_the_database_refuses_becomes_a_stub_and_the_batch_is_stored(
    pipeline: Pipeline,
) -> None:
    # A value no cleaning can fix (a size beyond messages.size_bytes' int) fails the whole
    # ingest_messages call; the batch is then stored message by message.
    rows = []
    for uid, raw in enumerate([hostile.good(7), hostile.good(8), hostile.good(9)], start=1):
        row = mime.parse_message(raw, uid=uid).to_ingest_json()
        row["size_bytes"] = len(raw)
        rows.append(row)
    rows[1]["size_bytes"] = 2**40
    outcome = fetch.StoreOutcome(store_id=pipeline.store_id)

    fetch._ingest(pipeline.db, outcome, pipeline.store_id, "INBOX", 1, 3, rows)

    assert (outcome.stored, outcome.skipped) == (2, 1)
    stub = message_row(pipeline, "<good-8@example.com>")
    assert stub["skip_reason"] == "unstorable" and stub["size_bytes"] == 2**31 - 1
    event = pipeline.sql.execute(
        "select detail from public.events where store_id = %s"
        " and event_type = 'fetch.message_unstorable'",
        (pipeline.store_id,),
    ).fetchone()
    assert event is not None and event["detail"]["message_id"] == "<good-8@example.com>"
    assert "out of range" in event["detail"]["error"]
    state = pipeline.sql.execute(
        "select last_uid from public.mailbox_state where store_id = %s", (pipeline.store_id,)
    ).fetchone()
    assert state is not None and state["last_uid"] == 3
