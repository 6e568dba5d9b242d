"""The `send_reply` job: a reply a person approved or wrote, sent through the pipeline's
exactly-once delivery (worker.pipeline.delivery: drafted -> sending -> sent with its stable
Message-ID and threading headers; a reply found `sending` is resolved through the Sent folder,
never sent twice).

The console's SQL action drafted the reply and enqueued this job in one transaction; the credit
was taken then (or when the pipeline drafted it), keyed by the reply's `job_id`, so a permanent
failure refunds that charge here and a dead letter has it refunded by the database
(settle_dead_lettered_job).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.errors import WorkerError
from worker.pipeline import delivery
from worker.pipeline.context import JobContext, JobDone, PipelineOptions, Services
from worker.queue.handlers import JobRun
from worker.queue.outcome import Complete, Outcome, Settled
from worker.queue.trace import finish

JOB_TYPE = "send_reply"


class SendReplyHandler:
    """Sends one person-approved reply (a `send_reply` job) exactly once."""

    def __init__(self, services: Services, options: PipelineOptions | None = None) -> None:
        self.services = services
        self.options = options or PipelineOptions()

    def handle(self, run: JobRun) -> Outcome:
        """Load the reply and its store, then deliver it (or end where an earlier try left it)."""
        reply_id = str((run.job.get("payload") or {}).get("reply_id") or "")
        loaded = self.services.db.load_reply_context(reply_id) if reply_id else None
        if loaded is None:
            return Complete(finish(run.trace, "skipped", reason="reply_gone"))
        reply, store = loaded["reply"], loaded["store"]
        ctx = JobContext(run=run, services=self.services, options=self.options)
        ctx.store_, ctx.reply = store, reply
        try:
            delivery.resume_reply(ctx)
        except JobDone as done:
            return Complete(finish(run.trace, done.outcome, **done.detail))
        except WorkerError as exc:
            if exc.error_type == "permanent":
                # delivery refunds by this job's id; the charge was keyed by the reply's.
                self._refund(reply, store, "send_failed")
            raise
        if ctx.settled is None:
            raise RuntimeError("send_reply: delivery ended without an outcome")
        return Settled(ctx.settled)

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        """Nothing to undo here: the database settles a dead-lettered send_reply job itself.

        The trigger job_queue_dead_lettered (settle_dead_lettered_job) finds the reply by the
        payload's reply_id and refunds the charge keyed by the reply's job_id on every path into
        the dead-letter queue, including the claim's dead-lettering of an expired lease, which
        never reaches Python.
        """

    def _refund(self, reply: Mapping[str, Any], store: Mapping[str, Any], reason: str) -> None:
        if reply.get("job_id"):
            self.services.db.release_credit(str(store["id"]), str(reply["job_id"]), reason)
