"""Which order facts may be disclosed, and to which address (pure).

Order data only ever goes to the address that placed the order. A number that belongs to
someone else, a number that does not exist and no number at all look the same from outside:
an empty list, hence the same neutral reply, so a reply never confirms that an order exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from email.utils import parseaddr

from worker import validate
from worker.responder import OrderFacts


def normalise_address(address: str | None) -> str:
    """The bare address, trimmed and lower-cased ('' when there is none)."""
    if not address:
        return ""
    _, bare = parseaddr(address.strip())
    return (bare or address).strip().lower()


def same_address(a: str | None, b: str | None) -> bool:
    """True when both are present and name the same mailbox (case-insensitive)."""
    left, right = normalise_address(a), normalise_address(b)
    return bool(left) and left == right


def order_belongs_to(order: OrderFacts, sender_email: str) -> bool:
    """True when the order's contact email or its customer's email is the sender's."""
    return same_address(order.email, sender_email) or same_address(
        order.customer_email, sender_email
    )


def disclosable_orders(sender_email: str, found_orders: Iterable[OrderFacts]) -> list[OrderFacts]:
    """Only the sender's own orders, de-duplicated by name; everything else is dropped silently."""
    kept: list[OrderFacts] = []
    names: set[str] = set()
    for order in found_orders:
        if order.name in names or not order_belongs_to(order, sender_email):
            continue
        names.add(order.name)
        kept.append(order)
    return kept


def reply_recipient(
    from_address: str, reply_to: str | None, has_order_facts: bool
) -> tuple[str, bool]:
    """Where the reply goes and whether it may carry order facts.

    Orders are matched against From, so a reply with order facts goes to From. Reply-To is
    honoured only for replies without order facts: a forged From with an attacker's Reply-To
    gets the facts sent to the real customer, and the attacker at most a generic reply.
    """
    if (
        not reply_to
        or not normalise_address(reply_to)
        or same_address(reply_to, from_address)
        # The rules From passed in validation: a Reply-To the reply cannot be addressed to (an
        # encoded word, a quoted or non-ASCII local part) is ignored, not obeyed.
        or not validate.is_valid_address(normalise_address(reply_to))
    ):
        return from_address, has_order_facts
    if has_order_facts:
        return from_address, True
    return reply_to, False
