"""process-queue: answer each queued customer email exactly once.

A run claims jobs in batches sized to the free slots of a thread pool, processes them
concurrently, renews their leases while they run and stops claiming when its budget is spent.
One job walks the steps of `handle_job`; every decision that can be pure lives in its own module
(`validate`, `loops`, `spam`, `privacy`, `prompts`), and every outside service is passed in.

Exactly one reply: the reply row moves drafted -> sending -> sent in the database. A job that
finds its reply `sent` completes without sending; one found `sending` was interrupted between
the SMTP hand-off and the bookkeeping, so we cannot know whether the customer got it. We then
look for our deterministic Message-ID in the store's Sent folder (providers such as Gmail and
Microsoft 365 file SMTP-submitted mail there): found means sent; not found means the reply is
held for a person to review. We never send in doubt, so a customer never receives two replies.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

from worker import compose, loops, mime, privacy, spam, validate
from worker.config import DEFAULTS, Settings
from worker.db import Database
from worker.errors import CircuitOpenError, PermanentError, TransientError, WorkerError
from worker.responder import (
    Classification,
    EmailFacts,
    OrderFacts,
    Responder,
    StoreVoice,
)
from worker.runs import Budget
from worker.smtp import SendInDoubtError

log = logging.getLogger(__name__)

JOB_TYPE = "process_email"
DEFAULT_DEFER_SECONDS = 60  # when an open breaker gives no hint of its cool-down
IDLE_WAIT_SECONDS = 1.0  # how long the run loop waits for a finishing job before re-claiming
SECRETS_TTL_SECONDS = 60.0  # a run re-reads a store's secrets at most this often
# How long a breaker this process saw closed is trusted without asking the database. Our own
# failures drop the entry at once; another container's failures or a breaker it opened are seen
# at most this late. Without it, every email paid 6 of its ~15 database round trips here.
BREAKER_TTL_SECONDS = 1.0

# Intents for which looking up orders helps the answer; others never touch Shopify.
ORDER_INTENTS = frozenset(
    {"order_status", "shipping_delay", "return_refund", "cancellation", "complaint"}
)
# Intents that always go to a person as a draft (angry customers deserve a human).
HUMAN_INTENTS = frozenset({"complaint"})


class OrderLookup(Protocol):
    """What the pipeline asks of a shop (worker.shopify.ShopifyClient)."""

    def recent_orders_for_email(self, email: str, limit: int = 5) -> list[OrderFacts]: ...
    def order_by_number(self, number: str) -> OrderFacts | None: ...


@dataclass(frozen=True)
class MailIO:
    """The store-facing mail edges: SMTP delivery and the Sent-folder lookup."""

    send: Callable[[EmailMessage, Mapping[str, Any], Mapping[str, Any]], object]
    sent_folder_has: Callable[[Mapping[str, Any], Mapping[str, Any], str], bool]


@dataclass(frozen=True)
class ProcessOptions:
    """Tuning for one process run; the defaults are Settings' (tests override single fields)."""

    concurrency: int = DEFAULTS.process_concurrency
    lease_seconds: int = DEFAULTS.lease_seconds
    heartbeat_seconds: float | None = None  # default: a third of the lease
    reply_cap_per_customer: int = DEFAULTS.reply_cap_per_customer
    reply_cap_window_hours: int = DEFAULTS.reply_cap_window_hours
    max_message_bytes: int = DEFAULTS.max_message_bytes
    min_confidence: float = 0.6  # not a setting: below it a reply waits for a person
    job_types: tuple[str, ...] = (JOB_TYPE,)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProcessOptions:
        """Process tuning from Settings."""
        return cls(
            concurrency=settings.process_concurrency,
            lease_seconds=settings.lease_seconds,
            reply_cap_per_customer=settings.reply_cap_per_customer,
            reply_cap_window_hours=settings.reply_cap_window_hours,
            max_message_bytes=settings.max_message_bytes,
        )


