"""process-queue when things go wrong: each error class, breakers, crashes, in-doubt sends.

Same harness as test_process_pipeline.py (real Postgres, Dovecot, SMTP sink; Claude and Shopify
faked at the HTTP layer so the real SDK and client code run).
"""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.integration.test_process_pipeline import (
    ANA,
    ATTACKER,
    JOHN,
    Pipeline,
    classification,
    make_email,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from worker import fetch, imap, services
from worker.devstack.fake_claude import TEST_API_KEY, error_reply, tool_use_reply
from worker.devstack.smtp_sink import ReceivedMessage
from worker.errors import DatabaseError

pytestmark = pytest.mark.integration

ORDER_QUESTION = ("Where is my order?", "Hi, where is my order #1002? Thanks, John")


def john_asks(pipeline: Pipeline) -> str:
    return pipeline.one(make_email(JOHN, *ORDER_QUESTION))


def retry_delay(job: dict[str, Any]) -> timedelta:
    """How far after the failure the retry was scheduled."""
    return job["next_retry_at"] - job["last_error_at"]


# -- Claude -------------------------------------------------------------------------------------


def test_claude_429_is_retried_no_sooner_than_its_retry_after_and_then_answered(
    pipeline: Pipeline,
) -> None:
    pipeline.claude.reply_error(429, "rate limited", retry_after="900")
    job_id = john_asks(pipeline)

    assert pipeline.run()["outcomes"] == {"failed_transient": 1}

    job = pipeline.job(job_id)
    assert job["status"] == "pending" and job["last_error_type"] == "transient"
    assert "HTTP 429" in job["last_error"] and job["attempt_count"] == 1
    assert retry_delay(job) >= timedelta(seconds=900)
    assert len(pipeline.claude.messages) == 1  # the SDK did not retry on its own
    # The credit is reserved before the one model call and stays with the job while it waits
    # (a dead-lettered job gets it back); the retry does not charge again.
    assert pipeline.ledger(job_id) == [("reply", -1)] and pipeline.sink.messages == []
    assert "job.retry_scheduled" in pipeline.event_types(job_id)

    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}
    assert len(pipeline.sent_to(JOHN)) == 1 and pipeline.job(job_id)["attempt_count"] == 2
    assert pipeline.ledger(job_id) == [("reply", -1)]


@pytest.mark.parametrize("status", [529, 500])
def test_claude_overload_and_server_errors_are_retried(pipeline: Pipeline, status: int) -> None:
    pipeline.claude.reply_error(status)
    job_id = john_asks(pipeline)

    assert pipeline.run()["outcomes"] == {"failed_transient": 1}

    job = pipeline.job(job_id)
    assert job["status"] == "pending" and job["last_error_type"] == "transient"
    assert f"HTTP {status}" in job["last_error"]
    assert retry_delay(job) >= timedelta(seconds=60)  # the queue's own backoff
    assert pipeline.sink.messages == []


@pytest.mark.parametrize("status", [400, 401])
def test_claude_request_and_credential_errors_go_to_the_dead_letter_queue(
    pipeline: Pipeline, status: int
) -> None:
    pipeline.claude.reply_error(status, "bad request" if status == 400 else "invalid x-api-key")
    job_id = john_asks(pipeline)

    assert pipeline.run()["outcomes"] == {"failed_permanent": 1}

    job = pipeline.job(job_id)
    assert job["status"] == "dead_letter" and job["last_error_type"] == "permanent"
    assert f"HTTP {status}" in job["last_error"]
    listed = pipeline.db.list_dead_letter_jobs(pipeline.store_id)
    assert [str(j["id"]) for j in listed] == [job_id]
    assert "job.dead_lettered" in pipeline.event_types(job_id)
    assert pipeline.sink.messages == [] and pipeline.credits() == 10


def test_a_permanent_drafting_failure_after_the_charge_refunds_the_credit(
    pipeline: Pipeline,
) -> None:
    # The one model call, made after the credit was taken, is rejected.
    pipeline.claude.script(error_reply(400, "prompt is too long"))
    job_id = john_asks(pipeline)

    assert pipeline.run()["outcomes"] == {"failed_permanent": 1}

    assert pipeline.job(job_id)["status"] == "dead_letter"
    assert pipeline.reply(job_id) is None and pipeline.sink.messages == []
    assert pipeline.ledger(job_id) == [("reply", -1), ("refund", 1)]
    assert pipeline.credits() == 10


