"""bench/console: page and API times of the support console with 10,000 conversations a store.

    .venv/bin/python bench/console.py [--pgport 5449] [--conversations 10000] [--requests 100]
                                      [--json F]

A fresh database (scripts/local-db --fresh, database `bench_console`) gets two stores with
--conversations conversations each (a customer message and a reply per conversation: mostly sent,
10% held for a person, some failed), the local Auth stand-in, and the worker's Flask app with the
console served over loopback HTTP. The store owner signs in through /login like a browser and
each page and API call is requested --requests times in a row (after a warm-up); the table shows
p50, p95 and max milliseconds per request, measured by the client (HTTP, Flask, SQL as the
person under RLS).
"""

from __future__ import annotations

import script_path  # noqa: F401  (first: swaps bench/ for the repository root on sys.path)

# isort: split

import argparse
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from werkzeug.serving import make_server

from bench.common import (
    DEFAULT_PGPORT,
    machine_summary,
    median,
    percentile,
    prepare_database,
    render_table,
    write_json,
)
from worker import db as dbmod
from worker.app import create_app
from worker.config import load_settings
from worker.console.auth_client import AuthClient
from worker.devstack.auth import AuthServer, anon_key, service_role_key

DATABASE = "bench_console"
# The Supabase CLI's well-known local JWT secret: a throwaway value for a loopback bench.
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
PASSWORD = "bench password 123"
WARM_UP = 3

SEED_SQL = """
with conv as (
  insert into public.conversations (store_id, customer_email, subject, created_at,
                                    last_message_at)
  select %(store)s, 'customer' || i || '@example.com', 'Order #' || (10000 + i) || ' question',
         now() - make_interval(mins => i), now() - make_interval(mins => i)
  from generate_series(1, %(n)s) i
  returning id, customer_email, subject, last_message_at
), msg as (
  insert into public.messages (store_id, conversation_id, message_id, from_address, subject,
                               body_text, received_at)
  select %(store)s, c.id, '<' || c.id || '@customer.example>', c.customer_email, c.subject,
         'Hello, where is my order? ' || c.subject, c.last_message_at
  from conv c
  returning id, conversation_id, from_address, subject
)
insert into public.replies (store_id, conversation_id, message_id, job_id, status, to_address,
                            subject, body_text, smtp_message_id, hold_reason, sent_at,
                            sending_at)
select %(store)s, m.conversation_id, m.id, gen_random_uuid(), s.status, m.from_address,
       'Re: ' || m.subject, 'Your order is on its way.', '<reply-' || m.id || '@shop.example>',
       case when s.status = 'held' then 'needs_human' end,
       case when s.status = 'sent' then now() end, case when s.status = 'sent' then now() end
from msg m
cross join lateral (select case when abs(hashtext(m.id::text)) %% 100 < 10 then 'held'
                                when abs(hashtext(m.id::text)) %% 100 < 15 then 'failed'
                                else 'sent' end as status) s
"""

STORE_SQL = """
insert into public.stores (owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user, credits)
values (%s, %s, %s, 'imap.invalid', 993, 'x', 'smtp.invalid', 587, 'x', 100)
returning id::text
"""


def seed(url: str, owner_id: str, other_owner_id: str, n: int) -> tuple[str, str]:
    """Two stores with n conversations each; returns the owner's store and one conversation."""
    with psycopg.connect(url, autocommit=True) as conn:
        stores = []
        for owner, name in ((owner_id, "Bench store"), (other_owner_id, "Other store")):
            row = conn.execute(STORE_SQL, (owner, name, f"help@{name.split()[0].lower()}.test"))
            stores.append(str(row.fetchone()[0]))  # type: ignore[index]
            conn.execute(SEED_SQL, {"store": stores[-1], "n": n})
        conn.execute("analyze")
        row = conn.execute(
            "select id::text from public.conversations where store_id = %s and status = 'waiting'"
            " order by last_message_at desc limit 1", (stores[0],)
        ).fetchone()
        assert row is not None
    return stores[0], str(row[0])


def measure(client: httpx.Client, path: str, requests: int) -> list[float]:
    """Milliseconds per GET of path, after a warm-up."""
    for _ in range(WARM_UP):
        client.get(path).raise_for_status()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pgport", type=int, default=DEFAULT_PGPORT)
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    # One log line per request would drown the table (and cost time inside the measurement).
    for name in ("werkzeug", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)

    url = prepare_database(args.pgport, DATABASE)
    with AuthServer(url, JWT_SECRET) as auth_server:
        auth = AuthClient(auth_server.url, anon_key(JWT_SECRET))
        admin = service_role_key(JWT_SECRET)
        owner = auth.create_user(admin, "owner@bench.test", PASSWORD, operator=False)
        other = auth.create_user(admin, "other@bench.test", PASSWORD, operator=False)
        started = time.perf_counter()
        store, conversation = seed(url, owner, other, args.conversations)
        seeded_s = time.perf_counter() - started

        settings = load_settings({
            "DATABASE_URL": url,
            "WORKER_SECRET": "bench-worker-secret-0123456789",
            "SUPABASE_AUTH_URL": auth_server.url,
            "SUPABASE_ANON_KEY": anon_key(JWT_SECRET),
            "SUPABASE_JWT_SECRET": JWT_SECRET,
        })

        class Services:
            def __init__(self) -> None:
                self.settings = settings
                self.db = dbmod.connect(settings, max_size=4)
                self.runners: dict[str, Any] = {}

        services = Services()
        app = create_app(settings, services=services)  # type: ignore[arg-type]
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}"
        paths = [
            ("page: needs a person", "/console"),
            ("page: conversations", "/console/conversations"),
            ("page: waiting", f"/console/conversations?store={store}&status=waiting"),
            ("page: conversation", f"/console/conversations/{conversation}"),
            ("api: conversations", "/api/conversations"),
            ("api: conversations, 3rd page", None),
            ("api: search order #15000", "/api/conversations?q=%2315000"),
            ("api: search address", "/api/conversations?q=customer4321@"),
            ("api: search subject", "/api/conversations?q=question&status=failed"),
            ("api: conversation", f"/api/conversations/{conversation}"),
            ("api: needs-person", "/api/needs-person"),
            ("api: stores", "/api/stores"),
        ]
        rows, results = [], {}
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                login = client.post("/login", data={"email": "owner@bench.test",
                                                    "password": PASSWORD})
                assert login.status_code == 302, login.text
                first = client.get("/api/conversations").json()
                second = client.get("/api/conversations", params=first["next"]).json()
                third = {"before_at": second["next"]["before_at"],
                         "before_id": second["next"]["before_id"]}
                for name, path in paths:
                    if path is None:
                        path = str(httpx.URL("/api/conversations", params=third))
                    times = measure(client, path, args.requests)
                    results[name] = {"path": path, "p50_ms": median(times),
                                     "p95_ms": percentile(times, 0.95), "max_ms": max(times)}
                    rows.append([name, f"{median(times):.1f}",
                                 f"{percentile(times, 0.95):.1f}", f"{max(times):.1f}"])
        finally:
            server.shutdown()
            services.db.close()
            auth.close()

    print(f"{args.conversations:,} conversations in each of 2 stores (seeded in {seeded_s:.1f} s);"
          f" {args.requests} requests per row, signed in as one store's owner")
    print(render_table(["request", "p50 ms", "p95 ms", "max ms"], rows))
    if args.json:
        write_json(args.json, {"machine": machine_summary(url),
                               "conversations_per_store": args.conversations,
                               "requests": args.requests, "results": results})


if __name__ == "__main__":
    main()
