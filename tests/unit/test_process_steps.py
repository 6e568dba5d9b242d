"""The pure decisions of the email pipeline (worker.pipeline.steps): when to hold, what to look
up in Shopify; the job trace (worker.queue.trace) and the breaker guard
(worker.queue.breakers)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from worker.errors import (
    CircuitOpenError,
    DatabaseError,
    PermanentError,
    TransientError,
    classify_http_status,
)
from worker.pipeline import steps
from worker.queue import breakers
from worker.queue.breakers import Breakers, guarded
from worker.queue.outcome import DEFAULT_DEFER_SECONDS, Defer, for_error
from worker.queue.trace import JobTrace, finish
from worker.responder import Classification, OrderFacts


def classification(**overrides: Any) -> Classification:
    base = Classification(
        intent="order_status",
        language="pt-BR",
        sentiment="neutral",
        needs_human=False,
        confidence=0.9,
    )
    return dataclasses.replace(base, **overrides)


def order(name: str, email: str) -> OrderFacts:
    return OrderFacts(
        name=name,
        created_at="2025-09-28T14:12:00Z",
        email=email,
        customer_email=email,
        financial_status="PAID",
        fulfillment_status="FULFILLED",
    )


AUTO = {"reply_mode": "auto_send"}


# -- hold_reason --------------------------------------------------------------------------------


def test_a_confident_ordinary_answer_is_sent() -> None:
    assert steps.hold_reason(classification(), None, AUTO, 0.6) is None


@pytest.mark.parametrize(
    ("overrides", "store", "expected"),
    [
        ({}, {"reply_mode": "draft_only"}, "draft_only"),
        ({"needs_human": True}, AUTO, "needs_human"),
        ({"intent": "complaint"}, AUTO, "complaint"),
        ({"confidence": 0.59}, AUTO, "low_confidence"),
        # The store's draft-only setting wins over every other reason.
        ({"needs_human": True, "intent": "complaint"}, {"reply_mode": "draft_only"}, "draft_only"),
    ],
)
def test_hold_reasons(overrides: dict[str, Any], store: dict[str, Any], expected: str) -> None:
    assert steps.hold_reason(classification(**overrides), None, store, 0.6) == expected


def test_the_models_own_request_for_a_human_holds_the_reply() -> None:
    reason = steps.hold_reason(classification(), "needs_human: legal threat", AUTO, 0.6)
    assert reason == "needs_human: legal threat"


def test_confidence_at_the_threshold_is_enough() -> None:
    assert steps.hold_reason(classification(confidence=0.6), None, AUTO, 0.6) is None


# -- lookup_orders -------------------------------------------------------------------------------


class FakeShop:
    """An OrderLookup over a dict, recording every call."""

    def __init__(self, *orders: OrderFacts) -> None:
        self.orders = {o.name: o for o in orders}
        self.calls: list[tuple[str, str]] = []

    def order_by_number(self, number: str) -> OrderFacts | None:
        self.calls.append(("number", number))
        return self.orders.get(f"#{number}")

    def recent_orders_for_email(self, email: str, limit: int = 5) -> list[OrderFacts]:
        self.calls.append(("email", email))
        return [o for o in self.orders.values() if o.email == email][:limit]


ANA, JOHN = "ana@example.com", "john@example.com"
SHOP = (order("#1001", ANA), order("#1002", JOHN))


def test_the_senders_own_mentioned_order_needs_no_second_query() -> None:
    shop = FakeShop(*SHOP)
    found = steps.lookup_orders(shop, JOHN, ["1002"])
    assert [o.name for o in found] == ["#1002"]
    assert shop.calls == [("number", "1002")]


def test_without_a_number_the_senders_recent_orders_are_used() -> None:
    shop = FakeShop(*SHOP)
    found = steps.lookup_orders(shop, JOHN, [])
    assert [o.name for o in found] == ["#1002"]
    assert shop.calls == [("email", JOHN)]


def test_someone_elses_number_and_an_unknown_one_lead_to_the_same_queries_and_orders() -> None:
    # No oracle: whether #1001 exists must not change what John's reply can contain.
    results = {}
    for number in ("1001", "9999"):
        shop = FakeShop(*SHOP)
        found = steps.lookup_orders(shop, JOHN, [number])
        results[number] = ([o.name for o in found if o.email == JOHN], [c[0] for c in shop.calls])
    assert results["1001"] == results["9999"] == (["#1002"], ["number", "email"])


def test_at_most_three_mentioned_numbers_are_looked_up() -> None:
    shop = FakeShop(*SHOP)
    numbers = ["1", "2", "3", "4", "5"]
    steps.lookup_orders(shop, JOHN, numbers)
    assert [c for c in shop.calls if c[0] == "number"] == [("number", n) for n in numbers[:3]]


# -- store_addresses, JobTrace, finish -----------------------------------------------------------


def test_store_addresses_are_lower_cased_and_include_the_extra_ones() -> None:
    store = {"support_email": "Suporte@Loja.com.br", "extra_addresses": ["Vendas@Loja.com.br"]}
    assert steps.store_addresses(store) == ["suporte@loja.com.br", "vendas@loja.com.br"]
    assert steps.store_addresses({"support_email": None}) == []


def test_job_trace_events_carry_the_jobs_keys_and_the_message_once_known() -> None:
    trace = JobTrace({"id": "j1", "store_id": "s1", "conversation_id": "c1"})
    trace.event("process.validated")
    trace.message_id = "m1"
    trace.event("process.classified", intent="other")
    assert trace.events == [
        {
            "store_id": "s1",
            "job_id": "j1",
            "conversation_id": "c1",
            "message_id": None,
            "event_type": "process.validated",
            "detail": {},
        },
        {
            "store_id": "s1",
            "job_id": "j1",
            "conversation_id": "c1",
            "message_id": "m1",
            "event_type": "process.classified",
            "detail": {"intent": "other"},
        },
    ]


def test_timed_steps_land_in_the_summary_and_none_values_are_dropped() -> None:
    trace = JobTrace({"id": "j1"})
    with trace.timed("classify"):
        pass
    summary = finish(trace, "replied", reply_id="r1", credit=None)
    assert summary["outcome"] == "replied" and summary["reply_id"] == "r1"
    assert "credit" not in summary
    assert set(summary["timings_ms"]) == {"classify"}
    assert summary["timings_ms"]["classify"] >= 0


# -- guarded ----------------------------------------------------------------------------------


class BreakerDb:
    """The breaker calls of Database, recorded."""

    def __init__(self, allow: bool = True, wait: int = 1) -> None:
        self.allow = allow
        self.wait = wait
        self.recorded: list[tuple[str, bool]] = []

    def circuit_allow(self, service: str) -> bool:
        return self.allow

    def circuit_record(self, service: str, success: bool) -> str:
        self.recorded.append((service, success))
        return "closed"

    def circuit_wait_seconds(self, service: str) -> int:
        if self.wait < 0:
            raise DatabaseError("circuit_wait_seconds: connection refused")
        return self.wait


def services_with(db: BreakerDb) -> Breakers:
    return Breakers(db)


def test_an_open_breaker_stops_the_call_before_it_is_made() -> None:
    calls: list[int] = []
    with pytest.raises(CircuitOpenError):
        guarded(services_with(BreakerDb(allow=False)), "claude", lambda: calls.append(1))
    assert calls == []


def test_a_job_stopped_by_an_open_breaker_waits_the_breakers_own_reopen_time() -> None:
    with pytest.raises(CircuitOpenError) as raised:
        guarded(services_with(BreakerDb(allow=False, wait=240)), "claude", lambda: 42)
    assert raised.value.retry_after_seconds == 240
    assert for_error(raised.value) == Defer(240, "claude: circuit open for claude")


def test_when_the_reopen_time_cannot_be_read_the_default_deferral_applies() -> None:
    with pytest.raises(CircuitOpenError) as raised:
        guarded(services_with(BreakerDb(allow=False, wait=-1)), "claude", lambda: 42)
    assert raised.value.retry_after_seconds is None
    reason = "claude: circuit open for claude"
    assert for_error(raised.value) == Defer(DEFAULT_DEFER_SECONDS, reason)


def test_outages_count_against_the_breaker_and_bad_requests_do_not() -> None:
    db = BreakerDb()
    services = services_with(db)

    def fail(exc: Exception) -> Any:
        raise exc

    assert guarded(services, "claude", lambda: 42) == 42
    with pytest.raises(TransientError):
        guarded(services, "claude", lambda: fail(TransientError("HTTP 529")))
    with pytest.raises(PermanentError):
        guarded(services, "claude", lambda: fail(classify_http_status(400, None)))
    with pytest.raises(PermanentError):
        guarded(services, "claude", lambda: fail(classify_http_status(401, None)))
    with pytest.raises(PermanentError):
        guarded(services, "claude", lambda: fail(classify_http_status(403, None)))
    # the status decides, not the wording
    with pytest.raises(PermanentError):
        guarded(services, "claude", lambda: fail(PermanentError("order 401 not found")))
    assert db.recorded == [
        ("claude", True),
        ("claude", False),
        ("claude", True),
        ("claude", False),
        ("claude", False),
        ("claude", True),
    ]


class CountingBreakerDb(BreakerDb):
    def __init__(self) -> None:
        super().__init__()
        self.allow_calls = 0

    def circuit_allow(self, service: str) -> bool:
        self.allow_calls += 1
        return self.allow


def test_a_breaker_seen_closed_is_trusted_briefly_and_our_failures_end_that(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(breakers.time, "monotonic", lambda: now[0])
    db = CountingBreakerDb()
    services = services_with(db)

    def fail() -> Any:
        raise TransientError("HTTP 529")

    guarded(services, "claude", lambda: 1)  # asks, records: the breaker is closed
    assert (db.allow_calls, len(db.recorded)) == (1, 1)
    guarded(services, "claude", lambda: 2)  # within the TTL: no database call at all
    assert (db.allow_calls, len(db.recorded)) == (1, 1)

    with pytest.raises(TransientError):
        guarded(services, "claude", fail)  # a failure always reaches the database
    assert db.recorded[-1] == ("claude", False)
    guarded(services, "claude", lambda: 3)  # and the next call asks again
    assert db.allow_calls == 2

    now[0] += breakers.BREAKER_TTL_SECONDS + 0.1  # another container may have opened it since
    db.allow = False
    with pytest.raises(CircuitOpenError):
        guarded(services, "claude", lambda: 4)


# -- wants_orders --------------------------------------------------------------------------------


def test_orders_are_wanted_for_a_named_order_or_a_reply_to_the_sender() -> None:
    assert steps.wants_orders(["1001"], ANA, None)
    assert steps.wants_orders([], ANA, None)  # "where is my parcel?": the sender's recent orders
    assert steps.wants_orders([], ANA, ANA.upper())
    assert steps.wants_orders(["1001"], ANA, "ana.work@example.com")


def test_a_reply_to_elsewhere_without_a_named_order_needs_no_lookup() -> None:
    # The reply goes to the Reply-To address, and a reply there never carries order facts.
    assert not steps.wants_orders([], ANA, "ana.work@example.com")