# -- Shopify ------------------------------------------------------------------------------------


def test_shopify_throttled_is_retried_after_the_bucket_refills(pipeline: Pipeline) -> None:
    # 120 points wanted, 20 available, 1 point a second back: 100 s until the query fits.
    pipeline.shopify.throttle(requested=120.0, available=20.0, restore_rate=1.0)
    job_id = john_asks(pipeline)

    assert pipeline.run()["outcomes"] == {"failed_transient": 1}

    job = pipeline.job(job_id)
    assert job["status"] == "pending" and "THROTTLED" in job["last_error"].upper()
    assert retry_delay(job) >= timedelta(seconds=100)
    assert pipeline.ledger(job_id) == [] and pipeline.sink.messages == []

    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}
    assert "#1002" in pipeline.sent_to(JOHN)[0].message().get_content()


# -- SMTP ---------------------------------------------------------------------------------------


def test_smtp_451_puts_the_reply_back_to_drafted_and_the_retry_sends_the_same_message(
    pipeline: Pipeline,
) -> None:
    pipeline.sink.refuse(JOHN, 451)
    job_id = john_asks(pipeline)

    assert pipeline.run()["outcomes"] == {"failed_transient": 1}

    job = pipeline.job(job_id)
    assert job["status"] == "pending" and "451" in job["last_error"]
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "drafted"
    assert pipeline.ledger(job_id) == [("reply", -1)]

    pipeline.sink.reset()
    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}
    (sent,) = pipeline.sink.messages
    assert sent.message()["Message-ID"] == reply["smtp_message_id"]
    assert sent.message().get_content().split() == reply["body_text"].split()
    assert pipeline.ledger(job_id) == [("reply", -1)]  # charged once across both attempts
    assert [r.tool_name for r in pipeline.claude.messages].count("record_answer") == 1


def test_smtp_550_fails_the_reply_dead_letters_the_job_and_refunds_the_credit(
    pipeline: Pipeline,
) -> None:
    pipeline.sink.refuse(JOHN, 550)
    job_id = john_asks(pipeline)

    assert pipeline.run()["outcomes"] == {"failed_permanent": 1}

    job = pipeline.job(job_id)
    assert job["status"] == "dead_letter" and "550" in job["last_error"]
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "failed" and "550" in reply["error"]
    assert pipeline.ledger(job_id) == [("reply", -1), ("refund", 1)]
    assert pipeline.credits() == 10
    types = pipeline.event_types(job_id)
    assert "credit.refunded" in types and types.count("reply.failed") == 1


# -- circuit breakers -----------------------------------------------------------------------------


def open_breaker(pipeline: Pipeline, service: str) -> None:
    pipeline.sql.execute(
        "insert into public.circuit_breakers (service, state, opened_at, open_until, open_count)"
        " values (%s, 'open', now(), now() + interval '10 minutes', 1)"
        " on conflict (service) do update set state = 'open', open_until = excluded.open_until",
        (service,),
    )


@pytest.mark.parametrize("which", ["claude", "shopify", "smtp"])
def test_an_open_breaker_defers_the_job_without_spending_an_attempt(
    pipeline: Pipeline, which: str
) -> None:
    service = "claude" if which == "claude" else f"{which}:{pipeline.store_id}"
    open_breaker(pipeline, service)
    try:
        job_id = john_asks(pipeline)

        assert pipeline.run()["outcomes"] == {"deferred": 1}

        job = pipeline.job(job_id)
        assert job["status"] == "pending" and job["attempt_count"] == 0
        # It waits the breaker's own reopen time (10 minutes here), not a fixed minute.
        assert job["next_retry_at"] - job["updated_at"] > timedelta(minutes=8)
        assert "job.deferred" in pipeline.event_types(job_id)
        assert pipeline.sink.messages == []
        if which == "claude":
            assert pipeline.claude.messages == []
        if which == "shopify":
            assert pipeline.shopify.queries == []
    finally:
        pipeline.reset_breaker(service)

    # Once the breaker closes the job goes through, and the store paid once.
    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}
    assert pipeline.ledger(job_id) == [("reply", -1)]


# -- exactly one reply ----------------------------------------------------------------------------


