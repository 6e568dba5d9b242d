"""The process_email handler: runs the steps over one job and reports the outcome to the queue.

It also owns what belongs to email jobs only: the `process.*` events of an early end and the
credit refund when a job is dead-lettered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from worker.errors import WorkerError
from worker.pipeline.context import JobContext, JobDone, PipelineOptions, Services
from worker.pipeline.steps import STEPS, Step
from worker.queue.handlers import JobRun
from worker.queue.outcome import Complete, Outcome, Settled
from worker.queue.trace import finish

log = logging.getLogger(__name__)

JOB_TYPE = "process_email"
# Early ends that leave a trace in `events` (the others are visible in the job's result).
END_EVENTS = {"skipped": "process.skipped", "spam": "process.spam", "held": "process.held"}


class EmailHandler:
    """Answers one customer email (a `process_email` job) exactly once."""

    def __init__(
        self,
        services: Services,
        options: PipelineOptions | None = None,
        steps: tuple[Step, ...] = STEPS,
    ) -> None:
        self.services = services
        self.options = options or PipelineOptions()
        self.steps = steps

    def handle(self, run: JobRun) -> Outcome:
        """Run the steps until one ends the job."""
        ctx = JobContext(run=run, services=self.services, options=self.options)
        try:
            for step in self.steps:
                step(ctx)
                if ctx.settled is not None:
                    return Settled(ctx.settled)
        except JobDone as done:
            if done.outcome in END_EVENTS:
                detail = {k: v for k, v in done.detail.items() if k != "timings_ms"}
                run.trace.event(END_EVENTS[done.outcome], **detail)
            return Complete(finish(run.trace, done.outcome, **done.detail))
        raise RuntimeError(f"the pipeline ended without an outcome after {self.steps[-1]}")

    def dead_lettered(self, job: Mapping[str, Any]) -> None:
        """Give back the credit of a dead-lettered job whose reply never left.

        The credit is taken before drafting, so a draft the model rejects (400) or a reply that
        never got past `drafted` would otherwise be paid for with nothing sent. A reply found
        `sending` or `sent` may have reached the customer and stays charged. Rare path: the
        extra round trip is paid only on dead-lettering.
        """
        db, job_id = self.services.db, str(job["id"])
        try:
            loaded = db.load_job_context(job_id) or {}
            reply = loaded.get("reply")
            if reply and reply.get("status") in ("sending", "sent"):
                return
            store_id = job.get("store_id") or (loaded.get("store") or {}).get("id")
            if store_id:
                db.release_credit(str(store_id), job_id, "dead_lettered")
        except WorkerError:
            log.exception("job %s: could not refund its credit", job_id)
