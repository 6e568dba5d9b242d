"""First step of processing: is this inbound message something we can answer at all?"""

from __future__ import annotations

import re
from collections.abc import Collection
from email.utils import parseaddr
from typing import Final

from worker.mime import ParsedEmail

INVALID_SENDER: Final = "invalid_sender"
OWN_ADDRESS: Final = "own_address"
TOO_LARGE: Final = "too_large"
EMPTY: Final = "empty"

# A deliberately plain addr-spec: dot-atom local part and a domain of at least two labels, in
# ASCII. Quoted local parts and IP literals are legal but never seen from real customers, and
# replying to them is how a worker gets tricked into mailing odd destinations. ASCII because
# replies go out without SMTPUTF8: the reply builder cannot write a non-ASCII local part (and
# would write a non-ASCII domain as an encoded word), so such a sender would be charged a credit
# and never answered; IDNA domains (xn--) are ASCII and fine.
_LOCAL = r"[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*"
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_ADDRESS = re.compile(rf"^{_LOCAL}@(?:{_LABEL}\.)+{_LABEL}$")
# An RFC 2047 encoded word ("=?charset?q?text?="): legal characters in a dot-atom, but a header
# parser decodes it, so the reply's To header cannot be written (and a display could be forged).
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[bq]\?[^?]*\?=", re.IGNORECASE)
MAX_ADDRESS_CHARS = 254


def is_valid_address(address: str | None) -> bool:
    """True for a plain, deliverable-looking address such as ana.silva+loja@example.com.br."""
    if not address or len(address) > MAX_ADDRESS_CHARS or not address.isascii():
        return False
    if _ENCODED_WORD.search(address):
        return False
    if parseaddr(address)[1] != address:
        return False
    local, _, domain = address.rpartition("@")
    if len(local) > 64 or domain.replace(".", "").isdigit():
        return False
    return _ADDRESS.match(address) is not None


def normalize_addresses(addresses: Collection[str]) -> frozenset[str]:
    """Addresses lower-cased and stripped, for case-insensitive membership tests."""
    return frozenset(a.strip().lower() for a in addresses if a and a.strip())


def validate_inbound(
    email: ParsedEmail, *, store_addresses: Collection[str], max_bytes: int
) -> str | None:
    """Why the message must not be answered ('invalid_sender', 'own_address', ...) or None."""
    sender = (email.from_address or "").lower()
    if not is_valid_address(sender):
        return INVALID_SENDER
    if sender in normalize_addresses(store_addresses):
        return OWN_ADDRESS
    if email.size_bytes > max_bytes or email.skip_reason == "oversized":
        return TOO_LARGE
    if not email.subject.strip() and not email.body_text.strip() and not email.attachments:
        return EMPTY
    return None
