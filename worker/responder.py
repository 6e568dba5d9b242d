"""What a responder sees and returns, and the Protocol both responders (Claude, offline) share.

`EmailFacts` and `OrderFacts` are the only customer data a model is ever shown; the pipeline
builds them, so nothing else (headers, other customers' orders) can reach a prompt by accident.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from worker import errors
from worker.model_cost import ModelUsage

Intent = Literal[
    "order_status",
    "shipping_delay",
    "return_refund",
    "cancellation",
    "product_question",
    "complaint",
    "other",
    "spam",
]
Sentiment = Literal["positive", "neutral", "negative"]

INTENTS: tuple[str, ...] = get_args(Intent)
SENTIMENTS: tuple[str, ...] = get_args(Sentiment)

# A BCP-47-ish tag: a 2-3 letter language, optional script/region subtags ("pt-BR", "zh-Hant").
MAX_LANGUAGE_TAG_LENGTH = 35
MAX_ORDER_NUMBERS = 10

# Hold reason a responder sets when the model itself says a person should answer.
HOLD_NEEDS_HUMAN = "needs_human"


@dataclass(frozen=True)
class EmailFacts:
    """The customer's email as the model may see it (untrusted text)."""

    sender: str
    subject: str
    body: str
    language_hint: str | None = None


@dataclass(frozen=True)
class Classification:
    """Structured classification of one email, validated against the schema."""

    intent: Intent
    language: str
    sentiment: Sentiment
    needs_human: bool
    confidence: float
    order_numbers: list[str] = field(default_factory=list)
    is_spam: bool = False


@dataclass(frozen=True)
class TrackingFacts:
    """One tracking number of a fulfillment."""

    number: str | None
    url: str | None
    company: str | None


@dataclass(frozen=True)
class ShipmentEvent:
    """One step of a shipment as the carrier or the store reported it (newest first)."""

    status: str | None  # Shopify's FulfillmentEventStatus: IN_TRANSIT, OUT_FOR_DELIVERY, ...
    happened_at: str | None
    message: str | None = None

    def as_prompt_data(self) -> dict[str, Any]:
        return {"status": self.status, "happened_at": self.happened_at, "message": self.message}


@dataclass(frozen=True)
class FulfillmentFacts:
    """One shipment of an order."""

    status: str | None
    estimated_delivery_at: str | None = None
    delivered_at: str | None = None
    tracking: list[TrackingFacts] = field(default_factory=list)
    events: list[ShipmentEvent] = field(default_factory=list)  # newest first


@dataclass(frozen=True)
class RefundFacts:
    """One refund issued on an order."""

    created_at: str | None
    amount: str | None  # as the shop writes money ("R$ 89,90"), else "89.90 BRL"

    def as_prompt_data(self) -> dict[str, Any]:
        return {"refunded_at": self.created_at, "amount": self.amount}


@dataclass(frozen=True)
class OrderFacts:
    """What we know about one order; shown to a customer only after `privacy` allows it."""

    name: str
    created_at: str | None
    email: str | None
    customer_email: str | None
    financial_status: str | None
    fulfillment_status: str | None
    line_items: list[str] = field(default_factory=list)
    fulfillments: list[FulfillmentFacts] = field(default_factory=list)
    cancelled_at: str | None = None
    refunds: list[RefundFacts] = field(default_factory=list)

    @property
    def estimated_delivery_at(self) -> str | None:
        """The latest estimated delivery among the fulfillments, if any carrier gave one."""
        dates = [f.estimated_delivery_at for f in self.fulfillments if f.estimated_delivery_at]
        return max(dates) if dates else None

    def as_prompt_data(self) -> dict[str, Any]:
        """The order as plain JSON-able data for a prompt (no customer email: not needed there)."""
        return {
            "order": self.name,
            "created_at": self.created_at,
            "payment_status": self.financial_status,
            "fulfillment_status": self.fulfillment_status,
            "items": list(self.line_items),
            "estimated_delivery_at": self.estimated_delivery_at,
            "shipments": [
                {
                    "status": f.status,
                    "estimated_delivery_at": f.estimated_delivery_at,
                    "delivered_at": f.delivered_at,
                    "tracking": [
                        {"number": t.number, "url": t.url, "carrier": t.company} for t in f.tracking
                    ],
                    **({"events": [e.as_prompt_data() for e in f.events]} if f.events else {}),
                }
                for f in self.fulfillments
            ],
            **({"cancelled_at": self.cancelled_at} if self.cancelled_at else {}),
            **({"refunds": [r.as_prompt_data() for r in self.refunds]} if self.refunds else {}),
        }


