"""Credits that never lose an email (issue 12): an email that arrives when its store has no
credits waits, visibly and without any paid call, and is answered once credits are added; a
credit pays for a reply that is sent; a store is warned when its credits run low.

Real Postgres, SMTP sink, and the Claude and Shopify fakes counting every request; the top-up
is the operator's real command (`python -m worker stores credits ID +N`) in its own process.
"""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.integration.test_process_pipeline import (
    JOHN,
    Pipeline,
    make_email,
    make_pipeline,
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from tests.support.mail_servers import MailUser
from worker.devstack.dovecot import DovecotServer
from worker.devstack.fake_claude import FakeClaude
from worker.devstack.fake_shopify import FakeShopify
from worker.devstack.smtp_sink import SmtpSink
from worker.pipeline.steps import CREDIT_WAIT_SECONDS

pytestmark = pytest.mark.integration


@pytest.fixture
def broke(
    sql: psycopg.Connection[dict[str, Any]],
    pipeline_dsn: str,
    dovecot: DovecotServer,
    mail_user: MailUser,
    smtp_sink: SmtpSink,
    fake_claude: FakeClaude,
    fake_shopify: FakeShopify,
) -> Iterator[Pipeline]:
    """A store created without credits (the default for a new store)."""
    p = make_pipeline(
        sql, pipeline_dsn, dovecot, mail_user, smtp_sink, fake_claude, fake_shopify, credits=0
    )
    try:
        yield p
    finally:
        p.worker.close()


def top_up(p: Pipeline, dsn: str, amount: str) -> str:
    """`python -m worker stores credits STORE +N`, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "worker", "stores", "credits", p.store_id, amount],
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def notifications(p: Pipeline, kind: str) -> list[dict[str, Any]]:
    """What the store's people were told (public.notify_people), oldest first."""
    return list(
        p.sql.execute(
            "select ref, detail, resolved_at from public.notifications"
            " where store_id = %s and kind = %s order by created_at, id",
            (p.store_id, kind),
        ).fetchall()
    )


def conversation_status(p: Pipeline, job_id: str) -> str:
    row = p.sql.execute(
        "select c.status from public.conversations c join public.job_queue j"
        " on j.conversation_id = c.id where j.id = %s",
        (job_id,),
    ).fetchone()
    assert row is not None
    return str(row["status"])


def test_an_email_at_zero_credits_waits_and_is_answered_after_a_top_up(
    broke: Pipeline, pipeline_dsn: str
) -> None:
    p = broke
    job_id = p.one(make_email(JOHN, "Where is my order?", "Where is my order #1002?"))

    assert p.run()["outcomes"] == {"waiting_for_credits": 1}

    # No paid call for a store that cannot pay: neither the model nor the shop was asked.
    assert p.claude.messages == [] and p.shopify.queries == []
    job = p.job(job_id)
    assert job["status"] == "pending" and job["attempt_count"] == 0 and job["last_error"] is None
    assert job["next_retry_at"] > datetime.now(UTC) + timedelta(seconds=CREDIT_WAIT_SECONDS - 60)
    assert conversation_status(p, job_id) == "waiting_credits"
    assert "process.waiting_for_credits" in p.event_types(job_id)
    assert p.reply(job_id) is None and p.ledger(job_id) == [] and p.sink.messages == []
    # Waiting costs nothing more: the next run has nothing to claim.
    assert p.run()["claimed"] == 0

    top_up(p, pipeline_dsn, "+5")

    # The top-up made the job due; nobody touched the queue.
    assert p.job(job_id)["next_retry_at"] <= datetime.now(UTC)
    assert conversation_status(p, job_id) == "open"
    assert p.run()["outcomes"] == {"replied": 1}
    assert len(p.sent_to(JOHN)) == 1 and p.credits() == 4
    assert conversation_status(p, job_id) == "answered_auto"
    assert [r.tool_name for r in p.claude.messages] == ["record_answer"]  # one model call


def test_a_waiting_backlog_is_claimed_once_then_sleeps_until_credits_arrive(
    broke: Pipeline, pipeline_dsn: str
) -> None:
    p = broke
    jobs = p.ingest(*(make_email(JOHN, f"Pedido {n}", f"Onde está o pedido? ({n})")
                      for n in range(12)))

    first = p.run()
    assert first["outcomes"] == {"waiting_for_credits": 12} and first["claimed"] == 12
    assert [p.run()["claimed"] for _ in range(3)] == [0, 0, 0]  # no hot loop at zero credits
    assert p.claude.messages == []
    waiting = p.sql.execute(
        "select count(*) as n from public.credit_waits where store_id = %s", (p.store_id,)
    ).fetchone()
    assert waiting == {"n": 12}
    [told] = notifications(p, "waiting_for_credits")  # once, not once per email
    assert told["resolved_at"] is None and told["detail"]["credits"] == 0

    top_up(p, pipeline_dsn, "+50")
    assert all(p.job(j)["next_retry_at"] <= datetime.now(UTC) for j in jobs)
    ran = p.run()
    # The customer's cap lets three automatic replies through; the rest wait for a person.
    assert ran["outcomes"] == {"replied": 3, "held": 9}, ran
    assert len(p.sent_to(JOHN)) == 3 and p.credits() == 47
    [told] = notifications(p, "waiting_for_credits")
    assert told["resolved_at"] is not None  # the top-up resolved it


def test_a_held_draft_costs_nothing_and_the_low_credit_warning_fires_once(
    sql: psycopg.Connection[dict[str, Any]],
    pipeline_dsn: str,
    dovecot: DovecotServer,
    mail_user: MailUser,
    smtp_sink: SmtpSink,
    fake_claude: FakeClaude,
    fake_shopify: FakeShopify,
) -> None:
    p = make_pipeline(
        sql, pipeline_dsn, dovecot, mail_user, smtp_sink, fake_claude, fake_shopify,
        credits=3, store={"low_credits_at": 2},
    )
    try:
        p.update_store(reply_mode="draft_only")
        held = p.one(make_email(JOHN, "Where is my order?", "Where is my order #1002?"))
        assert p.run()["outcomes"] == {"held": 1}
        assert p.credits() == 3 and p.ledger(held) == [("reply", -1), ("refund", 1)]

        p.update_store(reply_mode="auto_send")
        for n in range(3):
            p.one(make_email(f"c{n}@example.com", "Pedido", f"Onde está o pedido? ({n})"))
        assert p.run()["outcomes"] == {"replied": 3}
        assert p.credits() == 0
        low = [e for e in p.events_of_store() if e["event_type"] == "credit.low"]
        assert [e["detail"] for e in low] == [{"credits": 1, "threshold": 2}]
        [told] = notifications(p, "credits_low")  # once
        assert told["detail"] == {"credits": 1, "threshold": 2} and told["resolved_at"] is None
    finally:
        p.worker.close()
