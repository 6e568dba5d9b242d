"""The demo's report: each email's outcome, the replies as sent, credits and queue metrics.

Pure: it formats what the scenario (scenario.py) read from the database, the SMTP sink and the
DLQ tool.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker import digest

# Why a message was not answered, in words (the codes come from worker.loops/validate/mime).
REASONS = {
    "auto_submitted": "auto-reply (Auto-Submitted header, RFC 3834)",
    "bounce": "bounce (delivery status report)",
    "precedence": "bulk or list mail (Precedence header)",
    "noreply_sender": "no-reply sender",
    "own_address": "sent by the store itself",
    "invalid_sender": "no valid sender address",
    "oversized": "too large",
    "message_gone": "message deleted before processing",
}
# Outcomes an email can settle in.
ANSWERED, HELD, SKIPPED, SPAM, DEAD_LETTER = "answered", "held", "skipped", "spam", "dead_letter"
WAITING_CREDITS, FAILED, WAITING = "waiting_for_credits", "failed", "waiting"
# Why a reply waits for a person, in words (the codes come from the pipeline's hold rules).
HOLD_REASONS = {
    "reply_cap": "the customer is over the reply cap; a person writes the answer",
    "follow_up_promised": "the reply says the team will follow up, so a person does",
    "needs_human": "the customer needs a person",
    "complaint": "a complaint",
    "draft_only": "the store sends drafts only",
    "low_confidence": "unsure of the request",
}


@dataclass(frozen=True)
class Outcome:
    """Where one inbound email ended up."""

    kind: str
    detail: str
    final: bool


def outcome_of(row: Mapping[str, Any]) -> Outcome:
    """The outcome of one row of the report query (message + its job + its reply)."""
    if row.get("skip_reason"):
        reason = str(row["skip_reason"])
        return Outcome(SKIPPED, f"{REASONS.get(reason, reason)}, at fetch", True)
    status = row.get("job_status")
    if status is None:
        return Outcome(WAITING, "stored, no job yet", False)
    if status == "pending" and row.get("waiting_for_credits"):
        # An end state until someone adds credits; then it is answered without anyone's help.
        return Outcome(
            WAITING_CREDITS, "waiting for credits: answered once credits are added", True
        )
    if status == "dead_letter":
        return Outcome(DEAD_LETTER, str(row.get("last_error") or "no error recorded"), True)
    if status != "completed":
        retry = f"; last error: {row['last_error']}" if row.get("last_error") else ""
        return Outcome(WAITING, f"job {status}{retry}", False)
    result = row.get("result") or {}
    kind = str(result.get("outcome") or "")
    if kind == "replied":
        return Outcome(ANSWERED, f"reply sent ({row.get('language') or '?'})", True)
    if kind == "held":
        reason = str(result.get("hold_reason") or row.get("hold_reason") or "?")
        return Outcome(
            HELD, f"held for a person (reason: {HOLD_REASONS.get(reason, reason)})", True
        )
    if kind == "skipped":
        reason = str(result.get("reason") or "?")
        return Outcome(SKIPPED, f"not answered: {REASONS.get(reason, reason)}", True)
    if kind == "spam":
        reasons = ", ".join(str(r) for r in result.get("reasons") or []) or "?"
        return Outcome(SPAM, f"not answered ({reasons})", True)
    error = result.get("error") or row.get("reply_error")
    return Outcome(FAILED, f"{kind or 'completed'}: {error}", True)


def all_settled(rows: Sequence[Mapping[str, Any]], expected_count: int) -> bool:
    """Every expected email is stored and has reached an end state."""
    return len(rows) >= expected_count and all(outcome_of(r).final for r in rows)


def _sender(row: Mapping[str, Any]) -> str:
    name, address = row.get("from_name"), row.get("from_address") or "?"
    return f"{name} <{address}>" if name else str(address)


def _indent(text: str, prefix: str = "      | ") -> str:
    lines = text.rstrip("\n").splitlines() or [""]
    return "\n".join(prefix + line for line in lines)


def email_lines(
    rows: Sequence[Mapping[str, Any]],
    sent_bodies: Mapping[str, str],
    console_url: str | None = None,
) -> list[str]:
    """One block per email: sender and subject, outcome, and the reply text when there is one."""
    lines: list[str] = []
    console_base = console_url.removesuffix("/login") if console_url else None
    for number, row in enumerate(rows, 1):
        outcome = outcome_of(row)
        lines.append(f"{number:>2}. {_sender(row)}")
        lines.append(f"    Subject: {row.get('subject') or '(none)'}")
        lines.append(f"    -> {outcome.kind.upper()}: {outcome.detail}")
        if row.get("knowledge_given"):
            titles = ", ".join(str(t) for t in row["knowledge_given"])
            lines.append(f"    Store knowledge given to the responder: {titles}")
        body = row.get("reply_body")
        if not body:
            continue
        smtp_id = str(row.get("smtp_message_id") or "")
        if outcome.kind == ANSWERED and smtp_id in sent_bodies:
            lines.append(f"    Reply as received by the SMTP sink (to {row.get('to_address')}):")
            lines.append(_indent(sent_bodies[smtp_id]))
        elif outcome.kind == HELD:
            lines.append("    Draft waiting for a person (not sent):")
            lines.append(_indent(str(body)))
            if console_base and row.get("conversation_id"):
                lines.append(
                    "    Waiting in the console: "
                    f"{console_base}/console/conversations/{row['conversation_id']}"
                )
        else:
            lines.append(f"    Reply drafted (reply status: {row.get('reply_status')}):")
            lines.append(_indent(str(body)))
    return lines


def metrics_lines(
    queue_metrics: Sequence[Mapping[str, Any]], queue_stats: Mapping[str, Any]
) -> list[str]:
    """The queue_metrics rows of the latest window and the live queue_stats()."""
    lines = ["queue_stats():"]
    jobs = queue_stats.get("jobs") or []
    if jobs:
        for job in jobs:
            lines.append(f"  {job['job_type']:<14} {job['status']:<12} {job['count']}")
    else:
        lines.append("  no pending, processing or dead-letter jobs")
    breakers = queue_stats.get("breakers") or []
    states = ", ".join(f"{b['service']}={b['state']}" for b in breakers) or "none"
    lines.append(f"  circuit breakers: {states}")
    lines.append(
        "queue_metrics after aggregate_queue_metrics() (the last 5 whole minutes; jobs finished"
        " in the current minute count in the next window):"
    )
    if not queue_metrics:
        lines.append("  no rows")
    for m in queue_metrics:
        avg = m.get("avg_processing_ms")
        p95 = m.get("p95_processing_ms")
        lines.append(
            f"  {m['job_type']:<14} window {m['window_start']:%H:%M}-{m['window_end']:%H:%M}"
            f"  completed={m['completed_in_window']} retried={m['retried_in_window']}"
            f" dead_lettered={m['dead_lettered_in_window']} pending={m['pending_count']}"
            f" dead_letter={m['dead_letter_count']}"
            + (f" avg={avg:.0f}ms" if avg is not None else "")
            + (f" p95={p95:.0f}ms" if p95 is not None else "")
        )
    return lines


@dataclass(frozen=True)
class ReportInputs:
    """Everything the printed report and its JSON summary are made of."""

    store_name: str
    store_email: str
    responder: str
    rows: Sequence[Mapping[str, Any]]
    keys: Mapping[str, str]  # Message-ID -> seed email name
    sent_bodies: Mapping[str, str]  # Message-ID -> text the SMTP sink received
    credits_start: int
    credits_left: int
    dead_letter_jobs: int
    settle_seconds: float
    timing: Mapping[str, Any] | None  # count, avg, p95, max of the completed jobs' durations
    queue_metrics: Sequence[Mapping[str, Any]]
    queue_stats: Mapping[str, Any]
    dlq_output: Sequence[str]  # what `scripts/requeue.py list` printed
    database_url: str
    console_url: str | None = None  # the support console's sign-in page
    console_logins: Sequence[tuple[str, str, str]] = ()  # (who, email, password)
    digests: Sequence[Mapping[str, Any]] = ()  # the store's sent notification digests
    webhook_posts: Sequence[Mapping[str, Any]] = ()  # what the webhook receiver got
    # The store's mailbox after the mailbox_record jobs: sent, drafts, answered, jobs_*.
    mailbox: Mapping[str, int] | None = None


def report_data(inputs: ReportInputs) -> dict[str, Any]:
    """The machine-readable summary written to DEMO_REPORT_JSON."""
    data = summary(
        inputs.rows,
        inputs.keys,
        responder=inputs.responder,
        credits_start=inputs.credits_start,
        credits_left=inputs.credits_left,
        dead_letter_jobs=inputs.dead_letter_jobs,
    )
    data["settle_seconds"] = round(inputs.settle_seconds, 1)
    data["notifications"] = {
        "digests": [
            {"to": list(d.get("email_to") or []), "subject": d.get("subject"),
             "kinds": [i["kind"] for i in d.get("items") or []],
             "webhook": d.get("webhook_sent_at") is not None}
            for d in inputs.digests
        ],
        "webhook_calls": len(inputs.webhook_posts),
    }
    if inputs.mailbox is not None:
        data["mailbox"] = dict(inputs.mailbox)
    return data


def notification_lines(
    digests: Sequence[Mapping[str, Any]], webhook_posts: Sequence[Mapping[str, Any]]
) -> list[str]:
    """What the store's people were told: each digest, its items, and the webhook calls."""
    lines = ["Notifications (the store's people are told when something needs them):"]
    if not digests:
        lines.append("  none sent")
    for d in digests:
        when = d["email_sent_at"] or d["created_at"]
        to = ", ".join(d.get("email_to") or []) or "nobody"
        lines.append(f"  digest at {when:%H:%M:%S} UTC to {to}")
        if d.get("subject"):
            lines.append(f"    Subject: {d['subject']}")
        for item in d.get("items") or []:
            shown = digest.Item(kind=item["kind"], ref=item["ref"], detail=item["detail"],
                                created_at="")
            lines.append(f"    - {item['kind']}: {digest.item_line(shown)}")
        if d.get("webhook_sent_at"):
            lines.append("    webhook: delivered")
        elif d.get("webhook_error"):
            lines.append(f"    webhook: failed: {d['webhook_error']}")
        if d.get("email_error"):
            lines.append(f"    email: failed: {d['email_error']}")
    lines.append(f"  webhook receiver: {len(webhook_posts)} call(s)")
    return lines


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def mailbox_lines(mailbox: Mapping[str, int]) -> list[str]:
    """The store's mailbox as the record: what its own mail client now shows."""
    lines = [
        f"Mailbox: Sent folder: {_plural(mailbox['sent'], 'reply', 'replies')} filed, "
        f"Drafts: {mailbox['drafts']} held, INBOX: "
        f"{_plural(mailbox['answered'], 'email', 'emails')} marked read and answered "
        f"({_plural(mailbox['jobs_done'], 'mailbox_record job', 'mailbox_record jobs')})"
    ]
    if mailbox.get("jobs_waiting"):
        lines.append(f"         {mailbox['jobs_waiting']} mailbox_record jobs still waiting")
    return lines