@dataclass(frozen=True)
class StoreVoice:
    """How a store sounds: name, tone, signature, reply language ('auto' = the customer's)."""

    name: str
    tone: str = "friendly"
    signature: str | None = None
    reply_language: str = "auto"

    @classmethod
    def from_store_row(cls, store: Mapping[str, Any]) -> StoreVoice:
        """Build from a `stores` row (dict), applying the table's defaults to nulls."""
        return cls(
            name=str(store.get("name") or ""),
            tone=str(store.get("reply_tone") or "friendly"),
            signature=store.get("reply_signature") or None,
            reply_language=str(store.get("reply_language") or "auto"),
        )

    def signature_text(self) -> str:
        """The sign-off appended under every reply: the store's signature, else its name."""
        return (self.signature or self.name).strip()


@dataclass(frozen=True)
class ThreadMessage:
    """One earlier message of the conversation (quoted history and signature already stripped)."""

    author: Literal["customer", "store"]  # "store": our replies, automatic or a person's
    sent_at: str | None
    text: str

    def as_prompt_data(self) -> dict[str, Any]:
        return {"from": self.author, "sent_at": self.sent_at, "text": self.text}


@dataclass(frozen=True)
class KnowledgeEntry:
    """One of the store's own policies or answers (shipping, returns, payment, hours, FAQ)."""

    topic: str
    title: str
    body: str

    def as_prompt_data(self) -> dict[str, Any]:
        return {"topic": self.topic, "title": self.title, "text": self.body}


@dataclass(frozen=True)
class VariantFacts:
    """One variant of a product (size, colour ...) as the storefront offers it."""

    title: str
    price: str | None = None  # as the shop writes money ("R$ 89,90"), else "89.90 BRL"
    available: bool | None = None  # can be bought now (Shopify's availableForSale)

    def as_prompt_data(self) -> dict[str, Any]:
        return {"title": self.title, "price": self.price, "available": self.available}


@dataclass(frozen=True)
class ProductFacts:
    """One catalogue product (public data, the same for every sender).

    Only active products published to the online store become ProductFacts (worker.shopify);
    stock counts are never carried, only whether a variant can be bought.
    """

    title: str
    url: str | None = None
    available: bool | None = None  # some variant can be bought now
    price: str | None = None  # "R$ 89,90", a range "R$ 79,90 - R$ 99,90"; else "89.90 BRL"
    variants: list[VariantFacts] = field(default_factory=list)

    def as_prompt_data(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "url": self.url,
            "available": self.available,
            "price": self.price,
            "variants": [v.as_prompt_data() for v in self.variants],
        }


@dataclass(frozen=True)
class ReplyContext:
    """Everything a reply may be grounded in besides the email itself.

    Built by the pipeline only from what the rules allow (orders already filtered by `privacy`,
    the conversation's own messages, the store's own knowledge and catalogue); a responder sees
    nothing else. Empty parts are left out of the prompt.
    """

    store: StoreVoice
    orders: list[OrderFacts] = field(default_factory=list)
    thread: list[ThreadMessage] = field(default_factory=list)
    knowledge: list[KnowledgeEntry] = field(default_factory=list)
    products: list[ProductFacts] = field(default_factory=list)
    # Whether a person at the store will read this conversation before anything is sent (the
    # reply is held for them): only then may the reply say that the team will follow up.
    handoff: bool = False

    def grounding_data(self) -> dict[str, Any]:
        """The facts as plain JSON-able data: orders always, the other parts when present."""
        data: dict[str, Any] = {"orders": [order.as_prompt_data() for order in self.orders]}
        if self.thread:
            data["earlier_messages"] = [m.as_prompt_data() for m in self.thread]
        if self.knowledge:
            data["store_knowledge"] = [k.as_prompt_data() for k in self.knowledge]
        if self.products:
            data["products"] = [p.as_prompt_data() for p in self.products]
        return data


@dataclass(frozen=True)
class Draft:
    """A reply body ready to send, or to keep for a person when `hold_reason` is set."""

    body_text: str
    language: str
    model: str
    hold_reason: str | None = None


@dataclass(frozen=True)
class Answer:
    """One email's classification and reply, from one model call.

    `draft` is None for spam: no reply is written. `usage` is what the call cost in tokens
    (all zero for the offline responder).
    """

    classification: Classification
    draft: Draft | None
    usage: ModelUsage = field(default_factory=ModelUsage)