@dataclass
class Services:
    """Everything a job talks to, passed in so tests and the benchmark can swap any of it."""

    db: Database
    responder: Responder
    mail: MailIO
    shop_for: Callable[[Mapping[str, Any], Mapping[str, Any]], OrderLookup | None]
    _secrets: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    _secrets_lock: threading.Lock = field(default_factory=threading.Lock)
    _closed_at: dict[str, float] = field(default_factory=dict)  # service -> when seen closed

    def secrets(self, store_id: str) -> dict[str, Any]:
        """The store's credentials, cached briefly so a busy store costs one Vault read a minute."""
        now = time.monotonic()
        with self._secrets_lock:
            cached = self._secrets.get(store_id)
            if cached and now - cached[0] < SECRETS_TTL_SECONDS:
                return cached[1]
        value = self.db.get_store_secrets(store_id)
        with self._secrets_lock:
            self._secrets[store_id] = (now, value)
        return value

    def _recently_closed(self, service: str) -> bool:
        seen = self._closed_at.get(service)
        return seen is not None and time.monotonic() - seen < BREAKER_TTL_SECONDS

    def circuit_allow(self, service: str) -> bool:
        """Whether the service's breaker lets a call through (closed: answered from memory)."""
        if self._recently_closed(service):
            return True
        return self.db.circuit_allow(service)

    def circuit_record(self, service: str, success: bool) -> None:
        """Count a call's outcome; a success on a breaker we just saw clean costs nothing."""
        if success and self._recently_closed(service):
            # The database would only read the row and answer 'closed' (no failure since).
            return
        self._closed_at.pop(service, None)
        state = self.db.circuit_record(service, success)
        if success and state == "closed":
            self._closed_at[service] = time.monotonic()


class JobDone(Exception):
    """Ends a job early with an outcome (skipped, spam, no_credits, held ...)."""

    def __init__(self, outcome: str, **detail: Any) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.detail = detail


