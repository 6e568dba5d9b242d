"""One runner, many kinds of job: a second job type with its own handler and retry policy runs
next to process_email, and a claimed job nobody handles fails permanently, naming its type.

Same harness as test_process_pipeline.py (real Postgres, Dovecot, SMTP sink, fake Claude and
Shopify), so the process_email job beside the new type is the real pipeline.
"""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from tests.integration.test_process_pipeline import (
    JOHN,
    RUN_BUDGET_SECONDS,
    Pipeline,
    make_email,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from worker import process
from worker.errors import TransientError
from worker.queue.handlers import Handler, Handlers, JobRun
from worker.queue.outcome import Complete, Outcome
from worker.queue.trace import finish
from worker.runs import Budget

pytestmark = pytest.mark.integration

# The notification policy: fewer, faster attempts than an email's (2 min doubling, 5 attempts).
BASE_SECONDS, CAP_SECONDS, MAX_ATTEMPTS = 10, 15, 3


class Notifier:
    """A second kind of work: "notify the store's people", failing its first `fail_first` tries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.calls: list[str] = []
        self.dead: list[str] = []

    def handle(self, run: JobRun) -> Outcome:
        self.calls.append(run.job_id)
        if len(self.calls) <= self.fail_first:
            raise TransientError("notification service busy", service="notify")
        run.trace.event("notify.sent", to=run.job["payload"]["to"])
        return Complete(finish(run.trace, "notified", to=run.job["payload"]["to"]))

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        self.dead.append(str(job["id"]))


@pytest.fixture
def notify_type(pipeline: Pipeline) -> Any:
    """A private job type with its own retry policy row (removed afterwards)."""
    job_type = f"notify_t_{uuid.uuid4().hex[:10]}"
    pipeline.sql.execute(
        "insert into public.job_retry_policies (job_type, base_seconds, cap_seconds, max_attempts)"
        " values (%s, %s, %s, %s)",
        (job_type, BASE_SECONDS, CAP_SECONDS, MAX_ATTEMPTS),
    )
    yield job_type
    pipeline.sql.execute(
        "update public.job_queue set status = 'completed', completed_at = now()"
        " where job_type = %s and status in ('pending', 'processing')",
        (job_type,),
    )
    pipeline.sql.execute("delete from public.job_retry_policies where job_type = %s", (job_type,))


def run_with(pipeline: Pipeline, job_type: str, handler: Handler) -> dict[str, Any]:
    """One run of the worker's own registry (process_email) plus `handler` for `job_type`."""
    handlers = process.handlers_for(pipeline.proc, pipeline.options)
    handlers.register(job_type, handler)
    return process.run_process(
        pipeline.proc, Budget(RUN_BUDGET_SECONDS), options=pipeline.options, handlers=handlers
    )


def retry_delay(job: dict[str, Any]) -> timedelta:
    return job["next_retry_at"] - job["last_error_at"]


def test_a_second_job_type_is_claimed_retried_and_completed_next_to_process_email(
    pipeline: Pipeline, notify_type: str
) -> None:
    notify_id = pipeline.db.enqueue_job(notify_type, {"to": "owner@shop.test"})
    email_id = pipeline.one(make_email(JOHN, "Where is my order?", "Where is order #1002?"))
    assert pipeline.job(notify_id)["max_attempts"] == MAX_ATTEMPTS  # from its policy
    assert pipeline.job(email_id)["max_attempts"] == 5  # process_email's unchanged default
    notifier = Notifier(fail_first=1)

    summary = run_with(pipeline, notify_type, notifier)

    # Both types claimed by the same run; the email answered, the notification retried after
    # its own policy's first delay (10 s plus up to 10% jitter), not an email's 2 minutes.
    assert summary["outcomes"] == {"replied": 1, "failed_transient": 1}
    assert len(pipeline.sent_to(JOHN)) == 1
    job = pipeline.job(notify_id)
    assert (job["status"], job["attempt_count"]) == ("pending", 1)
    assert timedelta(seconds=BASE_SECONDS) <= retry_delay(job) <= timedelta(seconds=11)

    pipeline.make_due(notify_id)
    assert run_with(pipeline, notify_type, notifier)["outcomes"] == {"notified": 1}
    job = pipeline.job(notify_id)
    assert job["status"] == "completed" and job["result"]["outcome"] == "notified"
    assert notifier.calls == [notify_id, notify_id]
    assert "notify.sent" in pipeline.event_types(notify_id)


def test_a_second_job_type_retries_with_its_own_delays_and_attempts_then_dead_letters(
    pipeline: Pipeline, notify_type: str
) -> None:
    notify_id = pipeline.db.enqueue_job(notify_type, {"to": "owner@shop.test"})
    notifier = Notifier(fail_first=99)
    delays = []
    for _ in range(MAX_ATTEMPTS - 1):
        assert run_with(pipeline, notify_type, notifier)["outcomes"] == {"failed_transient": 1}
        delays.append(retry_delay(pipeline.job(notify_id)))
        pipeline.make_due(notify_id)

    # 10 s, then 20 s capped at the policy's 15 s (each plus up to 10% jitter) ...
    assert timedelta(seconds=10) <= delays[0] <= timedelta(seconds=11)
    assert timedelta(seconds=15) <= delays[1] <= timedelta(seconds=16.5)
    # ... and the third attempt is the last: dead-lettered and handed back to its handler.
    assert run_with(pipeline, notify_type, notifier)["outcomes"] == {"failed_transient": 1}
    job = pipeline.job(notify_id)
    assert (job["status"], job["attempt_count"]) == ("dead_letter", MAX_ATTEMPTS)
    assert notifier.dead == [notify_id]


class Vanishing(Handlers):
    """A registry whose handler for one type disappears between the claim and the dispatch."""

    def __init__(self, gone: str) -> None:
        super().__init__()
        self.gone = gone

    def get(self, job_type: str) -> Handler | None:
        return None if job_type == self.gone else super().get(job_type)


def test_a_claimed_job_of_a_type_without_a_handler_fails_permanently_naming_the_type(
    pipeline: Pipeline,
) -> None:
    job_type = f"retired_t_{uuid.uuid4().hex[:10]}"
    job_id = pipeline.db.enqueue_job(job_type, {"anything": 1})
    handlers = Vanishing(job_type)
    handlers.register(job_type, Notifier())

    summary = process.run_process(
        pipeline.proc, Budget(RUN_BUDGET_SECONDS), options=pipeline.options, handlers=handlers
    )

    assert summary["outcomes"] == {"failed_permanent": 1}
    job = pipeline.job(job_id)
    assert (job["status"], job["last_error_type"]) == ("dead_letter", "permanent")
    assert job_type in job["last_error"]
    assert job["completed_at"] is None and job["result"] is None
    assert "job.dead_lettered" in pipeline.event_types(job_id)
