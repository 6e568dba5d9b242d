"""Notifications (issue 12 item 1) against the real stack: every path that ends with a person in
the loop (a held reply, a dead letter, a store's failing mailbox login) leads to exactly one
digest email over the store's SMTP (the sink) and exactly one webhook call (a local receiver);
triggers inside one interval make one digest; a digest is never about a digest; and a store's
digest never carries another store's items.

Same harness as test_process_pipeline.py (real Postgres, Dovecot, SMTP sink; Claude faked at
the HTTP layer).
"""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest

from tests.integration.test_fetch import ScopedDatabase
from tests.integration.test_process_pipeline import (
    ANA,
    JOHN,
    Pipeline,
    classification,
    make_email,
    make_pipeline,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from tests.support.mail_servers import MailUser
from worker import fetch, fetch_jobs, loops, mime, process
from worker.devstack.dovecot import DovecotServer
from worker.devstack.fake_claude import FakeClaude, FakeReply
from worker.devstack.fake_shopify import FakeShopify
from worker.devstack.smtp_sink import ReceivedMessage, SmtpSink
from worker.devstack.webhook_sink import WebhookSink
from worker.notify import NotifyOptions
from worker.runs import Budget

pytestmark = pytest.mark.integration

CONSOLE = "https://console.example.test"
NOTIFY = NotifyOptions(
    console_url=CONSOLE, webhook_timeout_seconds=5.0, webhook_allow_private_hosts=True
)
COMPLAINT = ("Meu pedido #1001", "Recebi o produto quebrado, é um absurdo!")


def tell(pipeline: Pipeline, hook: WebhookSink | None, **settings: Any) -> None:
    """The store's digests go out at once (no gathering wait) and, with a hook, to it."""
    changes: dict[str, Any] = {"digest_wait_seconds": 0, **settings}
    if hook is not None:
        changes["webhook_url"] = hook.url
    pipeline.db.admin_set_notification_settings(pipeline.store_id, changes)


def run(pipeline: Pipeline) -> dict[str, Any]:
    return pipeline.run(notify=NOTIFY)


def digests(pipeline: Pipeline) -> list[ReceivedMessage]:
    return [m for m in pipeline.sink.messages if m.message()["Auto-Submitted"] == "auto-generated"]


def body(message: ReceivedMessage) -> str:
    part = message.message().get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def notify_jobs(pipeline: Pipeline, status: str = "pending") -> list[dict[str, Any]]:
    return list(
        pipeline.sql.execute(
            "select * from public.job_queue where store_id = %s and job_type = 'notify'"
            " and status = %s order by created_at",
            (pipeline.store_id, status),
        ).fetchall()
    )


def hold_a_complaint(pipeline: Pipeline) -> str:
    pipeline.claude.reply_tool(
        "record_answer", classification(intent="complaint", sentiment="negative")
    )
    return pipeline.one(make_email(f"Ana Souza <{ANA}>", *COMPLAINT))


def dead_letter_a_question(pipeline: Pipeline) -> str:
    pipeline.claude.reply_error(400, "bad request")
    return pipeline.one(make_email(JOHN, "Where is my order?", "Where is order #1002?"))


@pytest.fixture
def hook(webhook_sink: WebhookSink) -> WebhookSink:
    """The store's webhook receiver (tests/support/fakes.py)."""
    return webhook_sink


# -- each trigger: one digest, one webhook call ----------------------------------------------


def test_a_held_reply_sends_one_digest_email_and_one_webhook_call(
    pipeline: Pipeline, hook: WebhookSink
) -> None:
    tell(pipeline, hook)
    job_id = hold_a_complaint(pipeline)

    first = run(pipeline)
    run(pipeline)  # whatever was left due
    again = run(pipeline)

    assert first["outcomes"].get("held") == 1
    assert again["outcomes"] == {}
    (digest,) = digests(pipeline)
    message = digest.message()
    # Nobody is a member of the test store: its support address is told.
    assert digest.rcpt_tos == (pipeline.support_email,)
    assert message["From"].addresses[0].addr_spec == pipeline.support_email
    assert message["Subject"] == "[Loja Demo] 1 thing needs a person: 1 reply waiting"
    text = body(digest)
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "held"
    assert f"{CONSOLE}/console/conversations/{reply['conversation_id']}" in text
    assert ANA in text and "complaint" in text
    assert reply["body_text"].splitlines()[0] not in text  # no draft in a digest
    (post,) = hook.posts
    assert post["store_id"] == pipeline.store_id
    assert post["items"] == [{"kind": "held_reply", "ref": str(reply["id"])}]
    assert "1 reply waiting" in post["text"]
    assert notify_jobs(pipeline) == []
    (done,) = notify_jobs(pipeline, "completed")
    assert done["result"]["outcome"] == "sent"


def test_a_dead_letter_sends_one_digest_and_one_webhook_call(
    pipeline: Pipeline, hook: WebhookSink
) -> None:
    tell(pipeline, hook)
    job_id = dead_letter_a_question(pipeline)

    assert run(pipeline)["outcomes"].get("failed_permanent") == 1
    run(pipeline)
    run(pipeline)

    assert pipeline.job(job_id)["status"] == "dead_letter"
    (digest,) = digests(pipeline)
    assert "1 dead letter" in digest.message()["Subject"]
    text = body(digest)
    assert "HTTP 400" in text and f"{CONSOLE}/console/dead-letters" in text
    (post,) = hook.posts
    assert post["items"] == [{"kind": "dead_letter", "ref": job_id}]


def test_a_mailbox_refusing_the_login_sends_one_digest_and_one_webhook_call(
    pipeline: Pipeline, hook: WebhookSink
) -> None:
    tell(pipeline, hook)
    pipeline.db.admin_update_store(pipeline.store_id, {}, {"imap_password": "not-the-password"})
    scoped = ScopedDatabase(pipeline.db.transport, [pipeline.store_id])
    options = fetch.FetchOptions(imap_timeout_seconds=10, ca_file=str(pipeline.sink.ca.ca_file))

    def refusals(summary: dict[str, Any]) -> list[str]:
        # A fetch run claims every due fetch job, other tests' stores' too: only this store's.
        return [e["error"] for e in summary["errors"] if e["store_id"] == pipeline.store_id]

    for _ in range(5):  # the breaker's threshold: real logins refused by Dovecot
        summary = fetch_jobs.run_fetch(scoped, Budget(30), options=options)
        assert len(refusals(summary)) == 1 and "login" in refusals(summary)[0]
        # The retry's backoff, passed: the store's fetch job (or, after its last attempt, the next
        # interval's fresh one) is due now.
        pipeline.sql.execute(
            "update public.job_queue set next_retry_at = now() where store_id = %s"
            " and job_type = 'fetch_mailbox' and status = 'pending'",
            (pipeline.store_id,),
        )
    summary = fetch_jobs.run_fetch(scoped, Budget(30), options=options)
    assert refusals(summary) == []  # open: skipped, not tried, not another item
    breaker = pipeline.sql.execute(
        "select state from public.circuit_breakers where service = %s",
        (f"imap:{pipeline.store_id}",),
    ).fetchone()
    assert breaker == {"state": "open"}
    run(pipeline)
    run(pipeline)

    (digest,) = digests(pipeline)
    assert "1 failing connection" in digest.message()["Subject"]
    text = body(digest)
    assert "the mailbox (IMAP) keeps failing (5 failures in a row)" in text
    assert "login" in text and f"{CONSOLE}/console/health" in text
    (post,) = hook.posts
    assert post["items"] == [{"kind": "credentials_failed", "ref": f"imap:{pipeline.store_id}"}]


def test_with_smtp_failing_the_webhook_is_told_at_once_and_the_email_follows(
    pipeline: Pipeline, hook: WebhookSink
) -> None:
    tell(pipeline, hook)
    smtp = f"smtp:{pipeline.store_id}"
    for _ in range(5):  # what delivery records for five SMTP time-outs in a row
        pipeline.db.circuit_record(smtp, False)

    run(pipeline)

    (post,) = hook.posts  # the webhook does not wait for SMTP
    assert post["items"] == [{"kind": "credentials_failed", "ref": smtp}]
    assert "sending mail (SMTP) keeps failing" in post["text"]
    assert digests(pipeline) == []
    (job,) = notify_jobs(pipeline)  # deferred by the open breaker, no attempt spent
    assert job["attempt_count"] == 0
    assert "job.deferred" in pipeline.event_types(str(job["id"]))

    assert pipeline.db.circuit_record(smtp, True) == "closed"  # SMTP works again
    pipeline.make_due(str(job["id"]))
    run(pipeline)

    (digest,) = digests(pipeline)
    assert "1 failing connection" in digest.message()["Subject"]
    assert len(hook.posts) == 1  # not posted twice
    assert notify_jobs(pipeline, "completed")[0]["result"]["outcome"] == "sent"


# -- digests: gathering, spacing, no loops ---------------------------------------------------


def test_two_triggers_inside_one_interval_make_one_digest_listing_both(
    pipeline: Pipeline, hook: WebhookSink
) -> None:
    # A gathering wait: the first trigger's digest is not due before the second happens.
    tell(pipeline, hook, digest_wait_seconds=600)
    # One run each: jobs of one run are answered concurrently, and the fake's scripted answers
    # go to whichever asks first.
    held = hold_a_complaint(pipeline)
    assert run(pipeline)["outcomes"] == {"held": 1}
    dead = dead_letter_a_question(pipeline)
    assert run(pipeline)["outcomes"] == {"failed_permanent": 1}
    (job,) = notify_jobs(pipeline)
    pipeline.make_due(str(job["id"]))

    assert run(pipeline)["outcomes"] == {"sent": 1}

    (digest,) = digests(pipeline)
    assert digest.message()["Subject"] == (
        "[Loja Demo] 2 things need a person: 1 reply waiting, 1 dead letter"
    )
    (post,) = hook.posts
    assert sorted(i["kind"] for i in post["items"]) == ["dead_letter", "held_reply"]
    assert pipeline.reply(held) is not None and pipeline.job(dead)["status"] == "dead_letter"

    # The next trigger waits for the interval (15 minutes by default) after this digest.
    hold_a_complaint(pipeline)
    run(pipeline)
    (later,) = notify_jobs(pipeline)
    assert later["next_retry_at"] >= job["next_retry_at"]
    spacing = pipeline.sql.execute(
        "select %s::timestamptz - max(created_at) as gap from public.notification_digests"
        " where store_id = %s",
        (later["next_retry_at"], pipeline.store_id),
    ).fetchone()
    assert spacing is not None and spacing["gap"].total_seconds() >= 15 * 60 - 1
    assert len(digests(pipeline)) == 1 and len(hook.posts) == 1


def test_a_digest_that_cannot_be_sent_notifies_nobody(pipeline: Pipeline) -> None:
    tell(pipeline, None, addresses=["ops@shop.test"])
    pipeline.sink.refuse("ops@shop.test", 550)
    hold_a_complaint(pipeline)

    run(pipeline)
    run(pipeline)

    (dead,) = notify_jobs(pipeline, "dead_letter")
    assert "550" in dead["last_error"]
    assert notify_jobs(pipeline) == []
    kinds = pipeline.sql.execute(
        "select kind from public.notifications where store_id = %s", (pipeline.store_id,)
    ).fetchall()
    assert [k["kind"] for k in kinds] == ["held_reply"]  # no item about the dead digest
    breaker = pipeline.sql.execute(
        "select * from public.circuit_breakers where service = %s",
        (f"smtp:{pipeline.store_id}",),
    ).fetchone()
    assert breaker is None or breaker["consecutive_failures"] == 0
    assert digests(pipeline) == []


def test_a_webhook_that_fails_for_a_while_is_retried_without_resending_the_email(
    pipeline: Pipeline, hook: WebhookSink
) -> None:
    tell(pipeline, hook)
    hook.script(FakeReply(503, "busy"))
    hold_a_complaint(pipeline)

    run(pipeline)
    run(pipeline)
    (job,) = notify_jobs(pipeline)  # retried later: the webhook's 503
    assert job["attempt_count"] == 1 and "503" in job["last_error"]
    assert len(digests(pipeline)) == 1
    pipeline.make_due(str(job["id"]))
    run(pipeline)

    assert len(digests(pipeline)) == 1  # the email went out once
    assert len(hook.posts) == 2 and hook.posts[0] == hook.posts[1]
    assert notify_jobs(pipeline, "completed")[0]["result"]["outcome"] == "sent"


def test_a_digest_landing_in_the_support_mailbox_is_never_answered(
    pipeline: Pipeline, hook: WebhookSink
) -> None:
    tell(pipeline, hook)
    hold_a_complaint(pipeline)
    run(pipeline)
    run(pipeline)
    (digest,) = digests(pipeline)

    parsed = mime.parse_message(digest.data, uid=1)
    own = [pipeline.support_email]
    assert loops.auto_reply_reason(parsed, store_addresses=own) == loops.OWN_ADDRESS
    assert loops.auto_reply_reason(parsed, store_addresses=[]) == loops.AUTO_SUBMITTED
    job_id = pipeline.one(digest.data)
    assert run(pipeline)["outcomes"] == {"skipped": 1}
    assert pipeline.reply(job_id) is None and len(digests(pipeline)) == 1


# -- tenancy ------------------------------------------------------------------------------


def test_a_stores_digest_never_carries_another_stores_items(
    pipeline: Pipeline,
    hook: WebhookSink,
    sql: psycopg.Connection[dict[str, Any]],
    pipeline_dsn: str,
    dovecot: DovecotServer,
    smtp_sink: SmtpSink,
    fake_claude: FakeClaude,
    fake_shopify: FakeShopify,
) -> None:
    other_user = MailUser(name=f"other-{pipeline.store_id[:8]}@shop.test", password="pw-other")
    dovecot.add_user(other_user.name, other_user.password)
    other = make_pipeline(
        sql,
        pipeline_dsn,
        dovecot,
        other_user,
        smtp_sink,
        fake_claude,
        fake_shopify,
        store={"name": "Outra Loja"},
    )
    try:
        with WebhookSink() as other_hook:
            tell(pipeline, hook)
            tell(other, other_hook)
            mine = hold_a_complaint(pipeline)
            theirs = hold_a_complaint(other)
            both = dataclasses.replace(
                pipeline.options, job_types=(pipeline.job_type, other.job_type), notify=NOTIFY
            )
            for _ in range(3):
                process.run_process(pipeline.proc, Budget(30), options=both)

            my_reply, their_reply = pipeline.reply(mine), other.reply(theirs)
            assert my_reply is not None and their_reply is not None
            by_store = {m.rcpt_tos: body(m) for m in digests(pipeline)}
            assert set(by_store) == {(pipeline.support_email,), (other.support_email,)}
            assert str(my_reply["conversation_id"]) in by_store[(pipeline.support_email,)]
            assert str(their_reply["conversation_id"]) not in by_store[(pipeline.support_email,)]
            assert str(my_reply["conversation_id"]) not in by_store[(other.support_email,)]
            assert [p["items"] for p in hook.posts] == [
                [{"kind": "held_reply", "ref": str(my_reply["id"])}]
            ]
            assert [p["items"] for p in other_hook.posts] == [
                [{"kind": "held_reply", "ref": str(their_reply["id"])}]
            ]
    finally:
        other.worker.close()
        sql.execute(
            "update public.job_queue set status = 'completed', completed_at = now()"
            " where (job_type = %s or store_id = %s) and status in ('pending', 'processing')",
            (other.job_type, other.store_id),
        )
        sql.execute("update public.stores set active = false where id = %s", (other.store_id,))
