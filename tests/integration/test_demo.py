"""Smoke run of the README's first command: `scripts/demo --once` on its own Postgres port.

The demo brings up everything itself (Postgres with pg_cron and the pg_net stand-in, Dovecot, the
SMTP sink, the fake Shopify, gunicorn), so this test only runs it and reads what it reports: the
printed report and the JSON summary it writes to DEMO_REPORT_JSON.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# Not the demo's default (54329) nor the suite's: a demo left running by hand is untouched.
# DEMO_PGPORT overrides it; by default the suite's port + 100 (54430 for 54330), so suites running
# side by side on their own TEST_PGPORT never share the demo's cluster.
SUITE_PGPORT = int(os.environ.get("TEST_PGPORT", "54330"))
DEMO_PGPORT = os.environ.get("DEMO_PGPORT") or str(SUITE_PGPORT + 100)
# Bounds a hung run (package checks, a new cluster, servers, the wait); never asserted on.
RUN_TIMEOUT = 900  # seconds


@dataclass(frozen=True)
class DemoRun:
    stdout: str
    summary: dict[str, Any]
    cluster_was_online: bool


def cluster_status(port: str) -> str | None:
    """'online' or 'down' for the Debian cluster on port, None when there is none."""
    out = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == port:
            return fields[3]
    return None


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    report_file = tmp_path_factory.mktemp("demo") / "report.json"
    # The smoke run uses the offline responder and the local catalogue, whatever is configured.
    dropped = ("ANTHROPIC_API_KEY", "DEMO_SHOPIFY_DOMAIN", "DEMO_SHOPIFY_TOKEN", "DATABASE_URL")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update({"DEMO_PGPORT": DEMO_PGPORT, "DEMO_REPORT_JSON": str(report_file), "CI": "true"})
    was_online = cluster_status(DEMO_PGPORT) == "online"
    result = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--once"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    output = f"{result.stdout[-8000:]}\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"demo failed:\n{output}"
    assert report_file.exists(), f"no report written:\n{output}"
    return DemoRun(result.stdout, json.loads(report_file.read_text()), was_online)


def by_key(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["key"]: e for e in summary["emails"]}


def test_demo_answers_portuguese_and_english_customers(
    demo_run: DemoRun,
) -> None:
    summary = demo_run.summary
    emails = by_key(summary)
    assert summary["responder"] == "offline responder (no ANTHROPIC_API_KEY)"
    for key in ("order-status-pt", "delay-en", "refund-pt", "product-en"):
        assert emails[key]["outcome"] == "answered", emails[key]
        assert emails[key]["reply_status"] == "sent"
    assert emails["order-status-pt"]["language"].startswith("pt")
    assert emails["delay-en"]["language"].startswith("en")
    # The replies as the SMTP sink received them, with the fake shop's order data in them.
    out = demo_run.stdout
    assert "Reply as received by the SMTP sink (to ana.souza@example.com.br)" in out
    assert "Correios BR123456789BR" in out
    assert "Order #1002" in out
    # The returns question is answered with the store's own returns policy (its knowledge).
    refund_reply = out.split("(to carlos.lima@example.com.br)", 1)[1][:1500]
    assert "Trocas e devoluções:" in refund_reply
    assert "em até 30 dias corridos" in refund_reply
    # The product question is answered from the fake shop's catalogue: title, price,
    # availability of each option and the product page; never the draft or unpublished ones.
    assert "Wool Scarf - R$ 129,00 - available" in out
    assert "Navy (available)" in out and "Burgundy (sold out)" in out
    assert "https://lojaexemplo.com.br/products/wool-scarf" in out
    assert "Limited Edition" not in out and "Wool Scarf Sample" not in out
    assert "Store knowledge given to the responder: Trocas e devoluções" in out
    assert "offline responder (no ANTHROPIC_API_KEY)" in out


def test_demo_skips_auto_reply_and_bounce_and_flags_spam(
    demo_run: DemoRun,
) -> None:
    summary = demo_run.summary
    emails = by_key(summary)
    assert emails["out-of-office-pt"]["outcome"] == "skipped"
    assert "auto-reply" in emails["out-of-office-pt"]["detail"]
    assert emails["bounce"]["outcome"] == "skipped"
    assert "bounce" in emails["bounce"]["detail"]
    assert emails["spam-pt"]["outcome"] == "spam"
    assert emails["complaint-pt"]["outcome"] == "held"
    assert emails["complaint-pt"]["reply_status"] == "held"


def test_demo_dead_letters_the_refused_reply_with_its_reason(
    demo_run: DemoRun,
) -> None:
    summary = demo_run.summary
    refused = by_key(summary)["order-status-refused-en"]
    assert refused["outcome"] == "dead_letter"
    assert "550" in refused["detail"]
    assert summary["dead_letter_jobs"] == 1
    # The DLQ listing comes from scripts/requeue.py and names the same error.
    listing = demo_run.stdout.split("Dead-letter queue (scripts/requeue.py list):", 1)[1]
    assert "process_email" in listing and "SMTP 550" in listing


def test_demo_files_the_replies_in_the_stores_mailbox(demo_run: DemoRun) -> None:
    # The mailbox as the record (decision 0019): each sent reply in Sent, the held one in
    # Drafts, each answered email marked read and answered in the INBOX.
    mailbox = demo_run.summary["mailbox"]
    assert (mailbox["sent"], mailbox["drafts"], mailbox["answered"]) == (4, 1, 4), mailbox
    assert mailbox["jobs_waiting"] == 0
    assert "Mailbox: Sent folder: 4 replies filed, Drafts: 1 held" in demo_run.stdout


def test_demo_charges_credits_for_replies_and_refunds_the_undelivered_one(
    demo_run: DemoRun,
) -> None:
    summary = demo_run.summary
    assert summary["counts"] == {
        "answered": 4,
        "held": 1,
        "skipped": 2,
        "spam": 1,
        "dead_letter": 1,
    }
    # The four sent replies were charged; the held draft costs nothing (a credit pays for a
    # reply that is sent) and the refused reply was refunded.
    assert summary["credits_start"] - summary["credits_left"] == 4
    assert "queue_stats():" in demo_run.stdout
    assert "queue_metrics after aggregate_queue_metrics()" in demo_run.stdout


def test_demo_stops_what_it_started(
    demo_run: DemoRun,
) -> None:
    out = demo_run.stdout
    assert "stopped everything the demo started" in out
    worker_port = int(re.search(r"http://127\.0\.0\.1:(\d+)  \(gunicorn log", out)[1])
    imap_port = int(re.search(r"imaps://127\.0\.0\.1:(\d+)", out)[1])
    smtp_port = int(re.search(r"SMTP  127\.0\.0\.1:(\d+)", out)[1])
    for port in (worker_port, imap_port, smtp_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    if not demo_run.cluster_was_online:
        # The demo brought its cluster up, so it brought it down again.
        assert cluster_status(DEMO_PGPORT) == "down"


def test_demo_is_driven_by_pg_cron_through_pg_net(demo_run: DemoRun) -> None:
    out = demo_run.stdout
    # The first fetch is the fetch-emails job's own command; then the schedule takes over.
    assert "fetch-emails cron job's own command: select public.call_worker('/fetch-emails')" in out
    assert re.search(r"pg_cron process-queue: succeeded", out), out[-4000:]
    statuses = demo_run.summary["scheduled_http_statuses"]
    # Every scheduled call was authenticated: started (202) or already running (409).
    assert statuses and set(statuses) <= {202, 409}, statuses


def test_demo_tells_the_store_owner_about_the_held_reply_and_the_dead_letter(
    demo_run: DemoRun,
) -> None:
    told = demo_run.summary["notifications"]
    (digest,) = told["digests"]  # both in one digest
    assert digest["to"] == ["dona@lojaexemplo.com.br"]  # the store's owner, by default
    assert sorted(digest["kinds"]) == ["dead_letter", "held_reply"]
    assert digest["subject"] == (
        "[Loja Exemplo] 2 things need a person: 1 reply waiting, 1 dead letter"
    )
    assert digest["webhook"] is True and told["webhook_calls"] == 1
    out = demo_run.stdout
    assert "Notifications (the store's people are told when something needs them):" in out
    assert "webhook receiver: 1 call(s)" in out