def failing_finish_send(pipeline: Pipeline, times: int | None) -> list[int]:
    """finish_send raises DatabaseError `times` times (None: until restored), as in an outage
    right after the SMTP hand-off; returns the list the calls are counted in."""
    db = pipeline.db
    real = db.finish_send
    calls: list[int] = []

    def failing(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if times is not None and len(calls) > times:
            return real(*args, **kwargs)
        raise DatabaseError("connection lost after the send")

    db.finish_send = failing  # type: ignore[method-assign]
    return calls


def restore_finish_send(pipeline: Pipeline) -> None:
    del pipeline.db.finish_send  # the instance attribute hid the method


def test_a_crash_between_send_and_completion_never_sends_twice(pipeline: Pipeline) -> None:
    job_id = john_asks(pipeline)
    # The database stays unreachable for the whole (short) lease, as when the worker dies.
    failing_finish_send(pipeline, times=None)
    try:
        assert pipeline.run(lease_seconds=2)["outcomes"] == {"failed_transient": 1}
    finally:
        restore_finish_send(pipeline)
    assert len(pipeline.sink.messages) == 1
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sending"

    pipeline.make_due(job_id)
    outcome = pipeline.run()["outcomes"]

    # The Sent folder cannot prove delivery (the sink files nothing), so a person decides.
    assert outcome == {"held": 1}
    assert len(pipeline.sink.messages) == 1
    reply = pipeline.reply(job_id)
    assert reply is not None
    assert reply["status"] == "held" and reply["hold_reason"] == "delivery_in_doubt"
    assert pipeline.job(job_id)["status"] == "completed"
    assert pipeline.ledger(job_id) == [("reply", -1)]
    assert pipeline.event_types(job_id).count("process.held") == 1


def test_an_in_doubt_send_found_in_the_sent_folder_is_recorded_as_sent(
    pipeline: Pipeline,
) -> None:
    job_id = pipeline.one(make_email(f"Ana Souza <{ANA}>", "Rastreio", "Qual o rastreio do #1001?"))
    # The server keeps the message but the connection dies before its 250: in doubt.
    pipeline.sink.drop_after_data()

    assert pipeline.run()["outcomes"] == {"failed_transient": 1}
    (sent,) = pipeline.sink.messages
    assert sent.dropped_connection
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sending"
    # The store's provider filed the message in Sent, as Gmail and Microsoft 365 do.
    pipeline.dovecot.create_folder(pipeline.mail_user.name, "Sent")
    pipeline.dovecot.append(pipeline.mail_user.name, sent.data, folder="Sent")

    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}

    assert len(pipeline.sink.messages) == 1
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent"
    job = pipeline.job(job_id)
    assert job["status"] == "completed"
    assert job["result"]["in_doubt_resolved"] == "sent_folder"


# -- the reply's own copy in the store's mailbox (issue 16 item 2, decision 0017) ---------------


def send_in_doubt(pipeline: Pipeline) -> tuple[str, ReceivedMessage]:
    """John's reply goes out, but the connection dies before the server's 250: in doubt."""
    job_id = john_asks(pipeline)
    pipeline.sink.drop_after_data()
    assert pipeline.run()["outcomes"] == {"failed_transient": 1}
    (sent,) = pipeline.sink.messages
    assert sent.dropped_connection
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sending"
    return job_id, sent


def deliver_the_copy(pipeline: Pipeline, sent: ReceivedMessage) -> None:
    """What the store's server does with the extra envelope recipient: files it in the inbox."""
    assert sent.rcpt_tos == (JOHN, pipeline.support_email)
    message = sent.message()
    # The customer sees nothing: the copy's address is in no recipient header.
    assert [a.addr_spec for a in message["To"].addresses] == [JOHN]
    assert message["Cc"] is None and message["Bcc"] is None
    pipeline.dovecot.deliver(pipeline.mail_user.name, [sent.data])


def fetch_mailbox(pipeline: Pipeline) -> fetch.StoreOutcome:
    store = pipeline.db.get_store(pipeline.store_id)
    assert store is not None
    options = services.fetch_options(pipeline.worker.settings)
    return fetch.fetch_store(
        pipeline.db, store, imap.open_mailbox, options, deadline=time.monotonic() + 60
    )


