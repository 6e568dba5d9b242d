"""The fake Claude's `usage`: token estimates and the prompt cache as the API reports them, so
bench/answers.py and the events count what the real API would bill."""

from __future__ import annotations

from typing import Any

from worker.devstack import fake_claude
from worker.devstack.fake_claude import PromptCache, estimate_tokens

MARK = {"type": "ephemeral"}


def request(system_chars: int, store_chars: int, email: str, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "system": [{"type": "text", "text": "s" * system_chars, "cache_control": MARK}],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "k" * store_chars, "cache_control": MARK},
                    {"type": "text", "text": email},
                ],
            }
        ],
    }


def test_a_prefix_under_the_models_minimum_is_never_cached() -> None:
    cache = PromptCache()
    body = request(3_500, 0, "hello", "claude-haiku-4-5")  # 1,000 tokens < 4,096
    for _ in range(2):
        usage = cache.usage(body, 50)
        assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
        assert usage["input_tokens"] == 1_000 + estimate_tokens("hello")
        assert usage["output_tokens"] == 50


def test_the_first_request_writes_the_cache_and_the_next_reads_it() -> None:
    cache = PromptCache()
    first = cache.usage(request(3_500, 14_000, "email one", "claude-haiku-4-5"), 10)
    # 1,000 static + 4,000 store tokens: only the second mark reaches 4,096.
    assert first["cache_creation_input_tokens"] == 5_000
    assert first["cache_read_input_tokens"] == 0
    assert first["input_tokens"] == estimate_tokens("email one")
    assert first["cache_creation"]["ephemeral_5m_input_tokens"] == 5_000
    second = cache.usage(request(3_500, 14_000, "another email", "claude-haiku-4-5"), 10)
    assert second["cache_read_input_tokens"] == 5_000
    assert second["cache_creation_input_tokens"] == 0
    assert second["input_tokens"] == estimate_tokens("another email")


def test_another_store_reads_the_shared_static_prefix_and_writes_its_own() -> None:
    cache = PromptCache()
    cache.usage(request(7_000, 3_500, "a", "claude-sonnet-4-5"), 10)  # 2,000 + 1,000 tokens
    other = cache.usage(request(7_000, 7_000, "b", "claude-sonnet-4-5"), 10)
    assert other["cache_read_input_tokens"] == 2_000  # the static prefix, 1,024 minimum
    assert other["cache_creation_input_tokens"] == 2_000  # this store's block


def test_an_expired_entry_is_written_again(monkeypatch: Any) -> None:
    cache = PromptCache()
    now = [1_000.0]
    monkeypatch.setattr(fake_claude.time, "monotonic", lambda: now[0])
    body = request(3_500, 14_000, "x", "claude-haiku-4-5")
    cache.usage(body, 10)
    now[0] += fake_claude.CACHE_TTL_SECONDS + 1
    assert cache.usage(body, 10)["cache_creation_input_tokens"] == 5_000


def test_tools_and_the_tool_use_prompt_count_as_input() -> None:
    body = {**request(350, 0, "", "claude-haiku-4-5"), "tools": [{"name": "t", "input_schema": {}}]}
    usage = PromptCache().usage(body, 0)
    tool = estimate_tokens('{"name": "t", "input_schema": {}}')
    assert usage["input_tokens"] == fake_claude.TOOL_USE_SYSTEM_TOKENS + tool + 100
