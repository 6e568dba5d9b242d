"""ClaudeResponder with the real anthropic SDK against the loopback fake: outputs and error classes.

The SDK sends through httpx2, which respx cannot intercept, hence the in-process HTTP fake.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from worker import errors, prompts
from worker.claude import ClaudeResponder
from worker.devstack.fake_claude import TEST_API_KEY, FakeClaude, FakeReply, text_reply
from worker.responder import (
    Classification,
    EmailFacts,
    InvalidModelOutputError,
    ReplyContext,
    StoreVoice,
    validate_classification,
)

EMAIL = EmailFacts("ana@example.com.br", "Cadê meu pedido?", "Meu pedido #1001 não chegou.")
STORE = StoreVoice("Loja Demo", signature="Equipe Loja Demo")
GOOD = {
    "intent": "shipping_delay",
    "language": "pt-BR",
    "sentiment": "negative",
    "needs_human": False,
    "confidence": 0.93,
    "order_numbers": ["#1001"],
    "is_spam": False,
}


@pytest.fixture
def responder(fake_claude: FakeClaude) -> Iterator[ClaudeResponder]:
    r = ClaudeResponder(TEST_API_KEY, "claude-haiku-4-5", fake_claude.base_url, 5.0)
    yield r
    r.close()


def test_classify_sends_a_forced_tool_call_and_validates(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.reply_tool(prompts.CLASSIFY_TOOL_NAME, GOOD)
    result = responder.classify(EMAIL)
    assert result == Classification(
        intent="shipping_delay",
        language="pt-BR",
        sentiment="negative",
        needs_human=False,
        confidence=0.93,
        order_numbers=["1001"],
        is_spam=False,
    )
    [request] = fake_claude.messages
    assert request.body["model"] == "claude-haiku-4-5"
    assert request.body["tool_choice"] == {"type": "tool", "name": prompts.CLASSIFY_TOOL_NAME}
    assert request.body["system"] == prompts.CLASSIFY_SYSTEM
    assert "Meu pedido #1001" in request.user_text


def test_draft_appends_signature_and_keeps_language(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.reply_tool(
        prompts.DRAFT_TOOL_NAME,
        {"body_text": "Olá! Seu pedido está a caminho.", "language": "pt-BR", "needs_human": False},
    )
    classification = validate_classification(GOOD)
    draft = responder.draft(EMAIL, classification, ReplyContext(STORE, []))
    assert draft.body_text == "Olá! Seu pedido está a caminho.\n\nEquipe Loja Demo"
    assert (draft.language, draft.model, draft.hold_reason) == ("pt-BR", "claude-haiku-4-5", None)


def test_draft_needing_a_human_is_held(fake_claude: FakeClaude, responder: ClaudeResponder) -> None:
    fake_claude.reply_tool(
        prompts.DRAFT_TOOL_NAME,
        {
            "body_text": "We will look into it.",
            "language": "en",
            "needs_human": True,
            "human_reason": "customer threatens a chargeback",
        },
    )
    draft = responder.draft(EMAIL, validate_classification(GOOD), ReplyContext(STORE, []))
    assert draft.hold_reason == "needs_human: customer threatens a chargeback"


def test_unscripted_requests_get_plausible_answers(responder: ClaudeResponder) -> None:
    # The default of the fake (used by the demo and benchmarks) must pass our own validation.
    classification = responder.classify(EMAIL)
    assert classification.language == "pt-BR"
    assert classification.order_numbers == ["1001"]
    draft = responder.draft(EMAIL, classification, ReplyContext(STORE, []))
    assert "Não conseguimos localizar um pedido" in draft.body_text


def test_429_is_transient_with_retry_after_and_not_retried_by_the_sdk(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.reply_error(
        429, "Number of request tokens has exceeded your rate limit", retry_after="17"
    )
    with pytest.raises(errors.TransientError) as caught:
        responder.classify(EMAIL)
    assert caught.value.service == "claude"
    assert caught.value.retry_after == 17.0
    assert "rate_limit_error" in str(caught.value)
    assert len(fake_claude.messages) == 1  # max_retries=0: the queue does the backoff


@pytest.mark.parametrize("status", [529, 500, 503])
def test_overload_and_server_errors_are_transient(
    fake_claude: FakeClaude, responder: ClaudeResponder, status: int
) -> None:
    fake_claude.reply_error(status)
    with pytest.raises(errors.TransientError) as caught:
        responder.classify(EMAIL)
    assert caught.value.service == "claude"
    assert f"HTTP {status}" in str(caught.value)
    assert len(fake_claude.messages) == 1


def test_529_retry_after_is_honoured(fake_claude: FakeClaude, responder: ClaudeResponder) -> None:
    fake_claude.reply_error(529, "Overloaded", retry_after="30")
    with pytest.raises(errors.TransientError) as caught:
        responder.classify(EMAIL)
    assert caught.value.retry_after == 30.0


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_request_errors_are_permanent(
    fake_claude: FakeClaude, responder: ClaudeResponder, status: int
) -> None:
    fake_claude.reply_error(status, "bad things")
    with pytest.raises(errors.PermanentError) as caught:
        responder.classify(EMAIL)
    assert caught.value.service == "claude"
    assert "bad things" in str(caught.value)


def test_wrong_api_key_is_permanent(fake_claude: FakeClaude) -> None:
    wrong = ClaudeResponder("sk-ant-wrong", base_url=fake_claude.base_url)
    with pytest.raises(errors.PermanentError, match="HTTP 401: authentication_error"):
        wrong.classify(EMAIL)
    wrong.close()


def test_timeout_is_transient(fake_claude: FakeClaude) -> None:
    impatient = ClaudeResponder(TEST_API_KEY, base_url=fake_claude.base_url, timeout_seconds=0.3)
    fake_claude.script(FakeReply(200, {"never": "read"}, delay=30))
    with pytest.raises(errors.TransientError, match="timed out"):
        impatient.classify(EMAIL)
    impatient.close()


def test_dropped_connection_is_transient(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.script(FakeReply(drop_connection=True))
    with pytest.raises(errors.TransientError, match="connection failed"):
        responder.classify(EMAIL)


def test_unreachable_server_is_transient() -> None:
    # Port 9 (discard) on loopback: nothing listens there in the test environment.
    nowhere = ClaudeResponder(TEST_API_KEY, base_url="http://127.0.0.1:9", timeout_seconds=2)
    with pytest.raises(errors.TransientError):
        nowhere.classify(EMAIL)
    nowhere.close()


BAD_OUTPUTS: list[Any] = [
    {**GOOD, "intent": "world_domination"},
    {**GOOD, "confidence": 1.7},
    {key: value for key, value in GOOD.items() if key != "language"},
]


@pytest.mark.parametrize("bad", BAD_OUTPUTS)
def test_malformed_output_is_asked_again_once_then_permanent(
    fake_claude: FakeClaude, responder: ClaudeResponder, bad: dict[str, Any]
) -> None:
    fake_claude.reply_tool(prompts.CLASSIFY_TOOL_NAME, bad)
    fake_claude.reply_tool(prompts.CLASSIFY_TOOL_NAME, bad)
    with pytest.raises(InvalidModelOutputError) as caught:
        responder.classify(EMAIL)
    assert caught.value.error_type == "permanent"
    assert caught.value.service == "claude"
    assert len(fake_claude.messages) == 2


def test_one_malformed_output_then_a_good_one_succeeds(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.script(text_reply("Sure! The intent is order status."))
    fake_claude.reply_tool(prompts.CLASSIFY_TOOL_NAME, GOOD)
    assert responder.classify(EMAIL).intent == "shipping_delay"
    assert len(fake_claude.messages) == 2


def test_truncated_tool_call_is_invalid(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    for _ in range(2):
        fake_claude.reply_tool(prompts.CLASSIFY_TOOL_NAME, GOOD, stop_reason="max_tokens")
    with pytest.raises(InvalidModelOutputError, match="max_tokens"):
        responder.classify(EMAIL)


def test_empty_draft_body_is_invalid(fake_claude: FakeClaude, responder: ClaudeResponder) -> None:
    for _ in range(2):
        fake_claude.reply_tool(
            prompts.DRAFT_TOOL_NAME, {"body_text": "  ", "language": "en", "needs_human": False}
        )
    with pytest.raises(InvalidModelOutputError, match="empty reply body"):
        responder.draft(EMAIL, validate_classification(GOOD), ReplyContext(STORE, []))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"intent": "refund_everything"}, "unknown intent"),
        ({"sentiment": "furious"}, "unknown sentiment"),
        ({"language": "Portuguese (Brazil)"}, "bad language tag"),
        ({"language": 7}, "bad language tag"),
        ({"needs_human": "yes"}, "needs_human"),
        ({"confidence": -0.1}, "outside 0..1"),
        ({"confidence": float("nan")}, "outside 0..1"),
        ({"confidence": True}, "not a number"),
        ({"order_numbers": "1001"}, "order_numbers"),
        ({"is_spam": "no"}, "is_spam"),
    ],
)
def test_validation_rejects(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidModelOutputError, match=message):
        validate_classification({**GOOD, **change})


def test_validation_normalises() -> None:
    result = validate_classification(
        {
            **GOOD,
            "language": "pt_br",
            "intent": "spam",
            "is_spam": False,
            "order_numbers": ["#1001", "pedido 1001", "2002", ""],
        }
    )
    assert result.language == "pt-BR"
    assert result.is_spam  # a spam intent is spam whatever the flag says
    assert result.order_numbers == ["1001", "2002"]
    minimal = {k: v for k, v in GOOD.items() if k not in ("order_numbers", "is_spam")}
    assert validate_classification(minimal).order_numbers == []