def assert_the_copy_was_never_taken_for_mail(pipeline: Pipeline, sent: ReceivedMessage) -> None:
    message_id = sent.message()["Message-ID"]
    stored = pipeline.sql.execute(
        "select count(*) as n from public.messages where store_id = %s"
        " and (message_id = %s or from_address = %s)",
        (pipeline.store_id, message_id, pipeline.support_email),
    ).fetchone()
    assert stored is not None and stored["n"] == 0
    convs = pipeline.sql.execute(
        "select count(*) as n from public.conversations where store_id = %s"
        " and customer_email = %s",
        (pipeline.store_id, pipeline.support_email),
    ).fetchone()
    assert convs is not None and convs["n"] == 0
    assert len(pipeline.sent_to(pipeline.support_email)) == 1  # only the copy itself


def test_an_in_doubt_reply_whose_copy_is_fetched_ends_sent_and_its_job_completes(
    pipeline: Pipeline,
) -> None:
    job_id, sent = send_in_doubt(pipeline)
    deliver_the_copy(pipeline, sent)

    outcome = fetch_mailbox(pipeline)

    assert outcome.status == "ok" and outcome.own_copies == 1
    assert outcome.stored == 0 and outcome.job_ids == []
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent" and reply["hold_reason"] is None
    assert "reply.confirmed_by_copy" in pipeline.event_types(job_id)
    own = [e for e in pipeline.events_of_store() if e["event_type"] == "message.own_copy"]
    assert len(own) == 1 and own[0]["detail"]["previous_status"] == "sending"
    # The job, still waiting for its retry, completes without sending again.
    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}
    assert pipeline.job(job_id)["status"] == "completed"
    assert len(pipeline.sent_to(JOHN)) == 1
    assert pipeline.ledger(job_id) == [("reply", -1)]
    assert_the_copy_was_never_taken_for_mail(pipeline, sent)


def test_an_in_doubt_reply_whose_copy_is_already_in_the_inbox_is_resolved_by_the_retry(
    pipeline: Pipeline,
) -> None:
    job_id, sent = send_in_doubt(pipeline)
    deliver_the_copy(pipeline, sent)

    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"replied": 1}

    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent"
    assert pipeline.job(job_id)["result"]["in_doubt_resolved"] == "inbox"
    assert "process.held" not in pipeline.event_types(job_id)
    assert len(pipeline.sent_to(JOHN)) == 1
    # Fetching the copy afterwards changes nothing and answers nothing.
    outcome = fetch_mailbox(pipeline)
    assert outcome.stored == 0 and outcome.job_ids == []
    assert_the_copy_was_never_taken_for_mail(pipeline, sent)


def test_an_in_doubt_reply_without_a_copy_stays_held_until_the_copy_arrives(
    pipeline: Pipeline,
) -> None:
    job_id, sent = send_in_doubt(pipeline)

    pipeline.make_due(job_id)
    assert pipeline.run()["outcomes"] == {"held": 1}
    reply = pipeline.reply(job_id)
    assert reply is not None
    assert reply["status"] == "held" and reply["hold_reason"] == "delivery_in_doubt"
    assert len(pipeline.sent_to(JOHN)) == 1

    # The copy arrives late (a slow local delivery): the held reply becomes sent, no person.
    deliver_the_copy(pipeline, sent)
    outcome = fetch_mailbox(pipeline)
    assert outcome.stored == 0 and outcome.job_ids == []
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent" and reply["hold_reason"] is None
    confirmed = [e for e in pipeline.events(job_id) if e["event_type"] == "reply.confirmed_by_copy"]
    assert len(confirmed) == 1 and confirmed[0]["detail"]["previous_status"] == "held"
    assert len(pipeline.sent_to(JOHN)) == 1
    assert_the_copy_was_never_taken_for_mail(pipeline, sent)


def test_a_refused_copy_recipient_does_not_stop_the_customers_reply(pipeline: Pipeline) -> None:
    pipeline.sink.refuse(pipeline.support_email)
    job_id = john_asks(pipeline)

    assert pipeline.run()["outcomes"] == {"replied": 1}

    (sent,) = pipeline.sink.messages
    assert sent.rcpt_tos == (JOHN,)
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent"
    refused = [e for e in pipeline.events(job_id) if e["event_type"] == "reply.copy_refused"]
    assert len(refused) == 1 and refused[0]["detail"]["response"].startswith("550")


