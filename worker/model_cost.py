"""What model calls cost: Claude list prices, and the cost of the tokens one email used (pure).

The one place prices live. Source: Anthropic's pricing page (platform.claude.com/docs/en/about-
claude/pricing) and the models overview, read 2026-12-01: US dollars per million tokens, base
input, 5-minute cache writes (1.25x input), cache hits (0.1x input), output. Batch and 1-hour
cache prices are not listed because the worker uses neither.
"""

from __future__ import annotations

from dataclasses import dataclass

PRICES_READ_ON = "2026-12-01"
PRICES_SOURCE = "https://platform.claude.com/docs/en/about-claude/pricing"
PER_TOKENS = 1_000_000


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    cache_write: float  # 5-minute ephemeral cache
    cache_read: float
    output: float


# Model ids as the worker sends them (aliases without a date suffix).
PRICES: dict[str, Price] = {
    "claude-haiku-4-5": Price(input=1.00, cache_write=1.25, cache_read=0.10, output=5.00),
    "claude-sonnet-4-5": Price(input=3.00, cache_write=3.75, cache_read=0.30, output=15.00),
    "claude-opus-4-5": Price(input=5.00, cache_write=6.25, cache_read=0.50, output=25.00),
}


@dataclass(frozen=True)
class ModelUsage:
    """Tokens of one or more model calls, as the API reports them in `usage`.

    `input_tokens` is only the uncached part; the prompt's full size is the sum of the three
    input fields.
    """

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: ModelUsage) -> ModelUsage:
        return ModelUsage(
            calls=self.calls + other.calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens
            + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
        )

    @classmethod
    def from_api(cls, usage: object) -> ModelUsage:
        """One call's usage from the SDK's Usage object or its JSON (missing fields count 0)."""

        def field(name: str) -> int:
            value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
            return int(value) if isinstance(value, int | float) else 0

        return cls(
            calls=1,
            input_tokens=field("input_tokens"),
            output_tokens=field("output_tokens"),
            cache_creation_input_tokens=field("cache_creation_input_tokens"),
            cache_read_input_tokens=field("cache_read_input_tokens"),
        )

    def as_event(self) -> dict[str, int]:
        """The fields of a `process.model_usage` event."""
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
        }


def price_of(model: str) -> Price | None:
    """The list price of a model id (a dated id like 'claude-haiku-4-5-20251001' included)."""
    for name, price in PRICES.items():
        if model == name or model.startswith(name + "-"):
            return price
    return None


def cost_usd(model: str, usage: ModelUsage) -> float | None:
    """What `usage` costs at the model's list price; None for a model without a known price."""
    price = price_of(model)
    if price is None:
        return None
    return (
        usage.input_tokens * price.input
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
        + usage.output_tokens * price.output
    ) / PER_TOKENS