@dataclass
class JobTrace:
    """The events and timings of one job, written in one call when the job ends."""

    job: Mapping[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    timings_ms: dict[str, int] = field(default_factory=dict)
    message_id: str | None = None

    def event(self, event_type: str, **detail: Any) -> None:
        self.events.append(
            {
                "store_id": self.job.get("store_id"),
                "job_id": self.job["id"],
                "conversation_id": self.job.get("conversation_id"),
                "message_id": self.message_id,
                "event_type": event_type,
                "detail": detail,
            }
        )

    def timed(self, name: str) -> _Timer:
        return _Timer(self.timings_ms, name)


class _Timer:
    def __init__(self, sink: dict[str, int], name: str) -> None:
        self.sink, self.name = sink, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.sink[self.name] = round((time.perf_counter() - self.start) * 1000)


# --- one job -------------------------------------------------------------------------------


def store_addresses(store: Mapping[str, Any]) -> list[str]:
    """Every address that belongs to the store (its own mail is never answered)."""
    addresses = [str(store.get("support_email") or "")]
    addresses += [str(a) for a in store.get("extra_addresses") or []]
    return [a.lower() for a in addresses if a]


def hold_reason(
    classification: Classification,
    draft_hold: str | None,
    store: Mapping[str, Any],
    min_confidence: float,
) -> str | None:
    """Why a reply must wait for a person instead of being sent, or None to send it."""
    if store.get("reply_mode") == "draft_only":
        return "draft_only"
    if classification.needs_human:
        return "needs_human"
    if classification.intent in HUMAN_INTENTS:
        return classification.intent
    if classification.confidence < min_confidence:
        return "low_confidence"
    return draft_hold


def wants_orders(classification: Classification) -> bool:
    """Whether order data can help answer this email."""
    return classification.intent in ORDER_INTENTS or bool(classification.order_numbers)


def guarded(services: Services, service: str, call: Callable[[], Any]) -> Any:
    """Run one call to an outside service behind its circuit breaker."""
    if not services.circuit_allow(service):
        raise CircuitOpenError(service)
    try:
        result = call()
    except TransientError:
        services.circuit_record(service, False)
        raise
    except PermanentError as exc:
        # A bad request is this job's problem, not an outage; refused credentials repeat on
        # every call, so only they count against the breaker.
        services.circuit_record(service, not exc.is_auth_failure)
        raise
    services.circuit_record(service, True)
    return result


def lookup_orders(
    shop: OrderLookup, sender: str, classification: Classification
) -> list[OrderFacts]:
    """Orders the customer mentioned, else their recent ones; `privacy` filters them after.

    The fallback to recent orders depends on whether a mentioned order is the sender's own, not
    on whether it exists: otherwise someone else's number (no fallback, a neutral reply) and an
    unknown one (fallback, the sender's orders) would get different answers, which tells a
    prober that the number exists.
    """
    found: list[OrderFacts] = []
    for number in classification.order_numbers[:3]:
        order = shop.order_by_number(number)
        if order is not None:
            found.append(order)
    if not any(privacy.order_belongs_to(order, sender) for order in found):
        found += shop.recent_orders_for_email(sender, limit=5)
    return found


def handle_job(
    job: Mapping[str, Any],
    services: Services,
    options: ProcessOptions,
    worker_id: str,
    trace: JobTrace,
) -> dict[str, Any]:
    """Run every step of one job and return its result summary (the job is completed inside)."""
    db = services.db
    job_id = str(job["id"])
    with trace.timed("load"):
        ctx = db.load_job_context(job_id, options.reply_cap_window_hours)
    if ctx is None or not ctx.get("message") or not ctx.get("store"):
        # The message or its store was deleted after the job was queued: nothing to answer.
        raise JobDone("skipped", reason="message_gone")
    message, store = ctx["message"], ctx["store"]
    trace.message_id = str(message["id"])
    existing = ctx.get("reply")
    if existing:
        return resume_reply(existing, job, store, services, worker_id, trace)

    if store.get("active") is False:
        # Deactivating a store stops its automation at once, also for mail already queued.
        raise JobDone("skipped", reason="store_inactive")
    email = mime.ParsedEmail.from_row(message)
    own = store_addresses(store)
    if message.get("skip_reason"):
        raise JobDone("skipped", reason=str(message["skip_reason"]))
    reason = validate.validate_inbound(
        email, store_addresses=own, max_bytes=options.max_message_bytes
    )
    if reason:
        raise JobDone("skipped", reason=reason)
    reason = loops.auto_reply_reason(email, store_addresses=own)
    if reason:
        raise JobDone("skipped", reason=reason)
    if loops.reply_cap_reached(int(ctx.get("recent_replies") or 0), options.reply_cap_per_customer):
        raise JobDone("skipped", reason="reply_cap")
    verdict = spam.spam_verdict(email)
    if verdict.is_spam:
        raise JobDone("spam", reasons=list(verdict.reasons), score=verdict.score)
    trace.event("process.validated")

    facts = EmailFacts(
        sender=email.from_address or "",
        subject=email.subject or "",
        body=email.body_text or "",
    )
    with trace.timed("classify"):
        classification = guarded(services, "claude", lambda: services.responder.classify(facts))
    trace.event(
        "process.classified",
        intent=classification.intent,
        language=classification.language,
        sentiment=classification.sentiment,
        needs_human=classification.needs_human,
        confidence=classification.confidence,
        model=services.responder.model,
    )
    if classification.is_spam:
        raise JobDone("spam", reasons=["classifier"], intent=classification.intent)

    to_address, orders = find_orders(email, classification, store, services, trace)

    credit = db.reserve_credit(str(store["id"]), job_id)
    if credit == "no_credits":
        trace.event("process.no_credits")
        raise JobDone("no_credits", intent=classification.intent)

    voice = StoreVoice.from_store_row(store)
    with trace.timed("draft"):
        draft = guarded(
            services,
            "claude",
            lambda: services.responder.draft(facts, classification, orders, voice),
        )
    hold = hold_reason(classification, draft.hold_reason, store, options.min_confidence)
    trace.event("process.drafted", language=draft.language, model=draft.model, hold=hold)

    domain = str(store["support_email"]).rpartition("@")[2] or "localhost"
    reply = db.save_reply(
        job_id,
        str(message["id"]),
        {
            "to_address": to_address,
            "subject": compose.reply_subject(email.subject or ""),
            "body_text": draft.body_text,
            "smtp_message_id": compose.reply_message_id(job_id, domain),
            "in_reply_to": email.message_id,
            "references": compose.thread_references(email.references, email.message_id),
            "hold": hold is not None,
            "hold_reason": hold,
            "intent": classification.intent,
            "language": draft.language,
            "model": draft.model,
        },
    )
    return resume_reply(
        reply, job, store, services, worker_id, trace, intent=classification.intent, credit=credit
    )


def find_orders(
    email: mime.ParsedEmail,
    classification: Classification,
    store: Mapping[str, Any],
    services: Services,
    trace: JobTrace,
) -> tuple[str, list[OrderFacts]]:
    """The reply's recipient and the orders it may mention (privacy rules applied)."""
    sender = email.from_address or ""
    orders: list[OrderFacts] = []
    if store.get("shopify_domain") and wants_orders(classification):
        shop = services.shop_for(store, services.secrets(str(store["id"])))
        if shop is not None:
            service = f"shopify:{store['id']}"
            with trace.timed("shopify"):
                found = guarded(
                    services, service, lambda: lookup_orders(shop, sender, classification)
                )
            orders = privacy.disclosable_orders(sender, found)
            trace.event("process.shopify_lookup", found=len(found), disclosed=len(orders))
    to_address, include_orders = privacy.reply_recipient(sender, email.reply_to, bool(orders))
    return to_address, orders if include_orders else []


def resume_reply(
    reply: Mapping[str, Any],
    job: Mapping[str, Any],
    store: Mapping[str, Any],
    services: Services,
    worker_id: str,
    trace: JobTrace,
    *,
    intent: str | None = None,
    credit: str | None = None,
) -> dict[str, Any]:
    """Take a reply row to its end state from wherever an earlier attempt left it."""
    db = services.db
    job_id, reply_id = str(job["id"]), str(reply["id"])
    result = {"reply_id": reply_id, "intent": intent or reply.get("intent"), "credit": credit}
    status = reply["status"]
    if status == "held":
        raise JobDone("held", hold_reason=reply.get("hold_reason"), **result)
    if status == "sent":
        raise JobDone("replied", already_sent=True, **result)
    if status == "failed":
        raise JobDone("failed", error=reply.get("error"), **result)

    secrets = services.secrets(str(store["id"]))
    smtp_service = f"smtp:{store['id']}"
    if status == "sending":
        return resolve_in_doubt(reply, job, store, secrets, services, worker_id, trace, result)

    if not services.circuit_allow(smtp_service):
        raise CircuitOpenError(smtp_service)
    gate = db.begin_send(reply_id)
    if gate == "already_sent":
        raise JobDone("replied", already_sent=True, **result)
    if gate == "in_doubt":
        return resolve_in_doubt(reply, job, store, secrets, services, worker_id, trace, result)
    if gate == "held":
        raise JobDone("held", hold_reason=reply.get("hold_reason"), **result)
    if gate != "ok":
        raise JobDone("failed", error=f"reply is {gate}", **result)

    message = compose.build_reply(
        from_address=str(store["support_email"]),
        from_name=str(store.get("name") or ""),
        to_address=str(reply["to_address"]),
        original_subject=str(reply["subject"]),
        in_reply_to=reply.get("in_reply_to"),
        references=list(reply.get("references") or []),
        body_text=str(reply["body_text"]),
        message_id=str(reply["smtp_message_id"]),
    )
    try:
        with trace.timed("smtp"):
            services.mail.send(message, store, secrets)
    except WorkerError as exc:
        services.circuit_record(smtp_service, exc.error_type == "permanent")
        if isinstance(exc, SendInDoubtError):
            # The connection died after DATA: the server may have taken it. Stay `sending`; the
            # retry resolves it through the Sent folder instead of risking a second reply.
            raise
        if exc.error_type == "permanent":
            db.reset_reply(reply_id, "failed", str(exc))
            db.release_credit(str(store["id"]), job_id, "send_failed")
        else:
            db.reset_reply(reply_id, "drafted", str(exc))
        raise
    services.circuit_record(smtp_service, True)
    summary = finish(trace, "replied", **result)
    if not db.finish_send(reply_id, job_id, worker_id, summary):
        log.warning(
            "job %s: reply sent but the lease was lost; the reply is recorded as sent", job_id
        )
    return summary


def resolve_in_doubt(
    reply: Mapping[str, Any],
    job: Mapping[str, Any],
    store: Mapping[str, Any],
    secrets: Mapping[str, Any],
    services: Services,
    worker_id: str,
    trace: JobTrace,
    result: dict[str, Any],
) -> dict[str, Any]:
    """A reply left `sending` by a dead worker: sent if the Sent folder has it, else held."""
    db = services.db
    reply_id, job_id = str(reply["id"]), str(job["id"])
    found = services.mail.sent_folder_has(store, secrets, str(reply["smtp_message_id"]))
    if found:
        trace.event("process.in_doubt_resolved", found_in="sent_folder")
        summary = finish(trace, "replied", in_doubt_resolved="sent_folder", **result)
        db.finish_send(reply_id, job_id, worker_id, summary)
        return summary
    db.reset_reply(reply_id, "held", "delivery_in_doubt")
    raise JobDone("held", hold_reason="delivery_in_doubt", **result)


def finish(trace: JobTrace, outcome: str, **detail: Any) -> dict[str, Any]:
    """The job's result summary as stored by complete_job."""
    return {
        "outcome": outcome,
        **{k: v for k, v in detail.items() if v is not None},
        "timings_ms": dict(trace.timings_ms),
    }


def refund_unsent(job: Mapping[str, Any], services: Services) -> None:
    """Give back the credit of a dead-lettered job whose reply never left.

    The credit is taken before drafting, so a draft the model rejects (400) or a reply that
    never got past `drafted` would otherwise be paid for with nothing sent. A reply found
    `sending` or `sent` may have reached the customer and stays charged. Rare path: the extra
    round trip is paid only on dead-lettering.
    """
    db, job_id = services.db, str(job["id"])
    try:
        ctx = db.load_job_context(job_id) or {}
        reply = ctx.get("reply")
        if reply and reply.get("status") in ("sending", "sent"):
            return
        store_id = job.get("store_id") or (ctx.get("store") or {}).get("id")
        if store_id:
            db.release_credit(str(store_id), job_id, "dead_lettered")
    except WorkerError:
        log.exception("job %s: could not refund its credit", job_id)


def run_job(
    job: Mapping[str, Any], services: Services, options: ProcessOptions, worker_id: str
) -> str:
    """Process one claimed job and settle it in the queue; returns its outcome."""
    db = services.db
    job_id = str(job["id"])
    trace = JobTrace(job)
    started = time.perf_counter()
    try:
        try:
            summary = handle_job(job, services, options, worker_id, trace)
            outcome = str(summary["outcome"])
        except JobDone as done:
            outcome = done.outcome
            event = {"skipped": "process.skipped", "spam": "process.spam", "held": "process.held"}
            if outcome in event:
                trace.event(
                    event[outcome], **{k: v for k, v in done.detail.items() if k != "timings_ms"}
                )
            summary = finish(trace, outcome, **done.detail)
            db.complete_job(job_id, worker_id, summary)
        except CircuitOpenError as exc:
            outcome = "deferred"
            delay = exc.retry_after_seconds or DEFAULT_DEFER_SECONDS
            db.defer_job(job_id, worker_id, delay, str(exc))
        except WorkerError as exc:
            outcome = f"failed_{exc.error_type}"
            retry_after = exc.retry_after_seconds if isinstance(exc, TransientError) else None
            status = db.fail_job(job_id, worker_id, str(exc), exc.error_type, retry_after)
            if status == "dead_letter":
                refund_unsent(job, services)
        except Exception as exc:
            # A bug, not an outage: retried a bounded number of times, then dead-lettered.
            log.exception("job %s failed unexpectedly", job_id)
            outcome = "failed_unexpected"
            status = db.fail_job(job_id, worker_id, f"unexpected: {exc!r}", "transient", None)
            if status == "dead_letter":
                refund_unsent(job, services)
    finally:
        if trace.events:
            try:
                db.record_events(trace.events)
            except WorkerError:
                log.exception("job %s: could not record its events", job_id)
    log.debug("job %s -> %s in %.0f ms", job_id, outcome, (time.perf_counter() - started) * 1000)
    return outcome


# --- the run -------------------------------------------------------------------------------


def new_worker_id(run_id: str | None = None) -> str:
    """A worker id unique per process and run, readable in the DLQ tool."""
    return f"{socket.gethostname()}:{os.getpid()}:{run_id or time.time_ns()}"


class Heartbeat:
    """Renews the leases of in-flight jobs so a long job is never reclaimed under our feet."""

    def __init__(
        self, db: Database, worker_id: str, lease_seconds: int, every_seconds: float
    ) -> None:
        self.db, self.worker_id = db, worker_id
        self.lease_seconds, self.every = lease_seconds, every_seconds
        self.job_ids: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="lease-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def add(self, job_id: str) -> None:
        with self.lock:
            self.job_ids.add(job_id)

    def discard(self, job_id: str) -> None:
        with self.lock:
            self.job_ids.discard(job_id)

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            with self.lock:
                ids = sorted(self.job_ids)
            if not ids:
                continue
            try:
                self.db.extend_lease(self.worker_id, ids, self.lease_seconds)
            except WorkerError:
                log.exception("lease heartbeat failed; will retry")


def run_process(
    services: Services,
    budget: Budget,
    *,
    options: ProcessOptions | None = None,
    worker_id: str | None = None,
) -> dict[str, Any]:
    """One process-queue run: drain due jobs within the budget; returns the run summary."""
    options = options or ProcessOptions()
    worker_id = worker_id or new_worker_id()
    db = services.db
    outcomes: dict[str, int] = {}
    claimed = 0
    started = time.monotonic()
    in_flight: dict[Future[str], str] = {}
    heartbeat_every = options.heartbeat_seconds or max(1.0, options.lease_seconds / 3)

    with (
        ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="job") as pool,
        Heartbeat(db, worker_id, options.lease_seconds, heartbeat_every) as heartbeat,
    ):
        while True:
            free = options.concurrency - len(in_flight)
            got = 0
            if free > 0 and not budget.expired():
                jobs = db.dequeue_jobs(
                    worker_id, free, options.lease_seconds, list(options.job_types)
                )
                got = len(jobs)
                claimed += got
                for job in jobs:
                    heartbeat.add(str(job["id"]))
                    in_flight[pool.submit(run_job, job, services, options, worker_id)] = str(
                        job["id"]
                    )
            if not in_flight:
                if got == 0 or budget.expired():
                    break
                continue
            # A full pool, an empty claim or a spent budget: wait for a job to finish (which may
            # also unblock another job of the same conversation) before claiming again.
            if free - got <= 0 or got == 0 or budget.expired():
                done, _ = wait(in_flight, timeout=IDLE_WAIT_SECONDS, return_when=FIRST_COMPLETED)
                for future in done:
                    heartbeat.discard(in_flight.pop(future))
                    outcome = future.result()
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1

    return {
        "worker_id": worker_id,
        "claimed": claimed,
        "outcomes": outcomes,
        "processed": sum(outcomes.values()),
        "duration_seconds": round(time.monotonic() - started, 3),
        "budget_expired": budget.expired(),
    }
