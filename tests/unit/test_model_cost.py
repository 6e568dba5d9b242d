"""List prices and the cost of one email's tokens (worker.model_cost)."""

from __future__ import annotations

from worker.model_cost import ModelUsage, cost_usd, price_of


def test_usage_from_the_api_counts_every_kind_and_adds_up() -> None:
    one = ModelUsage.from_api(
        {
            "input_tokens": 100,
            "output_tokens": 20,
            "cache_creation_input_tokens": 4_096,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        }
    )
    two = ModelUsage.from_api({"input_tokens": 90, "output_tokens": 10})  # older API: no cache
    assert one + two == ModelUsage(2, 190, 30, 4_096, 0)
    assert ModelUsage.from_api(None) == ModelUsage(calls=1)


def test_cost_at_list_price_per_kind_of_token() -> None:
    usage = ModelUsage(1, input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost_usd("claude-haiku-4-5", usage) == 6.0
    cached = ModelUsage(1, cache_creation_input_tokens=1_000_000, cache_read_input_tokens=1_000_000)
    assert cost_usd("claude-haiku-4-5", cached) == 1.35
    # A dated id is the same model; an unknown one has no price rather than a guess.
    assert price_of("claude-haiku-4-5-20251001") == price_of("claude-haiku-4-5")
    assert cost_usd("offline-responder", usage) is None
