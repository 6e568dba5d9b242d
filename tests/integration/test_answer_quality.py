"""The answer-quality set through the real pipeline: exactly the right facts reach the model.

Each case of tests/answers/cases runs through worker.devstack.answer_set's harness: its own
store with its knowledge entries, its orders (and other customers' orders) and products in the
fake Shopify, its earlier messages as the conversation, a neighbour store with facts of its
own; the email is stored with ingest_messages and processed by process.run_process with the
real anthropic SDK talking to the fake Claude, which records every request. The test
then reads what the model was shown: every must-contain fact, exactly the orders the case
allows, and none of the must-not facts, nor any neighbour fact, nor in the reply that was
written. Cases whose facts this checkout cannot seed yet (answer_set.SEEDABLE) are strict
xfails, so they turn into failures the moment their feature lands and must be wired in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from worker.devstack import answer_set
from worker.devstack.fake_claude import TEST_API_KEY, FakeClaude, RecordedRequest, data_blocks
from worker.devstack.fake_shopify import FakeShopify
from worker.devstack.smtp_sink import SmtpSink
from worker.devstack.tls import TestCA
from worker.prompts import CONTEXT_BLOCK

pytestmark = pytest.mark.integration

CASES = answer_set.load_cases()
NEIGHBOUR = answer_set.load_neighbour()


def _param(case: answer_set.Case) -> Any:
    missing = answer_set.missing_features(case)
    if not missing:
        return pytest.param(case, id=case.id)
    reason = f"this checkout cannot give the model {', '.join(missing)} yet"
    return pytest.param(case, id=case.id, marks=pytest.mark.xfail(strict=True, reason=reason))


@pytest.fixture(scope="module")
def harness(
    database_url: str, tls_ca: TestCA
) -> Iterator[tuple[answer_set.AnswerHarness, FakeClaude]]:
    """One harness for the module: fakes and SMTP sink of its own, a store per case."""
    with (
        FakeClaude(api_key=TEST_API_KEY) as claude,
        FakeShopify(access_token=answer_set.SHOPIFY_TOKEN) as shopify,
        SmtpSink(tls_ca) as sink,
    ):
        config = answer_set.HarnessConfig(
            database_url=database_url,
            anthropic_key=TEST_API_KEY,
            anthropic_base_url=claude.base_url,
            shopify_base_url=shopify.base_url,
            smtp_host=sink.host,
            smtp_port=sink.port,
            smtp_user=str(sink.username),
            smtp_password=str(sink.password),
            smtp_tls=sink.tls_mode,
            ca_file=str(tls_ca.ca_file),
        )
        h = answer_set.AnswerHarness(config, shopify)
        try:
            yield h, claude
        finally:
            h.close()


def shown_to_model(requests: list[RecordedRequest]) -> str:
    """Everything the model was given: system prompts, tools and user turns, as text."""
    parts = []
    for request in requests:
        body = request.body or {}
        parts.append(json.dumps(body.get("system"), ensure_ascii=False))
        parts.append(json.dumps(body.get("tools"), ensure_ascii=False))
        parts.append(request.user_text)
    return "\n".join(parts)


def orders_shown(requests: list[RecordedRequest]) -> set[str]:
    names: set[str] = set()
    for request in requests:
        context = data_blocks(request.user_text).get(CONTEXT_BLOCK) or {}
        names |= {str(order["order"]) for order in context.get("orders") or []}
    return names


def test_the_set_is_big_enough_and_in_three_languages() -> None:
    assert len(CASES) >= 40
    assert {c.language for c in CASES} == {"pt", "en", "es"}
    for case in CASES:
        assert case.must_contain or case.must_not_contain, case.id


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_exactly_the_right_facts_reach_the_model(
    harness: tuple[answer_set.AnswerHarness, FakeClaude], case: answer_set.Case
) -> None:
    h, claude = harness
    seen = len(claude.messages)

    run = h.run_case(case)

    requests = claude.messages[seen:]
    if not requests:
        # Only mail the pipeline never answers may skip the model, and then nothing reached it.
        assert run.outcome in ("spam", "skipped"), (case.id, run.outcome)
        assert not case.must_contain, case.id
    shown = shown_to_model(requests)
    for fact in case.must_contain:
        assert fact in shown, f"{case.id}: {fact!r} did not reach the model"
    for fact in [*case.must_not_contain, *NEIGHBOUR.facts]:
        assert fact not in shown, f"{case.id}: {fact!r} reached the model"
    if case.orders_seen is not None:
        assert orders_shown(requests) == set(case.orders_seen), case.id
    if case.outcome is not None:
        assert run.outcome == case.outcome, (case.id, run.outcome, run.events)
    if run.reply is not None:
        body = str(run.reply["body_text"])
        for fact in [*case.must_not_contain, *NEIGHBOUR.facts]:
            assert fact not in body, f"{case.id}: {fact!r} is in the reply"
