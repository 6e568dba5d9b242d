"""What a reply may say before the store's own SMTP sends it; pure (issue 13 item 4).

Anyone can write to the store with any From and any subject, and the reply goes out in the
store's name: a reflected subject ("Re: your account is locked, verify at https://...") or a
prompt injection that makes the model write a payment request would turn the store into a
phishing relay, next to the customer's genuine order data. So:

- the subject is neutralised: "Re: " plus the original, cleaned and shortened, or the store's
  neutral subject when the original carries a link, a domain or an address;
- the body may link only to the store's own domains, the tracking pages in the order facts and
  the product pages in the catalogue facts, and may not contain a payment request, or an
  amount, phone number or postal code that is not in the facts (orders, products) or the store's
  own signature; otherwise the reply is held for a person with the reason.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Final
from urllib.parse import urlsplit

from worker.responder import OrderFacts, ProductFacts

MAX_SUBJECT_CHARS = 80  # of the original's text; long attacker text is cut at a word

UNEXPECTED_LINK: Final = "unexpected_link"
PAYMENT_REQUEST: Final = "payment_request"
UNEXPECTED_AMOUNT: Final = "unexpected_amount"
UNEXPECTED_PHONE: Final = "unexpected_phone"
UNEXPECTED_ADDRESS: Final = "unexpected_address"

_REPLY_PREFIX = re.compile(r"^(?:\s*(?:re|fwd?|res|enc|aw|wg|sv|tr)\s*(?:\[\d+\])?\s*:\s*)+", re.I)
# Links, bare domains (evil.example/login, www.x.com) and e-mail addresses.
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'()\[\]]+", re.I)
_DOMAIN = re.compile(r"\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,24}\b(?:/\S*)?", re.I)
_EMAIL = re.compile(r"\S+@\S+")
_AMOUNT = re.compile(
    r"(?:R\$|US\$|\$|€|£|¥|\b(?:BRL|USD|EUR|GBP)\b)\s*\d[\d.,]*"
    r"|\d[\d.,]*\s*(?:€|£|\b(?:BRL|USD|EUR|GBP|reais|dollars?|d[oó]lares|euros?)\b)",
    re.I,
)
_PHONE = re.compile(r"(?:\+\d[\d\s().-]{7,}\d|\(?\b\d{2,3}\)?[\s.-]?\d{3,5}[\s.-]\d{4}\b)")
_POSTAL_CODE = re.compile(r"\b\d{5}-\d{3}\b")  # Brazilian CEP; foreign ones are hard to tell
_PAYMENT = re.compile(
    r"\b(?:pix|chave pix|boleto|iban|swift|bic|bitcoin|btc|usdt|crypto|cripto\w*|wallet|"
    r"carteira digital|gift ?cards?|cart[aã]o[- ]presente|wire transfer|bank transfer|"
    r"transfer[eê]ncia banc[aá]ria|dep[oó]sito|deposit|western union|moneygram|paypal\.me|"
    r"payment link|link de pagamento|pay now|pague agora|pagar agora)\b",
    re.I,
)


def neutral_subject(store_name: str | None) -> str:
    """The store's own subject for a reply whose original subject cannot be echoed."""
    name = " ".join((store_name or "").split())
    return f"Re: Your message to {name}" if name else "Re: Your message"


def safe_subject(original: str | None, store_name: str | None) -> str:
    """'Re: ' plus the original subject, cleaned and cut short; the store's neutral subject when
    the original carries a link, a domain or an address (nothing of it is echoed then)."""
    # Tabs and line breaks become spaces; other control and format characters (NUL, bidi
    # overrides that reverse what a reader sees) go.
    text = "".join(
        " " if c.isspace() else c
        for c in (original or "")
        if c.isspace() or unicodedata.category(c)[0] != "C"
    )
    text = _REPLY_PREFIX.sub("", " ".join(text.split())).strip()
    if not text or _URL.search(text) or _EMAIL.search(text) or _DOMAIN.search(text):
        return neutral_subject(store_name)
    if len(text) > MAX_SUBJECT_CHARS:
        cut = text[:MAX_SUBJECT_CHARS].rsplit(" ", 1)[0] or text[:MAX_SUBJECT_CHARS]
        text = cut.rstrip(" .,;:-") + "..."
    return f"Re: {text}"


def allowed_hosts(
    store_domains: Iterable[str | None],
    orders: Sequence[OrderFacts],
    products: Sequence[ProductFacts] = (),
) -> set[str]:
    """Hosts a reply may link to: the store's own domains, its orders' tracking pages and its
    products' pages (the online store may live on a domain of its own)."""
    hosts = {_host(d) for d in store_domains if d}
    for order in orders:
        for fulfillment in order.fulfillments:
            for tracking in fulfillment.tracking:
                if tracking.url:
                    hosts.add(_host(tracking.url))
    hosts.update(_host(product.url) for product in products if product.url)
    return {h for h in hosts if h}


def check_reply(
    body: str,
    *,
    store_domains: Iterable[str | None],
    orders: Sequence[OrderFacts],
    store_text: str = "",
    products: Sequence[ProductFacts] = (),
) -> str | None:
    """Why this reply must be held for a person (a reason above), or None to send it.

    `store_text` is the store's own words (name, signature) whose numbers may appear; the
    products' prices may appear too.
    """
    allowed = allowed_hosts(store_domains, orders, products)
    for match in _URL.finditer(body):
        if not _host_allowed(_host(match.group(0)), allowed):
            return UNEXPECTED_LINK
    if _PAYMENT.search(body):
        return PAYMENT_REQUEST
    facts = [asdict(o) for o in orders] + [asdict(p) for p in products]
    # A price range ("79.90-99.90 BRL") is two prices, either of which a reply may quote.
    prices = [p.price for p in products] + [v.price for p in products for v in p.variants]
    price_text = " ".join(price.replace("-", " ") for price in prices if price)
    known_digits = _numbers_in(f"{facts!r} {price_text} {store_text}")
    for match in _AMOUNT.finditer(body):
        if _only_digits(match.group(0).rstrip(".,")) not in known_digits:
            return UNEXPECTED_AMOUNT
    for match in _PHONE.finditer(body):
        if _only_digits(match.group(0)) not in known_digits:
            return UNEXPECTED_PHONE
    for match in _POSTAL_CODE.finditer(body):
        if _only_digits(match.group(0)) not in known_digits:
            return UNEXPECTED_ADDRESS
    return None


def _host(value: str) -> str:
    text = value.strip().lower()
    if "@" in text and "://" not in text:
        text = text.rpartition("@")[2]
    if "://" not in text:
        text = "http://" + text
    try:
        host = urlsplit(text).hostname or ""
    except ValueError:
        return ""
    return host.rstrip(".").removeprefix("www.")


def _host_allowed(host: str, allowed: set[str]) -> bool:
    # The store's own subdomains count as its own (shop.example.com for example.com).
    return bool(host) and any(host == a or host.endswith("." + a) for a in allowed)


def _only_digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def _numbers_in(text: str) -> set[str]:
    # Every number as digits only, written with separators ("R$ 189,90", "(11) 3456-7890") or
    # without; a number in the reply counts as known only when it matches one of them whole.
    found: set[str] = set()
    for run in re.findall(r"\d[\d\s().,/-]*\d|\d", text):
        found.add(_only_digits(run))
        found.update(_only_digits(part) for part in re.split(r"[\s,]+", run) if part)
    found.update(re.findall(r"\d+", text))
    return found
