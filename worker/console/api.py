"""The console's JSON API under /api/ (docs/api.md): thin over the SQL console functions, each
called as the signed-in person. Pages render the same calls (worker.console.pages)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from flask import Blueprint, Response, jsonify, request

from worker.console import notifications, session
from worker.console.identity import Person
from worker.console.session import ConsoleError
from worker.db import Database
from worker.errors import WorkerError

bp = Blueprint("console_api", __name__, url_prefix="/api")

MAX_HOURS = 168


def _call(fn: Callable[[Database, Person], Any], status: int = 200) -> tuple[Response, int]:
    try:
        person = session.require_person()
        result = fn(session.person_db(person), person)
    except ConsoleError as exc:
        return session.json_error(exc.status, exc.message)
    except WorkerError as exc:
        error = session.error_from_database(exc)
        return session.json_error(error.status, error.message)
    return jsonify(result), status


def _uuid_arg(name: str) -> str | None:
    value = request.args.get(name) or None
    if value is None:
        return None
    try:
        return str(UUID(value))
    except ValueError as exc:
        raise ConsoleError(400, f"{name} must be an id") from exc


def _int_arg(name: str, default: int, maximum: int) -> int:
    value = request.args.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise ConsoleError(400, f"{name} must be a whole number") from exc
    if not 1 <= number <= maximum:
        raise ConsoleError(400, f"{name} must be between 1 and {maximum}")
    return number


def conversations_query(db: Database) -> dict[str, Any]:
    """The conversation list for the current request's filters (shared with the pages)."""
    return db.console_conversations(
        store_id=_uuid_arg("store"),
        status=request.args.get("status") or None,
        q=request.args.get("q") or None,
        limit=_int_arg("limit", 50, 200),
        before_at=request.args.get("before_at") or None,
        before_id=_uuid_arg("before_id"),
    )


@bp.get("/me")
def me() -> tuple[Response, int]:
    """Who is signed in, whether an operator, and their stores."""
    return _call(lambda db, _person: db.console_me())


@bp.get("/stores")
def stores() -> tuple[Response, int]:
    """The caller's stores."""
    return _call(lambda db, _person: db.console_stores())


STORE_SETTINGS = ("reply_tone", "reply_signature", "reply_language", "reply_mode")


@bp.post("/stores/<uuid:store_id>/settings")
def update_store(store_id: UUID) -> tuple[Response, int]:
    """Change the store's voice: any of reply_tone, reply_signature, reply_language, reply_mode
    (owners and operators)."""

    def update(db: Database, _person: Person) -> Any:
        fields = session.form_or_json()
        changes = {key: fields[key] for key in STORE_SETTINGS if key in fields}
        unknown = sorted(set(fields) - set(STORE_SETTINGS))
        if unknown:
            raise ConsoleError(400, f"these settings cannot be changed here: {', '.join(unknown)}")
        if not changes:
            raise ConsoleError(400, f"give at least one of {', '.join(STORE_SETTINGS)}")
        return db.console_update_store(str(store_id), changes)

    return _call(update)


KNOWLEDGE_FIELDS = ("topic", "title", "body")


@bp.get("/stores/<uuid:store_id>/knowledge")
def knowledge(store_id: UUID) -> tuple[Response, int]:
    """The store's knowledge entries (its people and operators)."""

    def read(db: Database, _person: Person) -> Any:
        found = db.console_knowledge(str(store_id))
        if found is None:
            raise ConsoleError(404, "store not found")
        return found

    return _call(read)


@bp.post("/stores/<uuid:store_id>/knowledge")
def save_knowledge(store_id: UUID) -> tuple[Response, int]:
    """Add an entry (topic, title, body), or change the one given by `id` (owners, operators)."""

    def save(db: Database, _person: Person) -> Any:
        fields = session.form_or_json()
        missing = [key for key in KNOWLEDGE_FIELDS if not str(fields.get(key) or "").strip()]
        if missing:
            raise ConsoleError(400, f"an entry needs {', '.join(missing)}")
        entry = {key: fields[key] for key in KNOWLEDGE_FIELDS}
        if fields.get("id"):
            try:
                entry["id"] = str(UUID(str(fields["id"])))
            except ValueError as exc:
                raise ConsoleError(400, "id must be an id") from exc
        return db.console_save_knowledge(str(store_id), entry)

    return _call(save)


@bp.post("/knowledge/<uuid:entry_id>/delete")
def delete_knowledge(entry_id: UUID) -> tuple[Response, int]:
    """Remove an entry (owners, operators)."""
    return _call(lambda db, _person: {"deleted": db.console_delete_knowledge(str(entry_id))})


@bp.get("/stores/<uuid:store_id>/notifications")
def store_notifications(store_id: UUID) -> tuple[Response, int]:
    """The store's notification settings (the webhook only as a hint) and recent items."""
    return _call(
        lambda db, _person: db.console_notifications(str(store_id), _int_arg("limit", 50, 200))
    )


