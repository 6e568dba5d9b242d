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
from worker.model_cost import ModelUsage
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
REPLY = {"body_text": "Olá! Seu pedido está a caminho.", "language": "pt-BR"}
ANSWER = {**GOOD, "reply": REPLY}
CONTEXT = ReplyContext(STORE, [])


@pytest.fixture
def responder(fake_claude: FakeClaude) -> Iterator[ClaudeResponder]:
    r = ClaudeResponder(TEST_API_KEY, "claude-haiku-4-5", fake_claude.base_url, 5.0)
    yield r
    r.close()


def test_answer_sends_one_forced_tool_call_and_validates(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, ANSWER)
    result = responder.answer(EMAIL, CONTEXT)
    assert result.classification == Classification(
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
    assert request.body["tool_choice"] == {"type": "tool", "name": prompts.ANSWER_TOOL_NAME}
    assert request.body["system"] == [
        {"type": "text", "text": prompts.ANSWER_SYSTEM, "cache_control": {"type": "ephemeral"}}
    ]
    assert "Meu pedido #1001" in request.user_text


def test_answer_appends_signature_and_keeps_language(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, ANSWER)
    draft = responder.answer(EMAIL, CONTEXT).draft
    assert draft is not None
    assert draft.body_text == "Olá! Seu pedido está a caminho.\n\nEquipe Loja Demo"
    assert (draft.language, draft.model, draft.hold_reason) == ("pt-BR", "claude-haiku-4-5", None)


def test_answer_carries_the_usage_the_api_reported(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, ANSWER)
    usage = responder.answer(EMAIL, CONTEXT).usage
    [request] = fake_claude.messages
    assert request.usage is not None
    assert usage == ModelUsage.from_api(request.usage)
    assert usage.calls == 1 and usage.input_tokens > 0 and usage.output_tokens > 0


def test_a_rejected_attempt_is_counted_in_the_usage(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.script(text_reply("Sure! The intent is order status."))
    fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, ANSWER)
    usage = responder.answer(EMAIL, CONTEXT).usage
    first, second = fake_claude.messages
    assert usage == ModelUsage.from_api(first.usage) + ModelUsage.from_api(second.usage)
    assert usage.calls == 2


def test_spam_gets_no_reply(fake_claude: FakeClaude, responder: ClaudeResponder) -> None:
    fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, {**GOOD, "intent": "spam", "is_spam": True})
    result = responder.answer(EMAIL, CONTEXT)
    assert result.classification.is_spam and result.draft is None


