"""The process_email handler: runs the steps over one job and reports the outcome to the queue.

It also owns what belongs to email jobs only: the `process.*` events of an early end. What a
dead-lettered email job leaves behind (its credit, its reply row) is settled in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.pipeline.context import JobContext, JobDone, PipelineOptions, Services
from worker.pipeline.steps import STEPS, Step
from worker.queue.handlers import JobRun
from worker.queue.outcome import Complete, Outcome, Settled
from worker.queue.trace import finish

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
        """Nothing to undo here: the database settles a dead-lettered email job itself.

        The trigger job_queue_dead_lettered (settle_dead_lettered_job) refunds an unsent
        reply's credit and settles the reply row on every path into the dead-letter queue,
        including the claim's dead-lettering of an expired lease, which never reaches Python.
        """
