"""The notification calls of worker.db.Database on every backend (psycopg, psycopg through
pgbouncer in transaction mode, supabase-py through the PostgREST-compatible gateway): the same
answers, normalised the same way."""

# The backend fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

from datetime import UTC

import pytest

from tests.integration.test_db_backends import (
    WORKER,
    db,  # noqa: F401  (a fixture)
    new_store,
    pg_db,  # noqa: F401  (a fixture)
    pooled_db,  # noqa: F401  (a fixture)
    rest_db,  # noqa: F401  (a fixture)
)
from worker.db import Database

pytestmark = pytest.mark.integration

HOOK = "https://hooks.example.test/services/T1/B1/backend-9876"


def test_a_digest_round_trip_on_every_backend(db: Database) -> None:
    store_id = new_store(db)
    view = db.admin_set_notification_settings(
        store_id, {"digest_wait_seconds": 0, "webhook_url": HOOK}
    )
    assert view["webhook_hint"] == "hooks.example.test …9876" and HOOK not in str(view)
    assert db.notification_settings_view(store_id) == view
    assert db.get_notification_webhook(store_id) == HOOK

    db.notify_people(store_id, "held_reply", "reply-1", {"subject": "Pedido"})
    db.notify_people(store_id, "held_reply", "reply-1")  # once per (store, kind, ref)
    claimed = [
        j
        for j in db.dequeue_jobs(WORKER, batch_size=10, job_types=["notify"])
        if str(j["store_id"]) == store_id
    ]
    [job] = claimed
    job_id = str(job["id"])

    taken = db.take_notification_digest(job_id, WORKER)
    assert taken is not None
    assert [(i["kind"], i["ref"], i["detail"]) for i in taken["items"]] == [
        ("held_reply", "reply-1", {"subject": "Pedido"})
    ]
    assert taken["webhook"] is True and taken["store"]["id"] == store_id
    assert db.take_notification_digest(job_id, "someone-else") is None

    row = db.record_notification_channel(
        job_id, "email", {"to": ["a@shop.example"], "message_id": "<n@shop.example>"}
    )
    assert row["email_to"] == ["a@shop.example"] and row["email_sent_at"].tzinfo is UTC
    assert db.finish_notification_digest(job_id, WORKER, {"outcome": "sent"}) is True
    assert db.finish_notification_digest(job_id, WORKER, {"outcome": "sent"}) is False
    assert db.resolve_notifications(store_id, "held_reply", "reply-1") == 1
    assert db.resolve_notifications(store_id, "held_reply", "reply-1") == 0