def test_a_job_run_again_after_its_reply_was_sent_completes_without_sending(
    pipeline: Pipeline,
) -> None:
    job_id = john_asks(pipeline)
    assert pipeline.run()["outcomes"] == {"replied": 1}
    # An operator requeues a job whose reply went out (e.g. from the DLQ tool by mistake).
    pipeline.sql.execute(
        "update public.job_queue set status = 'pending', next_retry_at = now(),"
        " completed_at = null where id = %s",
        (job_id,),
    )

    assert pipeline.run()["outcomes"] == {"replied": 1}

    assert len(pipeline.sink.messages) == 1
    assert pipeline.job(job_id)["result"]["already_sent"] is True
    assert pipeline.ledger(job_id) == [("reply", -1)]


# -- the database fails right after SMTP accepted the reply ---------------------------------------


def test_a_database_blip_after_the_send_is_ridden_out_and_the_reply_recorded_as_sent(
    pipeline: Pipeline,
) -> None:
    job_id = john_asks(pipeline)
    calls = failing_finish_send(pipeline, times=3)
    try:
        assert pipeline.run()["outcomes"] == {"replied": 1}
    finally:
        restore_finish_send(pipeline)

    assert len(calls) == 4
    assert len(pipeline.sink.messages) == 1
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent" and reply["hold_reason"] is None
    assert pipeline.job(job_id)["status"] == "completed"
    assert "process.held" not in pipeline.event_types(job_id)
    assert pipeline.ledger(job_id) == [("reply", -1)]


def kill_worker_connections(pipeline: Pipeline) -> int:
    """Terminate every pooled worker connection, as a Postgres restart does to them.

    Waits (up to 5 s) until each backend has exited, as a restart has before it accepts again.
    """
    rows = pipeline.sql.execute(
        "select pg_terminate_backend(pid, 5000) from pg_stat_activity"
        " where application_name = 'support-worker' and pid <> pg_backend_pid()"
    ).fetchall()
    return len(rows)


def test_pooled_connections_killed_by_a_restart_are_replaced_before_use(
    pipeline: Pipeline,
) -> None:
    pipeline.db.ping()
    assert kill_worker_connections(pipeline) >= 1

    # The first call after the restart gets a live connection: the pool checks before use.
    pipeline.db.ping()


def test_connections_lost_right_after_the_send_still_end_with_the_reply_sent(
    pipeline: Pipeline,
) -> None:
    job_id = john_asks(pipeline)
    mail = pipeline.proc.mail
    killed: list[int] = []

    def send_then_lose_the_database(*args: Any, **kwargs: Any) -> object:
        result = mail.send(*args, **kwargs)
        killed.append(kill_worker_connections(pipeline))
        return result

    pipeline.proc.mail = dataclasses.replace(mail, send=send_then_lose_the_database)
    try:
        assert pipeline.run()["outcomes"] == {"replied": 1}
    finally:
        pipeline.proc.mail = mail

    assert killed and killed[0] >= 1
    assert len(pipeline.sink.messages) == 1
    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent"
    assert pipeline.job(job_id)["status"] == "completed"
    assert "process.held" not in pipeline.event_types(job_id)


# -- a poison job: its worker died on every attempt -----------------------------------------------


def test_a_job_whose_worker_died_on_its_last_attempt_gives_its_credit_back(
    pipeline: Pipeline,
) -> None:
    job_id = john_asks(pipeline)
    # A worker claims the job on its last attempt, takes the credit and dies (no settle).
    pipeline.sql.execute("update public.job_queue set max_attempts = 1 where id = %s", (job_id,))
    (claimed,) = pipeline.db.dequeue_jobs("dead-worker", 1, 1, [pipeline.job_type])
    assert str(claimed["id"]) == job_id
    assert pipeline.db.reserve_credit(pipeline.store_id, job_id) == "reserved"
    pipeline.sql.execute(
        "update public.job_queue set locked_until = now() - interval '1 second' where id = %s",
        (job_id,),
    )

    # The next claim finds the lease expired with no attempts left: dead-lettered in SQL.
    assert pipeline.run()["claimed"] == 0

    assert pipeline.job(job_id)["status"] == "dead_letter"
    assert pipeline.ledger(job_id) == [("reply", -1), ("refund", 1)]
    assert pipeline.credits() == 10
    settled = [e for e in pipeline.events(job_id) if e["event_type"] == "job.dead_letter_settled"]
    assert len(settled) == 1 and settled[0]["detail"]["refunded"] is True
    assert settled[0]["detail"]["error"].startswith("lease expired")
    assert pipeline.sink.messages == []