def test_answer_needing_a_human_is_held(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.reply_tool(
        prompts.ANSWER_TOOL_NAME,
        {
            **ANSWER,
            "needs_human": True,
            "human_reason": "customer threatens a chargeback",
            "reply": {"body_text": "We will look into it.", "language": "en"},
        },
    )
    draft = responder.answer(EMAIL, CONTEXT).draft
    assert draft is not None
    assert draft.hold_reason == "needs_human: customer threatens a chargeback"


def test_unscripted_requests_get_plausible_answers(responder: ClaudeResponder) -> None:
    # The default of the fake (used by the demo and benchmarks) must pass our own validation.
    result = responder.answer(EMAIL, CONTEXT)
    assert result.classification.language == "pt-BR"
    assert result.classification.order_numbers == ["1001"]
    assert result.draft is not None
    assert "Não conseguimos localizar um pedido" in result.draft.body_text


def test_429_is_transient_with_retry_after_and_not_retried_by_the_sdk(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.reply_error(
        429, "Number of request tokens has exceeded your rate limit", retry_after="17"
    )
    with pytest.raises(errors.TransientError) as caught:
        responder.answer(EMAIL, CONTEXT)
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
        responder.answer(EMAIL, CONTEXT)
    assert caught.value.service == "claude"
    assert f"HTTP {status}" in str(caught.value)
    assert len(fake_claude.messages) == 1


def test_529_retry_after_is_honoured(fake_claude: FakeClaude, responder: ClaudeResponder) -> None:
    fake_claude.reply_error(529, "Overloaded", retry_after="30")
    with pytest.raises(errors.TransientError) as caught:
        responder.answer(EMAIL, CONTEXT)
    assert caught.value.retry_after == 30.0


@pytest.mark.parametrize("status", [400, 403, 404, 413])
def test_request_errors_are_permanent(
    fake_claude: FakeClaude, responder: ClaudeResponder, status: int
) -> None:
    fake_claude.reply_error(status, "bad things")
    with pytest.raises(errors.PermanentError) as caught:
        responder.answer(EMAIL, CONTEXT)
    assert caught.value.service == "claude"
    assert "bad things" in str(caught.value)


def test_wrong_api_key_is_permanent(fake_claude: FakeClaude) -> None:
    wrong = ClaudeResponder("sk-ant-wrong", base_url=fake_claude.base_url)
    with pytest.raises(errors.PermanentError, match="HTTP 401: authentication_error"):
        wrong.answer(EMAIL, CONTEXT)
    wrong.close()


def test_timeout_is_transient(fake_claude: FakeClaude) -> None:
    impatient = ClaudeResponder(TEST_API_KEY, base_url=fake_claude.base_url, timeout_seconds=0.3)
    fake_claude.script(FakeReply(200, {"never": "read"}, delay=30))
    with pytest.raises(errors.TransientError, match="timed out"):
        impatient.answer(EMAIL, CONTEXT)
    impatient.close()


def test_dropped_connection_is_transient(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.script(FakeReply(drop_connection=True))
    with pytest.raises(errors.TransientError, match="connection failed"):
        responder.answer(EMAIL, CONTEXT)


def test_unreachable_server_is_transient() -> None:
    # Port 9 (discard) on loopback: nothing listens there in the test environment.
    nowhere = ClaudeResponder(TEST_API_KEY, base_url="http://127.0.0.1:9", timeout_seconds=2)
    with pytest.raises(errors.TransientError):
        nowhere.answer(EMAIL, CONTEXT)
    nowhere.close()


BAD_OUTPUTS: list[Any] = [
    {**ANSWER, "intent": "world_domination"},
    {**ANSWER, "confidence": 1.7},
    {key: value for key, value in ANSWER.items() if key != "language"},
    {key: value for key, value in ANSWER.items() if key != "reply"},  # not spam: needs a reply
]


@pytest.mark.parametrize("bad", BAD_OUTPUTS)
def test_malformed_output_is_asked_again_once_then_permanent(
    fake_claude: FakeClaude, responder: ClaudeResponder, bad: dict[str, Any]
) -> None:
    fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, bad)
    fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, bad)
    with pytest.raises(InvalidModelOutputError) as caught:
        responder.answer(EMAIL, CONTEXT)
    assert caught.value.error_type == "permanent"
    assert caught.value.service == "claude"
    assert len(fake_claude.messages) == 2


def test_one_malformed_output_then_a_good_one_succeeds(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    fake_claude.script(text_reply("Sure! The intent is order status."))
    fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, ANSWER)
    assert responder.answer(EMAIL, CONTEXT).classification.intent == "shipping_delay"
    assert len(fake_claude.messages) == 2


def test_truncated_tool_call_is_invalid(
    fake_claude: FakeClaude, responder: ClaudeResponder
) -> None:
    for _ in range(2):
        fake_claude.reply_tool(prompts.ANSWER_TOOL_NAME, ANSWER, stop_reason="max_tokens")
    with pytest.raises(InvalidModelOutputError, match="max_tokens"):
        responder.answer(EMAIL, CONTEXT)


def test_empty_draft_body_is_invalid(fake_claude: FakeClaude, responder: ClaudeResponder) -> None:
    for _ in range(2):
        fake_claude.reply_tool(
            prompts.ANSWER_TOOL_NAME, {**GOOD, "reply": {"body_text": "  ", "language": "en"}}
        )
    with pytest.raises(InvalidModelOutputError, match="empty reply body"):
        responder.answer(EMAIL, CONTEXT)


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
