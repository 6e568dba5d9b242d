"""What one email costs the worker itself: database round trips and CPU time, outside calls mocked.

Runs `process.run_process` over N customer emails on a real Postgres, with the offline responder
instead of Claude, an in-memory shop instead of Shopify and a no-op SMTP send, so the numbers are
the pipeline's own (Python plus psycopg) and the database's answers. Round trips are counted at
the Transport (one `call` = one SQL function = one round trip); CPU is `time.process_time()` of
this process across the run (all threads).

    python -m bench.cost --database-url postgresql://postgres:postgres@127.0.0.1:5450/postgres
        [--knowledge scripts/demo.d/knowledge.json]   # the store with a knowledge base
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg

from worker import mime, process
from worker.db import Database
from worker.db.pg import PgTransport
from worker.models import MailAccount
from worker.offline import OfflineResponder
from worker.pipeline.context import MailIO, Services
from worker.responder import FulfillmentFacts, OrderFacts, ProductFacts, TrackingFacts
from worker.runs import Budget

DEFAULT_EMAILS = 200
DEFAULT_CONCURRENCY = 16
RUN_BUDGET_SECONDS = 300.0
INGEST_CHUNK = 50  # messages per ingest_messages call, as fetch does


class CountingTransport:
    """A Transport that counts calls per SQL function before passing them on."""

    def __init__(self, inner: PgTransport) -> None:
        self.inner = inner
        self.calls: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def call(self, fn: str, args: Mapping[str, Any], shape: Any) -> Any:
        with self._lock:
            self.calls[fn] += 1
        return self.inner.call(fn, args, shape)

    def ping(self) -> None:
        self.inner.ping()

    def close(self) -> None:
        self.inner.close()


class MemoryShop:
    """Every customer has one shipped order with tracking."""

    def recent_orders_for_email(self, email: str, limit: int = 5) -> list[OrderFacts]:
        return [_order(email)]

    def order_by_number(self, number: str) -> OrderFacts | None:
        return None

    def search_products(self, search: str, limit: int = 5) -> list[ProductFacts]:
        return []  # its emails are order questions; none is searched in the catalogue


def _order(email: str) -> OrderFacts:
    return OrderFacts(
        name="#1001",
        created_at="2025-09-28T14:12:00Z",
        email=email,
        customer_email=email,
        financial_status="PAID",
        fulfillment_status="FULFILLED",
        line_items=["Camiseta - M x2"],
        fulfillments=[
            FulfillmentFacts(
                status="IN_TRANSIT",
                estimated_delivery_at="2025-10-06T23:59:00Z",
                tracking=[TrackingFacts("BR123456789BR", None, "Correios")],
            )
        ],
    )


def _no_send(message: EmailMessage, account: MailAccount, copy_to: str | None) -> None:
    return None


def _never_in_sent(account: MailAccount, message_id: str, inbox: str) -> str | None:
    return None


def customer_email(n: int, tag: str) -> bytes:
    """Alternating pt-BR and en order questions from distinct customers."""
    msg = EmailMessage()
    msg["From"] = f"Cliente {n} <cliente{n}.{tag}@example.com.br>"
    msg["To"] = "suporte@loja.test"
    msg["Message-ID"] = f"<cost-{tag}-{n}@example.com.br>"
    if n % 2:
        msg["Subject"] = "Where is my order?"
        msg.set_content("Hi, I ordered last week. Where is my order? Can you send tracking?")
    else:
        msg["Subject"] = "Onde está meu pedido?"
        msg.set_content("Olá, comprei semana passada. Podem me mandar o código de rastreio?")
    return msg.as_bytes()


@dataclass
class CostResult:
    """Per-email cost of one run."""

    emails: int
    outcomes: dict[str, int]
    round_trips_per_email: float
    round_trips_by_function: dict[str, float]
    cpu_ms_per_email: float
    wall_seconds: float
    emails_per_second: float


def measure(
    database_url: str, emails: int, concurrency: int, knowledge: list[dict[str, str]] | None = None
) -> CostResult:
    """Ingest `emails` messages for a new store (with `knowledge` as its knowledge base) and
    process them all; returns the cost."""
    transport = CountingTransport(PgTransport(database_url, min_size=1, max_size=concurrency + 2))
    db = Database(transport)
    tag = uuid.uuid4().hex[:8]
    job_type = f"process_email_cost_{tag}"
    try:
        store_id = db.admin_create_store(
            {
                "name": "Loja Custo",
                "support_email": f"suporte-{tag}@loja.test",
                "imap_host": "127.0.0.1",
                "imap_port": 993,
                "imap_user": "suporte",
                "smtp_host": "127.0.0.1",
                "smtp_port": 587,
                "smtp_user": "suporte",
                "shopify_domain": "loja-custo.myshopify.com",
                "credits": emails,
            },
            {"imap_password": "x", "smtp_password": "x", "shopify_token": "x"},
        )
        if knowledge:
            db.import_knowledge(store_id, knowledge)
        job_ids: list[str] = []
        raws = [customer_email(n, tag) for n in range(emails)]
        for start in range(0, emails, INGEST_CHUNK):
            rows = []
            for uid, raw in enumerate(raws[start : start + INGEST_CHUNK], start=start + 1):
                row = mime.parse_message(raw, uid=uid).to_ingest_json()
                row["size_bytes"] = len(raw)
                rows.append(row)
            result = db.ingest_messages(store_id, "INBOX", 1, start + len(rows), rows)
            job_ids += [str(j) for j in result["job_ids"]]
        # Our own job type, so the run touches no one else's jobs on a shared database.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "update public.job_queue set job_type = %s where id = any(%s::uuid[])",
                (job_type, job_ids),
            )

        services = Services(
            db=db,
            responder=OfflineResponder(),
            mail=MailIO(send=_no_send, find_sent=_never_in_sent),
            shop_for=lambda store, secrets: MemoryShop(),
        )
        # No hourly reply rate: every email of the run is to be answered, at once. The mailbox
        # filing jobs (decision 0019) are IMAP work, mocked away here like SMTP: not run.
        options = process.ProcessOptions(
            concurrency=concurrency,
            job_types=(job_type,),
            store_replies_per_hour=None,
            record_mailbox=False,
        )
        transport.calls.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = process.run_process(services, Budget(RUN_BUDGET_SECONDS), options=options)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        db.close()

    processed = max(1, int(summary["processed"]))
    total_calls = sum(transport.calls.values())
    return CostResult(
        emails=processed,
        outcomes=dict(summary["outcomes"]),
        round_trips_per_email=round(total_calls / processed, 2),
        round_trips_by_function={
            fn: round(count / processed, 2) for fn, count in transport.calls.most_common()
        },
        cpu_ms_per_email=round(cpu * 1000 / processed, 2),
        wall_seconds=round(wall, 2),
        emails_per_second=round(processed / wall, 1),
    )


def main(argv: list[str] | None = None) -> None:
    """Measure and print one JSON result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--emails", type=int, default=DEFAULT_EMAILS)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument(
        "--knowledge",
        type=Path,
        metavar="FILE",
        help="the store's knowledge base (JSON, as `stores knowledge import` reads)",
    )
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("--database-url or DATABASE_URL is required")
    knowledge = json.loads(args.knowledge.read_text(encoding="utf-8")) if args.knowledge else None
    result = measure(args.database_url, args.emails, args.concurrency, knowledge)
    print(json.dumps(result.__dict__, indent=2))


if __name__ == "__main__":
    main()