# -- a reused Message-ID --------------------------------------------------------------------------


def test_a_forged_copy_of_a_message_id_does_not_pre_empt_the_real_customers_email(
    pipeline: Pipeline,
) -> None:
    message_id = "<order-question-1002@customer.example>"
    forged = make_email(ATTACKER, "Where is my order?", "Ship #1002 to me", message_id=message_id)
    real = make_email(JOHN, *ORDER_QUESTION, message_id=message_id)

    forged_job, real_job = pipeline.ingest(forged, real)
    # A fetch that sees the real email again (another folder, a re-sync) stores nothing new.
    assert pipeline.ingest(real) == []

    assert forged_job != real_job
    pipeline.run()
    assert pipeline.job(real_job)["status"] == "completed"
    assert len(pipeline.sent_to(JOHN)) == 1
    reply = pipeline.reply(real_job)
    assert reply is not None and reply["status"] == "sent"
    assert reply["in_reply_to"] == message_id  # threads at the customer's end as usual
    flagged = [e for e in pipeline.events_of_store() if e["event_type"] == "message.conflicting_id"]
    assert len(flagged) == 1 and flagged[0]["detail"]["from_address"] == JOHN


# -- a worker SIGKILLed mid-job ------------------------------------------------------------------

WORKER_SCRIPT = """
import dataclasses, os, sys
from worker import process, services
from worker.config import load_settings
from worker.runs import Budget
settings = load_settings(os.environ)
built = services.build_services(settings)
options = dataclasses.replace(services.process_options(settings), job_types=(sys.argv[1],))
process.run_process(built.process_services, Budget(600), options=options)
"""


def test_a_sigkilled_workers_job_is_taken_over_once_its_default_lease_expires(
    pipeline: Pipeline, pipeline_dsn: str
) -> None:
    job_id = john_asks(pipeline)
    # The worker hangs in the model call until it is killed.
    pipeline.claude.script(
        tool_use_reply("record_answer", classification(intent="order_status"), delay=600)
    )
    env = {
        **os.environ,
        "DATABASE_URL": pipeline_dsn,
        "WORKER_SECRET": "test-worker-secret-0123456789",
        "ANTHROPIC_API_KEY": TEST_API_KEY,
        "ANTHROPIC_BASE_URL": pipeline.claude.base_url,
        "SHOPIFY_BASE_URL": pipeline.shopify.base_url,
        "EXTRA_CA_FILE": str(pipeline.sink.ca.ca_file),
        "LOG_LEVEL": "WARNING",
    }
    env.pop("LEASE_SECONDS", None)  # the default lease is what is measured
    worker = subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, pipeline.job_type], env=env)
    try:
        job = wait_for(lambda: in_flight(pipeline, job_id, worker.pid), timeout=60)
        assert wait_for(lambda: len(pipeline.claude.messages) >= 1, timeout=60)
    finally:
        worker.kill()
        worker.wait(timeout=30)
    killed_at = time.monotonic()

    lease = job["locked_until"] - job["started_at"]
    assert lease <= timedelta(seconds=60), f"default lease {lease} (recovery waits this long)"

    # Another worker's runs take the job over once the lease has expired, and answer it.
    def taken_over() -> bool:
        pipeline.run()
        return pipeline.job(job_id)["status"] == "completed"

    assert wait_for(taken_over, timeout=lease.total_seconds() + 120, every=1.0)
    recovery = time.monotonic() - killed_at
    print(
        f"\nMEASURED SIGKILL recovery: job completed {recovery:.1f} s after the kill "
        f"(lease {lease.total_seconds():.0f} s)"
    )
    assert len(pipeline.sent_to(JOHN)) == 1
    assert "job.lease_expired" in pipeline.event_types(job_id)


def in_flight(pipeline: Pipeline, job_id: str, pid: int) -> dict[str, Any] | None:
    job = pipeline.job(job_id)
    held = job["status"] == "processing" and f":{pid}:" in str(job["locked_by"])
    return job if held else None


def wait_for(check: Callable[[], Any], *, timeout: float, every: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy (returned) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)
