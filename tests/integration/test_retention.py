"""The events retention procedure: old audit rows go, what an operator may still need stays."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest


def add_event(db: psycopg.Connection[Any], store_id: str, job_id: str | None, age: str) -> int:
    row = db.execute(
        "insert into public.events (store_id, job_id, event_type, detail, created_at)"
        " values (%s, %s, 'test.retention', '{}', now() - %s::interval) returning id",
        (store_id, job_id, age),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def enqueue(db: psycopg.Connection[Any], status: str) -> str:
    row = db.execute(
        "select public.enqueue_job('retention_test', '{}'::jsonb, %s) as id",
        (f"retention:{uuid.uuid4()}",),
    ).fetchone()
    assert row is not None
    job_id = str(row["id"])
    db.execute("update public.job_queue set status = %s where id = %s", (status, job_id))
    return job_id


def test_old_events_are_purged_but_dead_letter_history_stays(db: psycopg.Connection[Any]) -> None:
    store_id = str(uuid.uuid4())
    dead_job = enqueue(db, "dead_letter")
    done_job = enqueue(db, "completed")
    old_orphan = add_event(db, store_id, None, "200 days")
    old_done = add_event(db, store_id, done_job, "200 days")
    old_dead = add_event(db, store_id, dead_job, "200 days")
    recent = add_event(db, store_id, None, "1 day")

    db.execute("call public.purge_old_events(interval '180 days', 1)")

    left = {
        r["id"]
        for r in db.execute("select id from public.events where store_id = %s", (store_id,))
    }
    assert old_orphan not in left and old_done not in left
    assert {old_dead, recent} <= left


def test_retention_refuses_to_empty_the_trail(db: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        db.execute("call public.purge_old_events(interval '1 hour')")


def test_retention_is_scheduled_and_not_an_api(db: psycopg.Connection[Any]) -> None:
    row = db.execute("select command from cron.job where jobname = 'events-retention'").fetchone()
    assert row is not None and "purge_old_events" in row["command"]
    for role in ("anon", "authenticated", "service_role"):
        allowed = db.execute(
            "select has_function_privilege(%s, 'public.purge_old_events(interval, int)', 'EXECUTE')"
            " as ok",
            (role,),
        ).fetchone()
        assert allowed is not None and allowed["ok"] is False
