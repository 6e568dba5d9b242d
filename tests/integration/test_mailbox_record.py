"""The store's mailbox as the record (issue 12 item 2, decision 0019), against the real stack.

Real Postgres, Dovecot (Sent and Drafts with their SPECIAL-USE flags, and a Gmail-like server
without them that announces X-GM-EXT-1), the SMTP sink, Claude and Shopify faked over HTTP. The
pipeline harness runs the email jobs; the mailbox_record jobs the reply trigger enqueues are moved
to a private type of this test and run by the real MailboxRecordHandler, so no other test's jobs
are claimed.
"""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes
from email.utils import make_msgid
from typing import Any

import psycopg
import pytest

from tests.integration.test_process_pipeline import (
    JOHN,
    Pipeline,
    make_email,
    make_pipeline,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from tests.support.mail_servers import MailUser
from worker import fetch, imap, process, services
from worker.console.sending import SendReplyHandler
from worker.devstack.dovecot import DovecotServer
from worker.devstack.fake_claude import FakeClaude
from worker.devstack.fake_shopify import FakeShopify
from worker.devstack.smtp_sink import SmtpSink
from worker.devstack.tls import TestCA
from worker.mailbox_record import MailboxRecordHandler
from worker.queue.handlers import Handler, Handlers
from worker.runs import Budget

pytestmark = pytest.mark.integration

ORDER_QUESTION = ("Where is my order?", "Hi, where is my order #1002? Thanks, John")


# -- helpers ------------------------------------------------------------------------------------


def run_jobs(pipeline: Pipeline, job_ids: list[str], handler: Handler) -> dict[str, Any]:
    """One run of the real runner over these jobs only, moved to a private type for `handler`."""
    private = f"{pipeline.job_type}_{uuid.uuid4().hex[:6]}"
    pipeline.sql.execute(
        "update public.job_queue set job_type = %s where id = any(%s::uuid[])",
        (private, job_ids),
    )
    handlers = Handlers()
    handlers.register(private, handler)
    return process.run_process(
        pipeline.proc, Budget(30.0), options=pipeline.options, handlers=handlers
    )


def record_jobs(pipeline: Pipeline) -> list[str]:
    """This store's pending mailbox_record jobs, oldest first."""
    rows = pipeline.sql.execute(
        "select id from public.job_queue where job_type = 'mailbox_record' and store_id = %s"
        " and status = 'pending' order by created_at, id",
        (pipeline.store_id,),
    ).fetchall()
    return [str(r["id"]) for r in rows]


def run_record(pipeline: Pipeline) -> dict[str, Any]:
    """Run this store's pending mailbox_record jobs with the real handler."""
    jobs = record_jobs(pipeline)
    assert jobs, "no mailbox_record job was enqueued"
    return run_jobs(pipeline, jobs, MailboxRecordHandler(pipeline.proc))


def fetch_mailbox(pipeline: Pipeline) -> fetch.StoreOutcome:
    """The store's real fetch (INBOX, then the Sent scan); its email jobs become this test's."""
    store = pipeline.db.get_store(pipeline.store_id)
    assert store is not None
    options = services.fetch_options(pipeline.worker.settings)
    outcome = fetch.fetch_store(
        pipeline.db, store, imap.open_mailbox, options, deadline=time.monotonic() + 60
    )
    pipeline.own_jobs(outcome.job_ids)
    return outcome


def folder(pipeline: Pipeline, name: str) -> list[Any]:
    return pipeline.dovecot.list_folder(pipeline.mail_user.name, name)


def raw_message(pipeline: Pipeline, name: str, uid: int) -> bytes:
    with pipeline.dovecot.client(pipeline.mail_user.name) as client:
        client.select_folder(name, readonly=True)
        return bytes(client.fetch([uid], ["BODY.PEEK[]"])[uid][b"BODY[]"])


def reply_of_store(pipeline: Pipeline) -> dict[str, Any]:
    row = pipeline.sql.execute(
        "select * from public.replies where store_id = %s order by created_at desc limit 1",
        (pipeline.store_id,),
    ).fetchone()
    assert row is not None
    return row


def as_owner(pipeline: Pipeline, statement: str, *args: Any) -> Any:
    """Call a console function as the store's owner (RLS and the definer checks apply)."""
    person = pipeline.sql.execute(
        "select owner_id from public.stores where id = %s", (pipeline.store_id,)
    ).fetchone()
    assert person is not None
    owner = person["owner_id"]
    if owner is None:
        owner = uuid.uuid4()
        pipeline.sql.execute(
            "insert into auth.users (id, email) values (%s, %s)",
            (owner, f"owner-{owner}@shop.test"),
        )
        pipeline.sql.execute(
            "update public.stores set owner_id = %s where id = %s", (owner, pipeline.store_id)
        )
    claims = json.dumps(
        {"sub": str(owner), "role": "authenticated", "email": f"owner-{owner}@shop.test"}
    )
    conninfo = pipeline.sql.info.dsn + " password=postgres"
    with psycopg.connect(conninfo) as conn:
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        row = conn.execute(statement, args).fetchone()
    return row[0] if row else None


def customer_writes(pipeline: Pipeline, subject: str, body: str) -> str:
    """A customer email delivered to the store's INBOX; returns its Message-ID."""
    message_id = make_msgid(domain="customer.example")
    raw = make_email(JOHN, subject, body, to=pipeline.support_email, message_id=message_id)
    pipeline.dovecot.deliver(pipeline.mail_user.name, [raw])
    return message_id


# -- Sent ---------------------------------------------------------------------------------------


def test_an_automatic_reply_is_filed_in_sent_once_and_the_customers_mail_marked_answered(
    pipeline: Pipeline,
) -> None:
    original = customer_writes(pipeline, *ORDER_QUESTION)
    assert fetch_mailbox(pipeline).stored == 1
    assert pipeline.run()["outcomes"] == {"replied": 1}
    reply = reply_of_store(pipeline)
    assert folder(pipeline, "Sent") == []  # the SMTP send itself files nothing

    summary = run_record(pipeline)

    assert summary["outcomes"] == {"filed": 1}, summary
    (filed,) = folder(pipeline, "Sent")
    assert filed.message_id == reply["smtp_message_id"]
    assert "\\Seen" in filed.flags
    copy = message_from_bytes(raw_message(pipeline, "Sent", filed.uid))
    assert copy["In-Reply-To"] == original and copy["To"] == JOHN
    assert "#1002" in copy.get_payload(decode=True).decode()
    (inbox,) = folder(pipeline, "INBOX")
    assert {"\\Seen", "\\Answered"} <= set(inbox.flags)
    assert folder(pipeline, "Drafts") == []

    # A retried job (or a second one for the same reply) files nothing more.
    pipeline.db.enqueue_job(
        "mailbox_record",
        {"reply_id": str(reply["id"]), "status": "sent"},
        store_id=pipeline.store_id,
        conversation_id=str(reply["conversation_id"]),
    )
    again = run_record(pipeline)
    assert again["outcomes"] == {"filed": 1}
    assert len(folder(pipeline, "Sent")) == 1
    results = pipeline.sql.execute(
        "select result from public.job_queue where store_id = %s and status = 'completed'"
        " and result ->> 'outcome' = 'filed' order by completed_at",
        (pipeline.store_id,),
    ).fetchall()
    assert [r["result"]["sent"] for r in results] == ["filed", "already_there"]
    assert len(pipeline.sent_to(JOHN)) == 1  # IMAP work never sends


def test_a_reply_whose_worker_died_after_smtp_is_filed_once_after_its_copy_proves_it(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.one(make_email(JOHN, *ORDER_QUESTION))
    pipeline.sink.drop_after_data()  # the server keeps the message, the 250 never arrives
    assert pipeline.run()["outcomes"] == {"failed_transient": 1}
    (sent,) = pipeline.sink.messages
    assert record_jobs(pipeline) == []  # `sending` files nothing: it may not have gone out
    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"held": 1}
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["hold_reason"] == "delivery_in_doubt"
    # In doubt: never placed in Drafts (a person could send it a second time), nor in Sent,
    # where a copy must keep meaning "our SMTP send went out" (decision 0017).
    assert record_jobs(pipeline) == []
    assert folder(pipeline, "Sent") == [] and folder(pipeline, "Drafts") == []

    # The trace copy arrives; fetch confirms the reply sent, which enqueues its filing.
    pipeline.dovecot.deliver(pipeline.mail_user.name, [sent.data])
    assert fetch_mailbox(pipeline).own_copies == 1
    assert run_record(pipeline)["outcomes"] == {"filed": 1}
    pipeline.make_due(job_id)
    pipeline.run()
    (filed,) = folder(pipeline, "Sent")
    assert filed.message_id == sent.message()["Message-ID"]
    assert len(pipeline.sent_to(JOHN)) == 1
    # The trace copy stays in the INBOX (it is the proof), marked read: it is our own mail.
    (copy,) = folder(pipeline, "INBOX")
    assert copy.message_id == filed.message_id and "\\Seen" in copy.flags


# -- Drafts --------------------------------------------------------------------------------------


def test_a_held_reply_is_placed_in_drafts_and_leaves_when_sent_from_the_console(
    pipeline: Pipeline,
) -> None:
    pipeline.update_store(reply_mode="draft_only")
    customer_writes(pipeline, *ORDER_QUESTION)
    fetch_mailbox(pipeline)
    assert pipeline.run()["outcomes"] == {"held": 1}
    reply = reply_of_store(pipeline)

    assert run_record(pipeline)["outcomes"] == {"filed": 1}
    (draft,) = folder(pipeline, "Drafts")
    assert "\\Draft" in draft.flags
    assert draft.message_id == f"<draft-{reply['id']}@shop.test>"
    text = message_from_bytes(raw_message(pipeline, "Drafts", draft.uid))
    assert text["To"] == JOHN and text["Subject"] == "Re: Where is my order?"
    assert text["Auto-Submitted"] is None  # a person sends it, not a responder
    assert folder(pipeline, "Sent") == []

    answer = as_owner(pipeline, "select public.console_send_reply(%s)", reply["id"])
    assert answer["status"] == "drafted"
    assert run_record(pipeline)["outcomes"] == {"filed": 1}
    assert folder(pipeline, "Drafts") == []  # approved: the draft leaves at once
    sent = run_jobs(pipeline, [answer["job_id"]], SendReplyHandler(pipeline.proc))
    assert sent["outcomes"] == {"replied": 1}
    assert run_record(pipeline)["outcomes"] == {"filed": 1}
    (filed,) = folder(pipeline, "Sent")
    assert filed.message_id == reply["smtp_message_id"]
    assert folder(pipeline, "Drafts") == []
    (inbox,) = folder(pipeline, "INBOX")
    assert {"\\Seen", "\\Answered"} <= set(inbox.flags)


def test_a_held_reply_answered_from_the_mail_client_is_never_sent_by_us(
    pipeline: Pipeline,
) -> None:
    pipeline.update_store(reply_mode="draft_only")
    original = customer_writes(pipeline, *ORDER_QUESTION)
    fetch_mailbox(pipeline)  # also the Sent scan's starting point
    assert pipeline.run()["outcomes"] == {"held": 1}
    run_record(pipeline)
    assert len(folder(pipeline, "Drafts")) == 1
    reply = reply_of_store(pipeline)

    # Maria answers from her own mail client: her client files the answer in Sent.
    answer_id = make_msgid(domain="shop.test")
    pipeline.dovecot.append(
        pipeline.mail_user.name,
        make_email(
            f"Maria Silva <{pipeline.support_email}>",
            "Re: Where is my order?",
            "Hi John, it leaves today. Maria",
            to=JOHN,
            message_id=answer_id,
            in_reply_to=original,
            references=original,
        ),
        folder="Sent",
        flags=["\\Seen"],
    )
    fetch_mailbox(pipeline)

    reply = reply_of_store(pipeline)
    assert reply["status"] == "superseded"
    assert reply["answered_by"] == f"Maria Silva <{pipeline.support_email}>"
    assert reply["answered_message_id"] == answer_id
    conversation = pipeline.sql.execute(
        "select status from public.conversations where id = %s", (reply["conversation_id"],)
    ).fetchone()
    assert conversation is not None and conversation["status"] == "answered_human"
    assert run_record(pipeline)["outcomes"] == {"filed": 1}
    assert folder(pipeline, "Drafts") == []  # the stale draft is gone

    with pytest.raises(psycopg.Error) as refused:
        as_owner(pipeline, "select public.console_send_reply(%s)", reply["id"])
    assert refused.value.sqlstate == "PT409"
    assert pipeline.sink.messages == []
    assert pipeline.credits() == 10  # the held draft's credit came back


def person_answers_from_the_mail_client(pipeline: Pipeline, original: str) -> str:
    """Maria's answer, threaded under the customer's email, as her mail client files it."""
    answer_id = make_msgid(domain="shop.test")
    pipeline.dovecot.append(
        pipeline.mail_user.name,
        make_email(
            f"Maria Silva <{pipeline.support_email}>",
            "Re: Where is my order?",
            "Hi John, it leaves today. Maria",
            to=JOHN,
            message_id=answer_id,
            in_reply_to=original,
        ),
        folder="Sent",
    )
    return answer_id


def test_a_reply_approved_in_the_console_then_answered_from_the_mail_client_is_not_sent(
    pipeline: Pipeline,
) -> None:
    pipeline.update_store(reply_mode="draft_only")
    original = customer_writes(pipeline, *ORDER_QUESTION)
    fetch_mailbox(pipeline)
    assert pipeline.run()["outcomes"] == {"held": 1}
    reply = reply_of_store(pipeline)
    # The console approves it; before its send_reply job runs, Maria answers by mail.
    approved = as_owner(pipeline, "select public.console_send_reply(%s)", reply["id"])
    person_answers_from_the_mail_client(pipeline, original)
    fetch_mailbox(pipeline)
    assert reply_of_store(pipeline)["status"] == "superseded"

    ran = run_jobs(pipeline, [approved["job_id"]], SendReplyHandler(pipeline.proc))

    assert ran["outcomes"] == {"superseded": 1}, ran
    assert pipeline.sink.messages == []
    assert reply_of_store(pipeline)["status"] == "superseded"


def test_a_discarded_held_reply_leaves_drafts(pipeline: Pipeline) -> None:
    pipeline.update_store(reply_mode="draft_only")
    customer_writes(pipeline, *ORDER_QUESTION)
    fetch_mailbox(pipeline)
    assert pipeline.run()["outcomes"] == {"held": 1}
    run_record(pipeline)
    assert len(folder(pipeline, "Drafts")) == 1
    reply = reply_of_store(pipeline)

    as_owner(pipeline, "select public.console_discard_reply(%s)", reply["id"])
    assert run_record(pipeline)["outcomes"] == {"filed": 1}

    assert folder(pipeline, "Drafts") == []
    assert folder(pipeline, "Sent") == []
    (inbox,) = folder(pipeline, "INBOX")
    assert "\\Answered" not in inbox.flags  # nothing was sent


# -- a Gmail-like server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gmail_like(tls_ca: TestCA) -> Iterator[DovecotServer]:
    """No SPECIAL-USE flags (folders found by name) and Gmail's X-GM-EXT-1 capability."""
    with DovecotServer(tls_ca, special_use=False, extra_capabilities=("X-GM-EXT-1",)) as server:
        yield server


@pytest.fixture
def gmail_pipeline(
    sql: psycopg.Connection[dict[str, Any]],
    pipeline_dsn: str,
    gmail_like: DovecotServer,
    smtp_sink: SmtpSink,
    fake_claude: FakeClaude,
    fake_shopify: FakeShopify,
) -> Iterator[Pipeline]:
    user = MailUser(name=f"gmail{uuid.uuid4().hex[:8]}@shop.test", password="imap-test-password")
    gmail_like.add_user(user.name, user.password)
    p = make_pipeline(sql, pipeline_dsn, gmail_like, user, smtp_sink, fake_claude, fake_shopify)
    try:
        yield p
    finally:
        p.worker.close()
        sql.execute(
            "update public.job_queue set status = 'completed', completed_at = now()"
            " where (job_type = %s or store_id = %s) and status in ('pending', 'processing')",
            (p.job_type, p.store_id),
        )
        sql.execute("update public.stores set active = false where id = %s", (p.store_id,))


def test_a_gmail_like_server_files_sent_mail_itself_and_finds_drafts_by_name(
    gmail_pipeline: Pipeline,
) -> None:
    pipeline = gmail_pipeline
    customer_writes(pipeline, *ORDER_QUESTION)
    fetch_mailbox(pipeline)
    assert pipeline.run()["outcomes"] == {"replied": 1}

    summary = run_record(pipeline)

    # auto: Gmail files every SMTP-submitted message in Sent, so ours would be a second copy.
    assert summary["outcomes"] == {"filed": 1}
    result = pipeline.sql.execute(
        "select result from public.job_queue"
        " where store_id = %s and result ->> 'outcome' = 'filed'",
        (pipeline.store_id,),
    ).fetchone()
    assert result is not None and result["result"]["sent"] == "provider_files_sent"
    assert folder(pipeline, "Sent") == []
    (inbox,) = folder(pipeline, "INBOX")
    assert {"\\Seen", "\\Answered"} <= set(inbox.flags)

    # always: filed whatever the server says (found by its usual name, no SPECIAL-USE flag).
    pipeline.update_store(mailbox_sent="always", reply_mode="draft_only")
    reply = reply_of_store(pipeline)
    pipeline.db.enqueue_job(
        "mailbox_record",
        {"reply_id": str(reply["id"]), "status": "sent"},
        store_id=pipeline.store_id,
        conversation_id=str(reply["conversation_id"]),
    )
    assert run_record(pipeline)["outcomes"] == {"filed": 1}
    (filed,) = folder(pipeline, "Sent")
    assert filed.message_id == reply["smtp_message_id"]

    # Drafts without a SPECIAL-USE flag: found by the name "Drafts".
    customer_writes(pipeline, "Refund", "I want my money back for order #1002")
    fetch_mailbox(pipeline)
    assert pipeline.run()["outcomes"] == {"held": 1}
    assert run_record(pipeline)["outcomes"] == {"filed": 1}
    (draft,) = folder(pipeline, "Drafts")
    assert "\\Draft" in draft.flags