@bp.post("/stores/<uuid:store_id>/notifications")
def update_store_notifications(store_id: UUID) -> tuple[Response, int]:
    """Change who is told and how often, and the webhook URL (owners and operators)."""

    def update(db: Database, _person: Person) -> Any:
        fields = session.form_or_json()
        unknown = sorted(set(fields) - set(notifications.FIELDS))
        if unknown:
            raise ConsoleError(400, f"these settings cannot be changed here: {', '.join(unknown)}")
        changes = notifications.changes_from_form(fields)
        if not changes:
            raise ConsoleError(400, f"give at least one of {', '.join(notifications.FIELDS)}")
        return db.console_set_notification_settings(str(store_id), changes)

    return _call(update)


@bp.get("/conversations")
def conversations() -> tuple[Response, int]:
    """A page of conversations: ?store=&status=&q=&limit=&before_at=&before_id=."""
    return _call(lambda db, _person: conversations_query(db))


@bp.get("/needs-person")
def needs_person() -> tuple[Response, int]:
    """Held replies waiting for a person, and the count per store."""
    return _call(
        lambda db, _person: db.console_needs_person(
            store_id=_uuid_arg("store"), limit=_int_arg("limit", 50, 200)
        )
    )


@bp.get("/conversations/<uuid:conversation_id>")
def conversation(conversation_id: UUID) -> tuple[Response, int]:
    """One conversation: thread, classification, order lookups, events."""

    def read(db: Database, _person: Person) -> Any:
        found = db.console_conversation(str(conversation_id))
        if found is None:
            raise ConsoleError(404, f"conversation {conversation_id} not found")
        return found

    return _call(read)


def _body_text(required: bool) -> str | None:
    value = session.form_or_json().get("body")
    if value is not None and not isinstance(value, str):
        raise ConsoleError(400, "body must be text")
    if required and not (value or "").strip():
        raise ConsoleError(400, "body is required")
    return value if value and value.strip() else None


def _note() -> str | None:
    value = session.form_or_json().get("note")
    return str(value) if value else None


@bp.post("/replies/<uuid:reply_id>/send")
def send_reply(reply_id: UUID) -> tuple[Response, int]:
    """Send a held reply, optionally with an edited `body`; 409 when it is no longer held."""
    return _call(
        lambda db, _person: db.console_send_reply(str(reply_id), _body_text(required=False)),
        202,
    )


@bp.post("/replies/<uuid:reply_id>/discard")
def discard_reply(reply_id: UUID) -> tuple[Response, int]:
    """Do not send a held reply (optional `note`)."""
    return _call(lambda db, _person: db.console_discard_reply(str(reply_id), _note()))


@bp.post("/conversations/<uuid:conversation_id>/reply")
def write_reply(conversation_id: UUID) -> tuple[Response, int]:
    """Send a reply written by the person (`body`)."""
    return _call(
        lambda db, _person: db.console_write_reply(
            str(conversation_id), str(_body_text(required=True))
        ),
        202,
    )


@bp.post("/conversations/<uuid:conversation_id>/close")
def close_conversation(conversation_id: UUID) -> tuple[Response, int]:
    """Close without replying (optional `note`)."""
    return _call(
        lambda db, _person: db.console_close_conversation(str(conversation_id), _note())
    )


@bp.get("/dead-letters")
def dead_letters() -> tuple[Response, int]:
    """Dead-lettered jobs the caller may see (?store=&limit=)."""
    return _call(
        lambda db, _person: db.console_dead_letters(
            store_id=_uuid_arg("store"), limit=_int_arg("limit", 100, 500)
        )
    )


@bp.post("/dead-letters/<uuid:job_id>/requeue")
def requeue_dead_letter(job_id: UUID) -> tuple[Response, int]:
    """Requeue a dead letter (operators; owners for their own store)."""
    return _call(lambda db, _person: db.console_requeue_dead_letter(str(job_id)))


@bp.post("/dead-letters/purge")
def purge_dead_letters() -> tuple[Response, int]:
    """Delete dead letters (`job_ids`), operators only."""

    def purge(db: Database, _person: Person) -> Any:
        ids = session.form_or_json().get("job_ids")
        if isinstance(ids, str):
            ids = [part for part in ids.replace(",", " ").split() if part]
        if not isinstance(ids, list) or not ids:
            raise ConsoleError(400, "job_ids must list the jobs to purge")
        try:
            job_ids = [str(UUID(str(value))) for value in ids]
        except ValueError as exc:
            raise ConsoleError(400, "job_ids must be ids") from exc
        return {"purged": db.console_purge_dead_letters(job_ids)}

    return _call(purge)


@bp.get("/metrics/queue")
def queue_metrics() -> tuple[Response, int]:
    """Operators: queue_metrics of the last ?hours= (default 24) and breaker states."""
    return _call(
        lambda db, _person: db.console_queue_metrics(_int_arg("hours", 24, MAX_HOURS))
    )