def report_lines(inputs: ReportInputs) -> list[str]:
    """The report as printed: every email's outcome, credits, timing, metrics and the DLQ."""
    rule = "=" * 100
    lines = [
        "",
        rule,
        f"DEMO REPORT - store {inputs.store_name} <{inputs.store_email}>, "
        f"responder: {inputs.responder}",
        rule,
        *email_lines(inputs.rows, inputs.sent_bodies, inputs.console_url),
        "",
        f"Outcomes: {counts_line(report_data(inputs))}",
    ]
    used = inputs.credits_start - inputs.credits_left
    lines.append(
        f"Credits: {inputs.credits_left} left of {inputs.credits_start} ({used} used: one per "
        "reply sent; a held draft or a reply that could not be delivered costs nothing)"
    )
    if inputs.mailbox is not None:
        lines += mailbox_lines(inputs.mailbox)
    lines.append(
        f"Timing: every email settled {inputs.settle_seconds:.1f} s after the fetch kick"
        " (measured by polling once a second)"
    )
    timing = inputs.timing
    if timing and timing["jobs"]:
        lines.append(
            f"        {timing['jobs']} completed process_email jobs took "
            f"avg {timing['avg_ms']:.0f} ms, p95 {timing['p95_ms']:.0f} ms, "
            f"max {timing['max_ms']:.0f} ms (claim to completion)"
        )
    lines += ["", *metrics_lines(inputs.queue_metrics, inputs.queue_stats), ""]
    lines.append("Dead-letter queue (scripts/requeue.py list):")
    lines += [f"  {line}" for line in inputs.dlq_output]
    lines.append(
        "  (requeue one after fixing its cause: scripts/requeue.py requeue JOB_ID; "
        f"DATABASE_URL={inputs.database_url})"
    )
    lines += ["", *notification_lines(inputs.digests, inputs.webhook_posts)]
    if inputs.console_url:
        lines += ["", f"Support console: {inputs.console_url}"]
        held = sum(1 for row in inputs.rows if outcome_of(row).kind == HELD)
        lines.append(f"  {held} held repl{'y' if held == 1 else 'ies'} waiting for a person "
                     "under 'Needs a person'; send, edit or discard them there")
        for who, address, password in inputs.console_logins:
            lines.append(f"  {who}: {address} / {password}")
    return lines


