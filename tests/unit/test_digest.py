"""The notification digest's pure parts: what it says, what it never carries, how it is marked;
the console form's fields; the webhook's host rule."""

from __future__ import annotations

from typing import Any

import pytest

from worker import digest, loops, mime, webhook
from worker.console.notifications import changes_from_form
from worker.errors import PermanentError

STORE = "6f1c2d3e-0000-4000-8000-000000000001"
JOB = "0190aaaa-bbbb-7ccc-8ddd-eeeeeeeeeeee"


def taken(*items: dict[str, Any]) -> dict[str, Any]:
    return {
        "digest": {"job_id": JOB},
        "store": {"id": STORE, "name": "Loja  Exemplo", "support_email": "help@loja.test"},
        "items": list(items),
    }


HELD = {
    "kind": "held_reply",
    "ref": "r1",
    "detail": {
        "conversation_id": "c1",
        "subject": "Re: Pedido quebrado",
        "customer": "ana@example.com",
        "hold_reason": "complaint",
    },
}
DEAD = {
    "kind": "dead_letter",
    "ref": "j1",
    "detail": {
        "job_type": "process_email",
        "error": "smtp: 550 no such user",
        "subject": "Where is my order?",
        "customer": "john@example.com",
    },
}
IMAP = {
    "kind": "credentials_failed",
    "ref": f"imap:{STORE}",
    "detail": {"service": "imap", "consecutive_failures": 5, "error": "login rejected"},
}
LOW = {"kind": "credits_low", "ref": "credits_low", "detail": {"credits": 3, "threshold": 5}}
# What the credit logic (s2-credits) records: one item per episode without credits.
WAITING = {
    "kind": "waiting_for_credits",
    "ref": "episode-7",
    "detail": {"credits": 0, "waiting": 1, "conversation_id": "c9"},
}


def test_the_subject_counts_each_kind_in_the_order_people_act_on_them() -> None:
    d = digest.Digest.from_taken(taken(HELD, DEAD, IMAP, LOW, dict(HELD, ref="r2")), None)
    assert digest.subject(d) == (
        "[Loja Exemplo] 5 things need a person: 1 failing connection, credits low, "
        "2 replies waiting, 1 dead letter"
    )


def test_the_text_links_each_item_to_the_console_and_never_carries_a_body() -> None:
    d = digest.Digest.from_taken(taken(HELD, DEAD, IMAP), "https://w.example/")
    text = digest.text(d)
    assert "https://w.example/console/conversations/c1" in text
    assert "https://w.example/console/dead-letters" in text
    assert "https://w.example/console/health" in text
    assert "the mailbox (IMAP) keeps failing (5 failures in a row)" in text
    assert "Re: Pedido quebrado - ana@example.com (complaint)" in text
    assert "body" not in {k for i in d.items for k in i.detail}


def test_without_a_console_url_there_are_no_links() -> None:
    text = digest.text(digest.Digest.from_taken(taken(HELD), None))
    assert "http" not in text


def test_long_fields_are_cut_and_line_breaks_folded() -> None:
    long = dict(HELD, detail={**HELD["detail"], "subject": "x\r\nBcc: evil@x.test " + "y" * 500})
    line = digest.item_line(digest.Digest.from_taken(taken(long), None).items[0])
    assert "\n" not in line and len(line) < 260 and line.count("y") < 200


def test_the_email_is_marked_automatic_and_our_own_fetch_would_skip_it() -> None:
    d = digest.Digest.from_taken(taken(HELD), None)
    message = digest.build_email(d, ["owner@loja.test"])
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"] == f"<notify-{JOB}@loja.test>"  # the same on every attempt
    parsed = mime.parse_message(message.as_bytes(), uid=1)
    assert loops.auto_reply_reason(parsed, store_addresses=[]) == loops.AUTO_SUBMITTED
    assert loops.auto_reply_reason(parsed, store_addresses=["help@loja.test"]) == loops.OWN_ADDRESS


def test_the_webhook_body_is_slack_text_with_escaped_fields() -> None:
    tricky = dict(HELD, detail={**HELD["detail"], "subject": "<!channel> & <http://x|y>"})
    body = digest.webhook_body(digest.Digest.from_taken(taken(tricky), "https://w.example"))
    assert "<!channel>" not in body["text"] and "&lt;!channel&gt; &amp;" in body["text"]
    assert "<https://w.example/console/conversations/c1|open>" in body["text"]
    assert body["items"] == [{"kind": "held_reply", "ref": "r1"}]
    assert body["store_id"] == STORE


@pytest.mark.parametrize(
    ("fields", "changes"),
    [
        (
            {"addresses": "a@x.test,\nb@x.test; c@x.test"},
            {"addresses": ["a@x.test", "b@x.test", "c@x.test"]},
        ),
        ({"addresses": ""}, {"addresses": None}),
        (
            {"digest_interval_minutes": "30", "digest_wait_seconds": "0"},
            {"digest_interval_minutes": 30, "digest_wait_seconds": 0},
        ),
        ({"digest_interval_minutes": "-3"}, {"digest_interval_minutes": "-3"}),
        ({"webhook_url": "  "}, {}),
        ({"webhook_url": "https://h.test/x"}, {"webhook_url": "https://h.test/x"}),
        ({"webhook_url": "https://h.test/x", "remove_webhook": "true"}, {"webhook_url": None}),
        (
            {"addresses": ["a@x.test"], "remove_webhook": True},
            {"addresses": ["a@x.test"], "webhook_url": None},
        ),
    ],
)
def test_the_console_form_becomes_the_changes_the_database_validates(
    fields: dict[str, Any], changes: dict[str, Any]
) -> None:
    assert changes_from_form(fields) == changes


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "https://localhost/hook",
        "https://10.1.2.3/x",
        "https://169.254.169.254/latest",
        "https://[::1]/x",
    ],
)
def test_a_webhook_on_a_private_or_loopback_host_is_refused(url: str) -> None:
    with pytest.raises(PermanentError) as refused:
        webhook.check_host(url, allow_private=False)
    assert "not a public address" in str(refused.value)
    assert "/hook" not in str(refused.value) and "latest" not in str(refused.value)


def test_private_hosts_are_allowed_only_when_asked() -> None:
    assert webhook.check_host("http://127.0.0.1:9/hook", allow_private=True) == "127.0.0.1"
    with pytest.raises(PermanentError):
        webhook.check_host("ftp://example.com/x", allow_private=True)


def test_credit_items_read_as_what_happens_next() -> None:
    d = digest.Digest.from_taken(taken(WAITING, LOW), "https://w.example")
    assert digest.subject(d) == (
        "[Loja Exemplo] 2 things need a person: emails waiting for credits, credits low"
    )
    text = digest.text(d)
    assert "1 email(s) waiting for credits (balance 0); they are answered automatically" in text
    assert "3 credits left (warning below 5)" in text
    assert "https://w.example/console/conversations/c9" in text
