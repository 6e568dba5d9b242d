"""Did the receiving server authenticate the sender? Read from Authentication-Results; pure.

The sender address is not verified by anything we do, so a forged From can ask for someone
else's order. The store's mail provider checks SPF, DKIM and DMARC and records the outcome in an
Authentication-Results header (RFC 8601) at the top of the message; a sender can add headers of
its own below it, so only the topmost one (the last hop's, kept by worker/mime.py) is read.

Decision (docs/design.md): a message the provider reports as failing DMARC, or failing SPF with
no passing DKIM signature, gets no order data (no Shopify lookup) and its reply is held for a
person (`sender_unauthenticated`) rather than sent. A message without the header (many servers
do not add one) is treated as before: the privacy rules already send order data only to the
address that placed the order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

HEADER: Final = "authentication-results"
UNAUTHENTICATED: Final = "sender_unauthenticated"

_RESULT = re.compile(r"\b(spf|dkim|dmarc)\s*=\s*([a-z]+)", re.I)


def failure(headers: Mapping[str, str]) -> str | None:
    """'dmarc_fail' or 'spf_fail' when the receiving server's verdict is a failure, else None."""
    value = headers.get(HEADER)
    if not value:
        return None
    results: dict[str, set[str]] = {}
    for method, result in _RESULT.findall(value):
        results.setdefault(method.lower(), set()).add(result.lower())
    if "fail" in results.get("dmarc", set()):
        return "dmarc_fail"
    if "fail" in results.get("spf", set()) and "pass" not in results.get("dkim", set()):
        return "spf_fail"
    return None
