"""The privacy rule: only the sender's own orders are disclosed, only to the matching address."""

from __future__ import annotations

import pytest

from worker.privacy import disclosable_orders, normalise_address, reply_recipient
from worker.responder import OrderFacts


def order(name: str, email: str | None, customer_email: str | None = None) -> OrderFacts:
    return OrderFacts(name, "2025-09-01T00:00:00Z", email, customer_email, "PAID", "FULFILLED")


ANA_1 = order("#1001", "Ana.Souza@Example.com.br")
ANA_2 = order("#1005", None, "ana.souza@example.com.br")
JOHN = order("#1002", "john@example.com")


def test_keeps_only_orders_of_the_sender_case_insensitively() -> None:
    found = [ANA_1, JOHN, ANA_2]
    assert disclosable_orders("  ANA.SOUZA@example.com.br ", found) == [ANA_1, ANA_2]


def test_someone_elses_order_number_looks_exactly_like_no_order() -> None:
    mismatch = disclosable_orders("mallory@example.com", [JOHN])
    unknown = disclosable_orders("mallory@example.com", [])
    assert mismatch == unknown == []


def test_orders_without_any_email_are_never_disclosed() -> None:
    assert disclosable_orders("a@example.com", [order("#1", None, None)]) == []
    assert disclosable_orders("", [order("#1", "", "")]) == []


def test_duplicates_from_both_lookups_collapse() -> None:
    assert disclosable_orders("john@example.com", [JOHN, JOHN]) == [JOHN]


def test_display_names_are_ignored() -> None:
    assert normalise_address('"Ana" <Ana@Example.com>') == "ana@example.com"
    assert disclosable_orders("Ana <ana.souza@example.com.br>", [ANA_1]) == [ANA_1]


@pytest.mark.parametrize("reply_to", [None, "", "ANA@example.com", "Ana <ana@example.com>"])
def test_no_distinct_reply_to_goes_to_from(reply_to: str | None) -> None:
    assert reply_recipient("ana@example.com", reply_to, True) == ("ana@example.com", True)
    assert reply_recipient("ana@example.com", reply_to, False) == ("ana@example.com", False)


def test_forged_from_with_attacker_reply_to_sends_facts_only_to_from() -> None:
    # Orders were matched on From; the attacker's Reply-To must never receive them.
    to, facts = reply_recipient("victim@example.com", "attacker@evil.example", True)
    assert (to, facts) == ("victim@example.com", True)


def test_distinct_reply_to_is_honoured_for_replies_without_facts() -> None:
    to, facts = reply_recipient("ana@example.com", "ana.work@example.org", False)
    assert (to, facts) == ("ana.work@example.org", False)


@pytest.mark.parametrize(
    "reply_to",
    ["=?utf-8?q?a?=@example.com", "josé@example.com", '"odd"@example.com', "x@localhost"],
)
def test_a_reply_to_the_reply_cannot_be_addressed_to_is_ignored(reply_to: str) -> None:
    # Validation checked From, not Reply-To: obeying it would charge a credit for a reply that
    # cannot be built (issue 13 item 5), or mail an odd destination.
    assert reply_recipient("ana@example.com", reply_to, False) == ("ana@example.com", False)