def summary(
    rows: Sequence[Mapping[str, Any]],
    keys: Mapping[str, str],
    *,
    responder: str,
    credits_start: int,
    credits_left: int,
    dead_letter_jobs: int,
) -> dict[str, Any]:
    """A machine-readable summary (DEMO_REPORT_JSON), keyed by the seed emails' names."""
    emails = []
    for row in rows:
        outcome = outcome_of(row)
        emails.append(
            {
                "key": keys.get(str(row.get("message_id") or "")),
                "from": row.get("from_address"),
                "subject": row.get("subject"),
                "outcome": outcome.kind,
                "detail": outcome.detail,
                "language": row.get("language"),
                "reply_status": row.get("reply_status"),
            }
        )
    return {
        "responder": responder,
        "credits_start": credits_start,
        "credits_left": credits_left,
        "dead_letter_jobs": dead_letter_jobs,
        "counts": dict(Counter(e["outcome"] for e in emails)),
        "emails": emails,
    }


def counts_line(summary_data: Mapping[str, Any]) -> str:
    """'4 answered, 1 held, ...' in a fixed order."""
    counts = summary_data["counts"]
    order = [ANSWERED, HELD, SKIPPED, SPAM, DEAD_LETTER, WAITING_CREDITS, FAILED, WAITING]
    return ", ".join(f"{counts[k]} {k.replace('_', '-')}" for k in order if counts.get(k))


def wrap(text: str, width: int = 96) -> str:
    """A paragraph wrapped for the terminal."""
    return "\n".join(textwrap.wrap(text, width))


def to_json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=str)


def cron_run_line(run: Mapping[str, Any]) -> str:
    """One pg_cron run from cron.job_run_details."""
    started = run["start_time"]
    when = f"{started:%H:%M:%S}" if started is not None else "?"
    message = str(run.get("return_message") or "").strip()
    return f"    [{when}] pg_cron {run['jobname']}: {run['status']} ({message})"
