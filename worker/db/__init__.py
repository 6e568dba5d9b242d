"""The worker's one database interface: a typed method per SQL function of docs/design.md.

Methods carry the SQL argument names without the `p_` prefix. An optional argument left as None
is not sent at all, so the SQL default applies (the defaults live in the migrations, not here).
Results come back normalised the same way whichever backend carries them: ids as str,
timestamps as aware UTC datetimes, jsonb as Python objects, rows as dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from worker import pg_text
from worker.db.types import (
    Row,
    Transport,
    is_null_row,
    normalize_row,
    normalize_value,
)
from worker.errors import ConfigError, DatabaseConstraintError

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["Database", "Row", "Transport", "connect"]

FailStatus = Literal["pending", "dead_letter"]
CreditReservation = Literal["reserved", "already_reserved", "no_credits"]
ReplyReservation = Literal[
    "reserved", "already_reserved", "no_credits", "reply_cap", "rate_limited"
]
SendGate = Literal["ok", "already_sent", "in_doubt", "held", "failed", "superseded"]
CreditWait = Literal["waiting", "has_credits", "not_held"]

# Nested rows inside load_job_context's jsonb, normalised like rows so callers see one type per
# column whichever function returned it.
_CONTEXT_ROWS = ("job", "message", "store", "conversation", "reply")


def _args(required: Mapping[str, Any], optional: Mapping[str, Any] | None = None) -> dict[str, Any]:
    # Every argument passes here, so no string Postgres would reject (a NUL from hostile mail, a
    # lone surrogate) can fail a call, whichever field it hides in.
    args = {f"p_{name}": pg_text.clean_value(value) for name, value in required.items()}
    if optional:
        args.update(
            {f"p_{name}": pg_text.clean_value(v) for name, v in optional.items() if v is not None}
        )
    return args


class Database:
    """Typed calls to the SQL API over any Transport (psycopg pool or PostgREST RPC)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._convert_rows = not getattr(transport, "returns_common_types", False)

    def close(self) -> None:
        """Release the backend's connections."""
        self.transport.close()

    def ping(self) -> None:
        """Raise DatabaseError unless the database answers (for /readyz)."""
        self.transport.ping()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _scalar(self, fn: str, args: dict[str, Any]) -> Any:
        return normalize_value(self.transport.call(fn, args, "scalar"))

    def _rows(self, fn: str, args: dict[str, Any]) -> list[Row]:
        rows = self.transport.call(fn, args, "rows") or []
        if not self._convert_rows:
            return cast(list[Row], rows)
        return [normalize_row(row) for row in rows]

    def _first(self, fn: str, args: dict[str, Any]) -> Row | None:
        rows = self._rows(fn, args)
        return rows[0] if rows else None

    def _row(self, fn: str, args: dict[str, Any]) -> Row | None:
        row = self.transport.call(fn, args, "row")
        if is_null_row(row):
            return None
        return normalize_row(row) if self._convert_rows else dict(row)

    def _void(self, fn: str, args: dict[str, Any]) -> None:
        self.transport.call(fn, args, "void")

    def _required_row(self, fn: str, args: dict[str, Any]) -> Row:
        row = self._row(fn, args)
        if row is None:
            # The function's contract is "always a row"; NULL means a bug, not a retryable blip.
            raise DatabaseConstraintError(f"{fn}: returned no row")
        return row

    # -- queue ------------------------------------------------------------------------------

    def enqueue_job(
        self,
        job_type: str,
        payload: Any,
        idempotency_key: str | None = None,
        store_id: str | None = None,
        conversation_id: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
    ) -> str:
        """Enqueue a job; the same idempotency key returns the first job's id."""
        args = _args(
            {"job_type": job_type, "payload": payload},
            {
                "idempotency_key": idempotency_key,
                "store_id": store_id,
                "conversation_id": conversation_id,
                "priority": priority,
                "run_at": run_at,
                "max_attempts": max_attempts,
            },
        )
        return cast(str, self._scalar("enqueue_job", args))

    def enqueue_jobs(self, jobs: Sequence[Mapping[str, Any]]) -> list[str]:
        """Enqueue many jobs in one call; ids in input order (enqueue_job's rules per job).

        Each job is a mapping with enqueue_job's argument names (job_type required).
        """
        elements = [
            {
                key: value.isoformat() if isinstance(value, datetime) else value
                for key, value in job.items()
                if value is not None
            }
            for job in jobs
        ]
        return cast(
            list[str], self._scalar("enqueue_jobs", {"p_jobs": pg_text.clean_value(elements)})
        )

    def dequeue_jobs(
        self,
        worker_id: str,
        batch_size: int | None = None,
        lease_seconds: int | None = None,
        job_types: Sequence[str] | None = None,
    ) -> list[Row]:
        """Claim up to batch_size due jobs for worker_id (rows of job_queue)."""
        args = _args(
            {"worker_id": worker_id},
            {
                "batch_size": batch_size,
                "lease_seconds": lease_seconds,
                "job_types": None if job_types is None else list(job_types),
            },
        )
        return self._rows("dequeue_jobs", args)

    def extend_lease(
        self, worker_id: str, job_ids: Sequence[str], lease_seconds: int | None = None
    ) -> int:
        """Heartbeat: extend the leases worker_id still holds; returns how many."""
        args = _args(
            {"worker_id": worker_id, "job_ids": list(job_ids)}, {"lease_seconds": lease_seconds}
        )
        return cast(int, self._scalar("extend_lease", args))

    def complete_job(self, job_id: str, worker_id: str, result: Any = None) -> bool:
        """Mark a held job completed; False when worker_id no longer holds the lease."""
        args = _args({"job_id": job_id, "worker_id": worker_id}, {"result": result})
        return cast(bool, self._scalar("complete_job", args))

    def complete_jobs(
        self, worker_id: str, job_ids: Sequence[str], results: Sequence[Any] | None = None
    ) -> int:
        """Batch ack; results (if given) align with job_ids. Returns how many completed."""
        args = _args(
            {"worker_id": worker_id, "job_ids": list(job_ids)},
            {"results": None if results is None else list(results)},
        )
        return cast(int, self._scalar("complete_jobs", args))

    def fail_job(
        self,
        job_id: str,
        worker_id: str,
        error: str,
        error_type: Literal["transient", "permanent"] | None = None,
        retry_after_seconds: int | None = None,
    ) -> FailStatus | None:
        """Record a failure; the job's new status, or None when worker_id lost the lease."""
        args = _args(
            {"job_id": job_id, "worker_id": worker_id, "error": error},
            {"error_type": error_type, "retry_after_seconds": retry_after_seconds},
        )
        return cast(FailStatus | None, self._scalar("fail_job", args))

    def defer_job(self, job_id: str, worker_id: str, delay_seconds: int, reason: str) -> bool:
        """Put a held job back to pending later without spending an attempt."""
        args = _args(
            {
                "job_id": job_id,
                "worker_id": worker_id,
                "delay_seconds": delay_seconds,
                "reason": reason,
            }
        )
        return cast(bool, self._scalar("defer_job", args))

    def requeue_dlq_job(self, job_id: str, reset_attempts: bool | None = None) -> bool:
        """Move a dead-lettered job back to pending now; False if it is not dead-lettered."""
        args = _args({"job_id": job_id}, {"reset_attempts": reset_attempts})
        return cast(bool, self._scalar("requeue_dlq_job", args))

    def try_lock_conversation(self, conversation_id: str) -> bool:
        """The claim's transaction-scoped advisory lock (released when this call returns)."""
        return cast(
            bool,
            self._scalar("try_lock_conversation", _args({"conversation_id": conversation_id})),
        )

    def circuit_allow(self, service: str) -> bool:
        """Whether the service's breaker lets a call through now."""
        return cast(bool, self._scalar("circuit_allow", _args({"service": service})))

    def circuit_record(self, service: str, success: bool) -> str:
        """Record a call's outcome; returns the breaker's state afterwards."""
        args = _args({"service": service, "success": success})
        return cast(str, self._scalar("circuit_record", args))

    def circuit_wait_seconds(self, service: str) -> int:
        """Seconds until the service's breaker lets a call through again (at least 1)."""
        return int(self._scalar("circuit_wait_seconds", _args({"service": service})))

    def aggregate_queue_metrics(self) -> None:
        """Write this window's queue_metrics rows."""
        self._void("aggregate_queue_metrics", {})

    # -- dead-letter queue and operations ---------------------------------------------------

    def list_dead_letter_jobs(
        self,
        store_id: str | None = None,
        job_type: str | None = None,
        error_type: str | None = None,
        min_age_seconds: int | None = None,
        limit: int | None = None,
    ) -> list[Row]:
        """Dead-lettered jobs, newest first, optionally filtered."""
        args = _args(
            {},
            {
                "store_id": store_id,
                "job_type": job_type,
                "error_type": error_type,
                "min_age_seconds": min_age_seconds,
                "limit": limit,
            },
        )
        return self._rows("list_dead_letter_jobs", args)

    def get_job(self, job_id: str) -> Row | None:
        """The job_queue row, or None."""
        return self._first("get_job", _args({"job_id": job_id}))

    def get_job_events(self, job_id: str) -> list[Row]:
        """The job's events, oldest first."""
        return self._rows("get_job_events", _args({"job_id": job_id}))

    def purge_dead_letter_jobs(self, job_ids: Sequence[str]) -> int:
        """Delete the given dead-lettered jobs; returns how many."""
        return cast(int, self._scalar("purge_dead_letter_jobs", _args({"job_ids": list(job_ids)})))

    def queue_stats(self) -> dict[str, Any]:
        """Counts by type and status, oldest due age and breaker states (for /metrics)."""
        return cast(dict[str, Any], self._scalar("queue_stats", {}))

    def model_usage_stats(self, hours: int = 1) -> list[dict[str, Any]]:
        """Model tokens and calls of the last `hours`, per model (for /metrics)."""
        return cast(
            list[dict[str, Any]], self._scalar("model_usage_stats", _args({"hours": hours}))
        )

    def deployment_report(self, worker_secret_sha256: str | None = None) -> dict[str, Any]:
        """Applied migrations, cron jobs, Vault's worker_url and whether worker_secret matches."""
        args = _args({}, {"worker_secret_sha256": worker_secret_sha256})
        return cast(dict[str, Any], self._scalar("deployment_report", args))

    # -- ingestion --------------------------------------------------------------------------

    def list_active_stores(self) -> list[Row]:
        """Every active store (rows of stores)."""
        return self._rows("list_active_stores", {})

    def list_stores(self, include_inactive: bool = False) -> list[Row]:
        """Stores for the operator's listing; inactive ones too when asked."""
        return self._rows("list_stores", _args({"include_inactive": include_inactive}))

    def get_store(self, store_id: str) -> Row | None:
        """The stores row, or None."""
        return self._first("get_store", _args({"store_id": store_id}))

    def get_store_secrets(self, store_id: str) -> dict[str, Any]:
        """The store's imap_password, smtp_password and shopify_token from Vault."""
        return cast(
            dict[str, Any], self._scalar("get_store_secrets", _args({"store_id": store_id}))
        )

    def get_mailbox_state(self, store_id: str, folder: str) -> Row | None:
        """The folder's UIDVALIDITY and last UID, or None before the first fetch."""
        return self._first("get_mailbox_state", _args({"store_id": store_id, "folder": folder}))

    def ingest_messages(
        self,
        store_id: str,
        folder: str,
        uidvalidity: int,
        last_uid: int,
        messages: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        """Store parsed messages, enqueue their jobs and advance the mailbox state at once."""
        args = _args(
            {
                "store_id": store_id,
                "folder": folder,
                "uidvalidity": uidvalidity,
                "last_uid": last_uid,
                "messages": [dict(message) for message in messages],
            }
        )
        return cast(dict[str, Any], self._scalar("ingest_messages", args))

    # -- fetching as jobs (issue 14, decision 0021) ------------------------------------------

    def enqueue_fetch_jobs(self, store_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """One fetch_mailbox job per active store (of store_ids, when given) that has none live;
        {"stores", "enqueued", "rerun", "job_ids"}."""
        args = _args({}, {"store_ids": None if store_ids is None else list(store_ids)})
        return cast(dict[str, Any], self._scalar("enqueue_fetch_jobs", args))

    def finish_fetch_job(
        self,
        job_id: str,
        worker_id: str,
        result: Mapping[str, Any],
        more: bool,
        idle: bool = False,
    ) -> dict[str, Any]:
        """Complete a held fetch job (delete it when `idle`: it found nothing) and, when mail is
        waiting (or a tick came meanwhile), enqueue the store's next one;
        {"completed", "follow_up", "reason", "kept"}."""
        args = _args(
            {
                "job_id": job_id,
                "worker_id": worker_id,
                "result": dict(result),
                "more": more,
                "idle": idle,
            }
        )
        return cast(dict[str, Any], self._scalar("finish_fetch_job", args))

    def record_events(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Append events; returns how many were written."""
        args = _args({"events": [dict(event) for event in events]})
        return cast(int, self._scalar("record_events", args))

    # -- processing -------------------------------------------------------------------------

    def load_job_context(
        self, job_id: str, reply_window_hours: int | None = None
    ) -> dict[str, Any] | None:
        """Job, message, store, conversation, existing reply and recent reply count."""
        args = _args({"job_id": job_id}, {"reply_window_hours": reply_window_hours})
        context = self._scalar("load_job_context", args)
        if context is None:
            return None
        result = dict(context)
        for key in _CONTEXT_ROWS:
            if isinstance(result.get(key), dict):
                result[key] = normalize_row(result[key])
        return result

    def reserve_credit(self, store_id: str, job_id: str) -> CreditReservation:
        """Take one credit for this job (idempotent per job)."""
        args = _args({"store_id": store_id, "job_id": job_id})
        return cast(CreditReservation, self._scalar("reserve_credit", args))

    def reserve_reply(
        self,
        store_id: str,
        job_id: str,
        recipient: str,
        *,
        cap: int | None,
        window_hours: int,
        per_hour: int | None,
    ) -> ReplyReservation:
        """Take one credit for this job's reply unless the recipient's cap or the store's hourly
        rate is reached (atomic per store; idempotent per job)."""
        args = _args(
            {
                "store_id": store_id,
                "job_id": job_id,
                "sender": recipient,
                "cap": cap,
                "window_hours": window_hours,
                "per_hour": per_hour,
            }
        )
        return cast(ReplyReservation, self._scalar("reserve_reply", args))

    def wait_for_credits(self, job_id: str, worker_id: str, wait_seconds: int) -> CreditWait:
        """Defer the job until its store has credits (woken by a top-up); 'has_credits' when it
        has them after all, 'not_held' when this worker no longer holds the job."""
        args = _args({"job_id": job_id, "worker_id": worker_id, "wait_seconds": wait_seconds})
        return cast(CreditWait, self._scalar("wait_for_credits", args))

    def release_credit(self, store_id: str, job_id: str, reason: str) -> bool:
        """Refund the job's reserved credit once."""
        args = _args({"store_id": store_id, "job_id": job_id, "reason": reason})
        return cast(bool, self._scalar("release_credit", args))

    def save_reply(self, job_id: str, message_id: str, reply: Mapping[str, Any]) -> Row:
        """Save the drafted reply, or return the existing one for that message unchanged."""
        args = _args({"job_id": job_id, "message_id": message_id, "reply": dict(reply)})
        return self._required_row("save_reply", args)

    def begin_send(self, reply_id: str) -> SendGate:
        """Move drafted -> sending; otherwise say why sending must not happen."""
        return cast(SendGate, self._scalar("begin_send", _args({"reply_id": reply_id})))

    def finish_send(self, reply_id: str, job_id: str, worker_id: str, result: Any = None) -> bool:
        """Mark the reply sent and complete the job in one transaction."""
        args = _args(
            {"reply_id": reply_id, "job_id": job_id, "worker_id": worker_id, "result": result}
        )
        return cast(bool, self._scalar("finish_send", args))

    def reset_reply(
        self, reply_id: str, status: Literal["drafted", "failed", "held"], error: str | None
    ) -> bool:
        """sending -> drafted (surely not sent), failed, or held (in doubt: a person decides)."""
        args = _args({"reply_id": reply_id, "status": status, "error": error})
        return cast(bool, self._scalar("reset_reply", args))

    # -- store administration ---------------------------------------------------------------

    def admin_create_store(self, store: Mapping[str, Any], secrets: Mapping[str, Any]) -> str:
        """Create a store, its secrets going straight into Vault; returns its id."""
        args = _args({"store": dict(store), "secrets": dict(secrets)})
        return cast(str, self._scalar("admin_create_store", args))

    def admin_update_store(
        self,
        store_id: str,
        changes: Mapping[str, Any],
        secrets: Mapping[str, Any] | None = None,
    ) -> Row:
        """Apply changes (and replace given secrets); returns the updated stores row."""
        args = _args(
            {"store_id": store_id, "changes": dict(changes)},
            {"secrets": None if secrets is None else dict(secrets)},
        )
        return self._required_row("admin_update_store", args)

    def validate_store_settings(
        self, settings: Mapping[str, Any], store_id: str | None = None
    ) -> list[str]:
        """Every problem with a new store's settings, or with changes to store_id; [] if none."""
        args = _args({"store": dict(settings)}, {"store_id": store_id})
        return [str(p) for p in self._scalar("validate_store_settings", args) or []]

    def admin_add_credits(self, store_id: str, amount: int, reason: str | None = None) -> int:
        """Add (or with a negative amount remove) credits; returns the new balance."""
        args = _args({"store_id": store_id, "amount": amount}, {"reason": reason})
        return cast(int, self._scalar("admin_add_credits", args))

    # -- the store's knowledge (issue 15) ----------------------------------------------------

    def list_knowledge(self, store_id: str) -> list[dict[str, Any]]:
        """A store's knowledge entries, by topic then title."""
        return cast(
            list[dict[str, Any]], self._scalar("list_knowledge", _args({"store_id": store_id}))
        )

    def save_knowledge(
        self, store_id: str, entry: Mapping[str, Any], actor: Mapping[str, Any] | None = None
    ) -> Row:
        """Add an entry, replace the one of the same title, or change the one with entry['id']."""
        args = _args(
            {"store_id": store_id, "entry": dict(entry)},
            {"actor": None if actor is None else dict(actor)},
        )
        return self._required_row("save_knowledge", args)

    def remove_knowledge(
        self, store_id: str, entry_id: str, actor: Mapping[str, Any] | None = None
    ) -> bool:
        """Remove one entry of the store; False when it has none with that id."""
        args = _args(
            {"store_id": store_id, "id": entry_id},
            {"actor": None if actor is None else dict(actor)},
        )
        return bool(self._scalar("remove_knowledge", args))

    def import_knowledge(
        self,
        store_id: str,
        entries: Sequence[Mapping[str, Any]],
        replace: bool = False,
        actor: Mapping[str, Any] | None = None,
    ) -> dict[str, int]:
        """Save many entries in one transaction (replace: remove the others); {saved, removed}."""
        args = _args(
            {"store_id": store_id, "entries": [dict(e) for e in entries], "replace": replace},
            {"actor": None if actor is None else dict(actor)},
        )
        return cast(dict[str, int], self._scalar("import_knowledge", args))

    # -- console (issue 11): called on a person's Database (see as_person) -----------------

    def as_person(self, access_token: str, claims: Mapping[str, Any]) -> Database:
        """This database as a signed-in person: every call runs with role `authenticated` and
        their JWT claims (PostgREST's way), so RLS and the SQL's own checks decide."""
        for_person = getattr(self.transport, "for_person", None)
        if for_person is None:
            raise ConfigError("this database backend cannot run calls as a person")
        return Database(for_person(access_token, claims))

    def console_me(self) -> dict[str, Any]:
        """Who the caller is: user id, email, operator flag and store memberships."""
        return cast(dict[str, Any], self._scalar("console_me", {}))

    def console_stores(self) -> list[dict[str, Any]]:
        """The caller's stores with credits, waiting count, last fetch and last error."""
        return cast(list[dict[str, Any]], self._scalar("console_stores", {}))

    def console_conversations(
        self,
        store_id: str | None = None,
        status: str | None = None,
        q: str | None = None,
        limit: int | None = None,
        before_at: str | None = None,
        before_id: str | None = None,
    ) -> dict[str, Any]:
        """One page of conversations (`items`, and `next` cursor or null)."""
        args = _args(
            {},
            {
                "store_id": store_id,
                "status": status,
                "q": q,
                "limit": limit,
                "before_at": before_at,
                "before_id": before_id,
            },
        )
        return cast(dict[str, Any], self._scalar("console_conversations", args))

    def console_needs_person(
        self, store_id: str | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """Held replies waiting for a person (`items`) and the count per store (`counts`)."""
        args = _args({}, {"store_id": store_id, "limit": limit})
        return cast(dict[str, Any], self._scalar("console_needs_person", args))

    def console_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        """Thread, classification, order lookups and events of one conversation."""
        args = _args({"conversation_id": conversation_id})
        return cast(dict[str, Any] | None, self._scalar("console_conversation", args))

    def console_dead_letters(
        self, store_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Dead-lettered jobs the caller may see, newest first."""
        args = _args({}, {"store_id": store_id, "limit": limit})
        return cast(list[dict[str, Any]], self._scalar("console_dead_letters", args))

    def console_queue_metrics(self, hours: int | None = None) -> dict[str, Any]:
        """Operators: queue_metrics points of the last hours and the breakers."""
        args = _args({}, {"hours": hours})
        return cast(dict[str, Any], self._scalar("console_queue_metrics", args))

    def console_send_reply(self, reply_id: str, body: str | None = None) -> dict[str, Any]:
        """Approve a held reply (optionally edited): drafted + one send_reply job."""
        args = _args({"reply_id": reply_id}, {"body": body})
        return cast(dict[str, Any], self._scalar("console_send_reply", args))

    def console_write_reply(self, conversation_id: str, body: str) -> dict[str, Any]:
        """A reply written by the person to the latest customer message."""
        args = _args({"conversation_id": conversation_id, "body": body})
        return cast(dict[str, Any], self._scalar("console_write_reply", args))

    def console_discard_reply(self, reply_id: str, note: str | None = None) -> dict[str, Any]:
        """Do not send a held reply; its credit comes back."""
        args = _args({"reply_id": reply_id}, {"note": note})
        return cast(dict[str, Any], self._scalar("console_discard_reply", args))

    def console_close_conversation(
        self, conversation_id: str, note: str | None = None
    ) -> dict[str, Any]:
        """Close without replying (held drafts discarded)."""
        args = _args({"conversation_id": conversation_id}, {"note": note})
        return cast(dict[str, Any], self._scalar("console_close_conversation", args))

    def console_requeue_dead_letter(self, job_id: str) -> dict[str, Any]:
        """Requeue a dead letter (operators; owners for their store)."""
        args = _args({"job_id": job_id})
        return cast(dict[str, Any], self._scalar("console_requeue_dead_letter", args))

    def console_purge_dead_letters(self, job_ids: Sequence[str]) -> int:
        """Delete dead letters (operators only); returns how many."""
        args = _args({"job_ids": list(job_ids)})
        return cast(int, self._scalar("console_purge_dead_letters", args))

    def console_update_store(self, store_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change a store's voice (tone, signature, language, reply mode): owners, operators."""
        args = _args({"store_id": store_id, "changes": dict(changes)})
        return cast(dict[str, Any], self._scalar("console_update_store", args))

    def console_knowledge(self, store_id: str) -> dict[str, Any] | None:
        """A store's knowledge page (`store` with the caller's role, `entries`); None if unseen."""
        args = _args({"store_id": store_id})
        return cast(dict[str, Any] | None, self._scalar("console_knowledge", args))

    def console_save_knowledge(self, store_id: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Add or change an entry (owners, operators)."""
        args = _args({"store_id": store_id, "entry": dict(entry)})
        return cast(dict[str, Any], self._scalar("console_save_knowledge", args))

    def console_delete_knowledge(self, entry_id: str) -> bool:
        """Remove an entry (owners, operators)."""
        return bool(self._scalar("console_delete_knowledge", _args({"id": entry_id})))

    # -- console, worker side (service role) ------------------------------------------------

    def load_reply_context(self, reply_id: str) -> dict[str, Any] | None:
        """The reply and its store, for the send_reply handler."""
        context = self._scalar("load_reply_context", _args({"reply_id": reply_id}))
        if context is None:
            return None
        return {key: normalize_row(value) for key, value in dict(context).items()}

    def add_store_member(self, store_id: str, email: str, role: str) -> dict[str, Any]:
        """Link a person (by email) to a store as owner or agent."""
        args = _args({"store_id": store_id, "email": email, "role": role})
        return cast(dict[str, Any], self._scalar("add_store_member", args))

    # -- notifications (s2-notify, issue 12) ------------------------------------------------

    def notify_people(
        self, store_id: str, kind: str, ref: str, detail: Mapping[str, Any] | None = None
    ) -> None:
        """Record that something of the store needs a person (once per kind and ref)."""
        self._void(
            "notify_people",
            _args(
                {"store_id": store_id, "kind": kind, "ref": ref},
                {"detail": dict(detail) if detail is not None else None},
            ),
        )

    def resolve_notifications(self, store_id: str, kind: str, ref: str) -> int:
        """The cause went away: close the open item, so a later occurrence is told again."""
        args = _args({"store_id": store_id, "kind": kind, "ref": ref})
        return cast(int, self._scalar("resolve_notifications", args))

    def take_notification_digest(self, job_id: str, worker_id: str) -> dict[str, Any] | None:
        """The digest of a notify job this worker holds: store, recipients, items, channels."""
        args = _args({"job_id": job_id, "worker_id": worker_id})
        taken = self._scalar("take_notification_digest", args)
        return dict(taken) if taken is not None else None

    def get_notification_webhook(self, store_id: str) -> str | None:
        """The store's webhook URL from Vault, or None."""
        url = self._scalar("get_notification_webhook", _args({"store_id": store_id}))
        return str(url) if url else None

    def record_notification_channel(
        self, job_id: str, channel: str, detail: Mapping[str, Any]
    ) -> Row:
        """One channel of a digest went out (or gave up for good, with `error`)."""
        args = _args({"job_id": job_id, "channel": channel, "detail": dict(detail)})
        return self._required_row("record_notification_channel", args)

    def finish_notification_digest(self, job_id: str, worker_id: str, result: Any = None) -> bool:
        """Mark the digest's items sent and complete its job, in one transaction."""
        args = _args({"job_id": job_id, "worker_id": worker_id}, {"result": result})
        return bool(self._scalar("finish_notification_digest", args))

    def admin_set_notification_settings(
        self, store_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Change a store's notification settings (the stores CLI); returns what people see."""
        args = _args({"store_id": store_id, "changes": dict(changes)})
        return cast(dict[str, Any], self._scalar("admin_set_notification_settings", args))

    def notification_settings_view(self, store_id: str) -> dict[str, Any] | None:
        """A store's notification settings as people see them (the webhook only as a hint)."""
        view = self._scalar("notification_settings_view", _args({"store_id": store_id}))
        return dict(view) if view is not None else None

    def console_notifications(self, store_id: str, limit: int | None = None) -> dict[str, Any]:
        """A store's notification settings and recent items, for its people."""
        args = _args({"store_id": store_id}, {"limit": limit})
        return cast(dict[str, Any], self._scalar("console_notifications", args))

    def console_set_notification_settings(
        self, store_id: str, changes: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Change a store's notification settings: owners and operators."""
        args = _args({"store_id": store_id, "changes": dict(changes)})
        return cast(dict[str, Any], self._scalar("console_set_notification_settings", args))
    # -- the mailbox as the record (decision 0019) -------------------------------------------

    def load_mailbox_record(self, reply_id: str) -> dict[str, Any] | None:
        """The reply, its store and the customer message it answers, for mailbox_record."""
        context = self._scalar("load_mailbox_record", _args({"reply_id": reply_id}))
        if context is None:
            return None
        loaded = dict(context)
        return {
            "reply": normalize_row(loaded["reply"]),
            "store": normalize_row(loaded["store"]),
            "message": dict(loaded.get("message") or {}),
        }

    def get_sent_scan_state(self, store_id: str) -> Row | None:
        """Where the scan of the store's Sent folder stands, or None before the first scan."""
        return self._first("get_sent_scan_state", _args({"store_id": store_id}))

    def record_sent_scan(
        self,
        store_id: str,
        folder: str,
        uidvalidity: int,
        last_uid: int,
        messages: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        """Mark conversations a person answered from their mail client; move the Sent position."""
        args = _args(
            {
                "store_id": store_id,
                "folder": folder,
                "uidvalidity": uidvalidity,
                "last_uid": last_uid,
                "messages": [dict(message) for message in messages],
            }
        )
        return cast(dict[str, Any], self._scalar("record_sent_scan", args))


def connect(settings: Settings, *, min_size: int = 1, max_size: int | None = None) -> Database:
    """A Database over the backend Settings names: DATABASE_URL -> psycopg, else PostgREST."""
    if settings.database_url:
        from worker.db.pg import PgTransport

        # A call holds its connection for about a millisecond while a job spends seconds on
        # Claude and Shopify, so a few connections serve many concurrent jobs; DB_POOL_MAX keeps
        # the pool inside the plan's limit (max_connections, or the pooler's pool size).
        wanted = max(settings.process_concurrency, settings.fetch_concurrency) + 2
        pool_max = max_size or min(wanted, settings.db_pool_max)
        return Database(
            PgTransport(
                settings.database_url,
                timeout_seconds=settings.db_timeout_seconds,
                min_size=min(min_size, pool_max),
                max_size=pool_max,
                prepared_statements=settings.database_prepared_statements,
            )
        )
    if settings.supabase_url and settings.supabase_key:
        from worker.db.rest import RestTransport

        return Database(
            RestTransport(
                settings.supabase_url,
                settings.supabase_key,
                timeout_seconds=settings.db_timeout_seconds,
                anon_key=settings.supabase_anon_key,
            )
        )
    raise ConfigError("no database configured: set DATABASE_URL, or SUPABASE_URL and key")