class Responder(Protocol):
    """Classifies an email and drafts the reply; implemented by Claude and the offline rules."""

    @property
    def model(self) -> str:
        """The model name recorded on replies ('offline-responder' for the rule-based one)."""
        ...

    def answer(self, email: EmailFacts, context: ReplyContext) -> Answer:
        """Intent, language, sentiment, need for a human, confidence, order numbers, spam, and
        the reply grounded only in `context` (orders already filtered by `privacy`)."""
        ...


class InvalidModelOutputError(errors.PermanentError):
    """The model's structured output broke the schema.

    Permanent on purpose: `ClaudeResponder` already re-asks once within the call, and an email
    that twice yields out-of-schema output needs a person; the dead-letter queue keeps it.
    """

    def __init__(self, message: str, *, service: str | None = "claude") -> None:
        super().__init__(f"invalid model output: {message}", service=service)


def reply_language(classification: Classification, store: StoreVoice) -> str:
    """The language of the reply: the store's fixed choice, else the customer's."""
    if store.reply_language and store.reply_language != "auto":
        return store.reply_language
    return classification.language


def validate_classification(data: Mapping[str, Any]) -> Classification:
    """Check a model's classification against the schema; raises InvalidModelOutputError."""
    if not isinstance(data, Mapping):
        raise InvalidModelOutputError("classification is not an object")
    required = ("intent", "language", "sentiment", "needs_human", "confidence")
    missing = [name for name in required if name not in data]
    if missing:
        raise InvalidModelOutputError(f"missing fields: {', '.join(missing)}")

    intent = data["intent"]
    if intent not in INTENTS:
        raise InvalidModelOutputError(f"unknown intent {intent!r}")
    sentiment = data["sentiment"]
    if sentiment not in SENTIMENTS:
        raise InvalidModelOutputError(f"unknown sentiment {sentiment!r}")
    language = data["language"]
    if not _is_language_tag(language):
        raise InvalidModelOutputError(f"bad language tag {language!r}")
    needs_human = data["needs_human"]
    if not isinstance(needs_human, bool):
        raise InvalidModelOutputError("needs_human is not a boolean")
    confidence = data["confidence"]
    # bool is an int subclass; True as a confidence is a schema violation, not 1.0.
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise InvalidModelOutputError("confidence is not a number")
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        raise InvalidModelOutputError(f"confidence {confidence!r} outside 0..1")

    raw_numbers = data.get("order_numbers", [])
    if not isinstance(raw_numbers, list) or not all(isinstance(n, str) for n in raw_numbers):
        raise InvalidModelOutputError("order_numbers is not a list of strings")
    numbers = _normalise_order_numbers(raw_numbers)

    is_spam = data.get("is_spam", intent == "spam")
    if not isinstance(is_spam, bool):
        raise InvalidModelOutputError("is_spam is not a boolean")

    return Classification(
        intent=intent,
        language=_canonical_language(language),
        sentiment=sentiment,
        needs_human=needs_human,
        confidence=float(confidence),
        order_numbers=numbers,
        is_spam=is_spam or intent == "spam",
    )


def _is_language_tag(value: object) -> bool:
    if not isinstance(value, str) or not 2 <= len(value) <= MAX_LANGUAGE_TAG_LENGTH:
        return False
    parts = value.replace("_", "-").split("-")
    return (
        2 <= len(parts[0]) <= 3
        and parts[0].isascii()
        and parts[0].isalpha()
        and all(p and p.isascii() and p.isalnum() and len(p) <= 8 for p in parts[1:])
    )


def _canonical_language(tag: str) -> str:
    """'PT_br' -> 'pt-BR': lower-case language, upper-case 2-letter region, as BCP 47 writes it."""
    parts = tag.replace("_", "-").split("-")
    out = [parts[0].lower()]
    for part in parts[1:]:
        if len(part) == 2 and part.isalpha():
            out.append(part.upper())
        elif len(part) == 4 and part.isalpha():
            out.append(part.title())
        else:
            out.append(part.lower())
    return "-".join(out)


def _normalise_order_numbers(raw: list[str]) -> list[str]:
    """Digits only ('#1234', 'pedido 1234' -> '1234'), de-duplicated, order kept, bounded."""
    seen: list[str] = []
    for item in raw:
        digits = "".join(ch for ch in item if ch.isdigit())
        if digits and digits not in seen:
            seen.append(digits)
    return seen[:MAX_ORDER_NUMBERS]
