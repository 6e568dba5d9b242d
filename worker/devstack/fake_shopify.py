"""A local stand-in for the Shopify Admin GraphQL API, answering the queries `ShopifyClient` sends.

Serves `POST /<shop>/admin/api/<version>/graphql.json` (the client's `base_url` form) from an
in-memory catalogue of orders (fulfillments, tracking, shipment events, refunds, cancellation)
and products (variants, prices, availability; active, draft, archived, and unpublished ones). It
checks the access token like Shopify (401 with Shopify's body), answers ACCESS_DENIED for a
field whose scope the token lacks, searches products with a subset of Shopify's search syntax
(terms, prefixes, quoted phrases, `field:value`, AND/OR/NOT, parentheses; relevance = terms
matched), reports query cost in `extensions.cost`, and can be scripted to answer THROTTLED,
429, 401, 5xx. Used by integration tests, the demo and benchmarks.

Run standalone: `python -m worker.devstack.fake_shopify --port 9000` (demo catalogue).
"""

from __future__ import annotations

import argparse
import re
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from worker.devstack.fake_claude import FakeReply, RecordedRequest, ScriptedServer

TEST_ACCESS_TOKEN = "shpat_test_fake_token"  # noqa: S105 - the fake's own test token
MAXIMUM_AVAILABLE = 2000.0
RESTORE_RATE = 100.0

_PATH = re.compile(r"^/(?P<shop>[A-Za-z0-9.-]+)/admin/api/(?P<version>[^/]+)/graphql\.json$")
_SEARCH = re.compile(r'^(?P<field>email|name):"(?P<value>(?:[^"\\]|\\.)*)"$')
# Every scope the fake's data needs; a token may be given fewer (FakeShopify.scopes).
ALL_SCOPES = ("read_customers", "read_orders", "read_products")


@dataclass
class Tracking:
    number: str
    company: str | None = None
    url: str | None = None


@dataclass
class Event:
    """A fulfillment event: one step of a shipment (FulfillmentEvent)."""

    status: str
    happened_at: str
    message: str | None = None


@dataclass
class Fulfillment:
    status: str = "IN_TRANSIT"
    estimated_delivery_at: str | None = None
    delivered_at: str | None = None
    tracking: list[Tracking] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def events_node(self, first: int) -> dict[str, Any]:
        newest_first = sorted(self.events, key=lambda e: e.happened_at, reverse=True)[:first]
        return {
            "nodes": [
                {"status": e.status, "happenedAt": e.happened_at, "message": e.message}
                for e in newest_first
            ]
        }


@dataclass
class Order:
    """One order in the fake shop, in the fields our query asks for."""

    name: str
    email: str
    created_at: str
    financial_status: str = "PAID"
    fulfillment_status: str = "UNFULFILLED"
    line_items: list[tuple[str, int]] = field(default_factory=list)
    fulfillments: list[Fulfillment] = field(default_factory=list)
    customer_email: str | None = None
    cancelled_at: str | None = None
    refunds: list[tuple[str, str, str]] = field(default_factory=list)  # (at, amount, currency)

    def node(self) -> dict[str, Any]:
        """The order as an `orders.nodes` item of the client's query."""
        customer_email = self.customer_email or self.email
        return {
            "name": self.name,
            "createdAt": self.created_at,
            "email": self.email,
            "customer": {"defaultEmailAddress": {"emailAddress": customer_email}},
            "displayFinancialStatus": self.financial_status,
            "displayFulfillmentStatus": self.fulfillment_status,
            "lineItems": {"nodes": [{"title": t, "quantity": q} for t, q in self.line_items]},
            "fulfillments": [
                {
                    "displayStatus": f.status,
                    "estimatedDeliveryAt": f.estimated_delivery_at,
                    "deliveredAt": f.delivered_at,
                    "trackingInfo": [
                        {"number": t.number, "url": t.url, "company": t.company} for t in f.tracking
                    ],
                    "events": f.events_node(5),
                }
                for f in self.fulfillments
            ],
            "cancelledAt": self.cancelled_at,
            "refunds": [
                {
                    "createdAt": at,
                    "totalRefundedSet": {"shopMoney": {"amount": amount, "currencyCode": code}},
                }
                for at, amount, code in self.refunds
            ],
        }


@dataclass
class Variant:
    """One variant of a product; its stock count is kept but never served (no read_inventory)."""

    title: str
    price: str
    available: bool = True
    inventory: int = 10


@dataclass
class Product:
    """One product of the fake shop, in the fields the client's product query asks for."""

    title: str
    handle: str
    variants: list[Variant]
    status: str = "ACTIVE"  # ACTIVE | DRAFT | ARCHIVED
    published: bool = True  # on the online store sales channel
    product_type: str = ""
    vendor: str = ""
    tags: list[str] = field(default_factory=list)

    def searchable(self) -> dict[str, str]:
        """The text Shopify's default search looks in, by field name."""
        return {
            "title": self.title,
            "product_type": self.product_type,
            "vendor": self.vendor,
            "tag": " ".join(self.tags),
            "variant_title": " ".join(v.title for v in self.variants),
        }

    def node(self, storefront: str, currency: str) -> dict[str, Any]:
        prices = [float(v.price) for v in self.variants] or [0.0]
        on_store = self.published and self.status == "ACTIVE"
        return {
            "title": self.title,
            "handle": self.handle,
            "status": self.status,
            "onlineStoreUrl": f"{storefront}/products/{self.handle}" if on_store else None,
            "priceRangeV2": {
                "minVariantPrice": {"amount": f"{min(prices)}", "currencyCode": currency},
                "maxVariantPrice": {"amount": f"{max(prices)}", "currencyCode": currency},
            },
            "variants": {
                "nodes": [
                    {"title": v.title, "price": v.price, "availableForSale": v.available}
                    for v in self.variants
                ]
            },
        }


@dataclass
class Catalogue:
    """The fake shop's orders and products."""

    shop_name: str = "Demo Shop"
    orders: list[Order] = field(default_factory=list)
    products: list[Product] = field(default_factory=list)
    storefront: str = "https://shop.example"  # the online store's domain, for product URLs
    currency: str = "BRL"
    money_format: str = "R$ {{amount_with_comma_separator}}"  # the shop's, for its emails

    def add(self, order: Order) -> Order:
        self.orders.append(order)
        return order

    def by_email(self, email: str) -> list[Order]:
        wanted = email.strip().lower()
        found = [o for o in self.orders if o.email.lower() == wanted]
        return sorted(found, key=lambda o: o.created_at, reverse=True)

    def by_name(self, name: str) -> list[Order]:
        return [o for o in self.orders if o.name == name]

    def search_products(self, search: str) -> list[Product]:
        """The products a search matches, most terms matched first (Shopify's RELEVANCE)."""
        query = parse_search(search)
        scored = [(query.score(p), i, p) for i, p in enumerate(self.products) if query.matches(p)]
        return [p for _, _, p in sorted(scored, key=lambda t: (-t[0], t[1]))]


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


_TOKEN = re.compile(r'\s*(\(|\)|-?[\w.]+:"[^"]*"|-?"[^"]*"|[^\s()]+)', re.UNICODE)


@dataclass
class _Term:
    """One search term: a word, a prefix (`word*`), a phrase, or `field:value`."""

    text: str
    field_name: str | None = None
    negated: bool = False

    def hit(self, product: Product) -> bool:
        if self.field_name == "status":
            return product.status.lower() in self.text.lower().split(",")
        if self.field_name in ("published_status",):
            published = product.published and product.status == "ACTIVE"
            return published == (self.text.lower() == "published")
        fields = product.searchable()
        haystacks = (
            [fields[self.field_name]] if self.field_name in fields else list(fields.values())
        )
        value = _fold(self.text.strip('"'))
        words = [w for text in haystacks for w in re.findall(r"\w+", _fold(text))]
        if self.text.startswith('"'):
            joined = " ".join(words)
            return f" {value} " in f" {joined} "
        if value.endswith("*"):
            return any(w.startswith(value[:-1]) for w in words)
        return value in words

    def matches(self, product: Product) -> bool:
        return self.hit(product) != self.negated

    def score(self, product: Product) -> int:
        return int(self.field_name is None and not self.negated and self.hit(product))


@dataclass
class _Node:
    op: str  # "and" | "or"
    parts: list[Any]
    negated: bool = False

    def matches(self, product: Product) -> bool:
        results = (part.matches(product) for part in self.parts)
        found = all(results) if self.op == "and" else any(results)
        return found != self.negated

    def score(self, product: Product) -> int:
        return sum(part.score(product) for part in self.parts) if not self.negated else 0


def parse_search(search: str) -> _Node:
    """Shopify's search syntax, the subset the client sends: terms joined by AND (or space),
    OR, NOT or `-`, and parentheses; AND binds tighter than OR."""
    tokens = _TOKEN.findall(search)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def parse_or() -> _Node:
        parts = [parse_and()]
        while peek() == "OR":
            take()
            parts.append(parse_and())
        return _Node("or", parts)

    def parse_and() -> _Node:
        parts = [parse_unary()]
        while peek() not in (None, ")", "OR"):
            if peek() == "AND":
                take()
            parts.append(parse_unary())
        return _Node("and", parts)

    def parse_unary() -> Any:
        word = take()
        if word == "NOT":
            inner = parse_unary()
            inner.negated = not inner.negated
            return inner
        if word == "(":
            inner = parse_or()
            if peek() == ")":
                take()
            return inner
        negated = word.startswith("-") and len(word) > 1
        word = word[1:] if negated else word
        name, sep, value = word.partition(":")
        if sep and not word.startswith('"'):
            return _Term(value, field_name=name.lower(), negated=negated)
        return _Term(word, negated=negated)

    return parse_or() if tokens else _Node("and", [])


def demo_catalogue() -> Catalogue:
    """A small, realistic catalogue: Brazilian and English-speaking customers."""
    return Catalogue(
        shop_name="Loja Demo",
        orders=[
            Order(
                name="#1001",
                email="ana.souza@example.com.br",
                created_at="2025-09-28T14:12:00Z",
                fulfillment_status="FULFILLED",
                line_items=[("Camiseta Algodão Orgânico - M", 2)],
                fulfillments=[
                    Fulfillment(
                        status="IN_TRANSIT",
                        estimated_delivery_at="2025-10-06T23:59:00Z",
                        tracking=[
                            Tracking(
                                "BR123456789BR",
                                "Correios",
                                "https://rastreamento.correios.com.br/app/index.php?objetos=BR123456789BR",
                            )
                        ],
                        events=[
                            Event("LABEL_PRINTED", "2025-09-29T10:00:00Z"),
                            Event("CONFIRMED", "2025-09-29T16:20:00Z", "Objeto postado"),
                            Event(
                                "IN_TRANSIT",
                                "2025-10-01T08:45:00Z",
                                "Objeto em trânsito - de Cajamar/SP para Curitiba/PR",
                            ),
                        ],
                    )
                ],
            ),
            Order(
                name="#1002",
                email="john.miller@example.com",
                created_at="2025-09-30T09:40:00Z",
                fulfillment_status="UNFULFILLED",
                line_items=[("Canvas Tote Bag", 1), ("Enamel Mug", 2)],
            ),
            Order(
                name="#1003",
                email="carlos.lima@example.com.br",
                created_at="2025-09-15T18:05:00Z",
                fulfillment_status="FULFILLED",
                line_items=[("Tênis Casual Couro - 42", 1)],
                fulfillments=[
                    Fulfillment(
                        status="DELIVERED",
                        delivered_at="2025-09-22T11:30:00Z",
                        tracking=[Tracking("JT998877665BR", "Jadlog", None)],
                        events=[
                            Event("IN_TRANSIT", "2025-09-18T09:00:00Z"),
                            Event("OUT_FOR_DELIVERY", "2025-09-22T07:10:00Z"),
                            Event("DELIVERED", "2025-09-22T11:30:00Z", "Entregue ao destinatário"),
                        ],
                    )
                ],
            ),
            Order(
                name="#1004",
                email="emma.jones@example.co.uk",
                created_at="2025-09-20T12:00:00Z",
                fulfillment_status="FULFILLED",
                line_items=[("Wool Scarf - Grey", 1)],
                fulfillments=[
                    Fulfillment(
                        status="IN_TRANSIT",
                        estimated_delivery_at="2025-09-27T23:59:00Z",
                        tracking=[
                            Tracking(
                                "1Z999AA10123456784",
                                "UPS",
                                "https://www.ups.com/track?tracknum=1Z999AA10123456784",
                            )
                        ],
                        events=[
                            Event("IN_TRANSIT", "2025-09-22T14:00:00Z", "Departed facility"),
                            Event(
                                "DELAYED",
                                "2025-09-26T18:30:00Z",
                                "Weather delay at the regional hub",
                            ),
                        ],
                    )
                ],
            ),
            Order(
                name="#1005",
                email="lucia.garcia@example.es",
                created_at="2025-09-25T16:30:00Z",
                financial_status="REFUNDED",
                fulfillment_status="UNFULFILLED",
                line_items=[("Caneca Esmaltada", 1)],
                cancelled_at="2025-09-26T09:00:00Z",
                refunds=[("2025-09-26T09:05:00Z", "45.00", "BRL")],
            ),
        ],
        storefront="https://lojaexemplo.com.br",
        currency="BRL",
        products=demo_products(),
    )


def demo_products() -> list[Product]:
    """The demo shop's catalogue: what the orders contain, plus a draft, an archived and an
    unpublished product that a search finds but no reply may mention."""
    return [
        Product(
            "Wool Scarf",
            "wool-scarf",
            [
                Variant("Grey", "129.00"),
                Variant("Navy", "129.00", inventory=3),
                Variant("Burgundy", "129.00", available=False, inventory=0),
            ],
            product_type="Accessories",
            tags=["cachecol", "lã", "bufanda", "lana", "inverno", "winter"],
        ),
        Product(
            "Wool Scarf - Limited Edition",
            "wool-scarf-limited",
            [Variant("Navy", "199.00")],
            status="DRAFT",
            published=False,
            product_type="Accessories",
            tags=["cachecol", "lã"],
        ),
        Product(
            "Wool Scarf Classic",
            "wool-scarf-classic",
            [Variant("Grey", "99.00")],
            status="ARCHIVED",
            published=False,
            product_type="Accessories",
        ),
        Product(
            "Wool Scarf Sample",
            "wool-scarf-sample",
            [Variant("Navy", "1.00")],
            published=False,
            product_type="Accessories",
        ),
        Product(
            "Camiseta Algodão Orgânico",
            "camiseta-algodao-organico",
            [
                Variant("P", "79.90"),
                Variant("M", "79.90"),
                Variant("G", "79.90", available=False, inventory=0),
            ],
            product_type="Camisetas",
            tags=["algodão", "orgânico", "t-shirt", "camiseta"],
        ),
        Product(
            "Tênis Casual Couro",
            "tenis-casual-couro",
            [Variant(str(size), "349.90", available=size != 44) for size in range(38, 45)],
            product_type="Calçados",
            tags=["tênis", "couro", "sneakers", "zapatillas"],
        ),
        Product(
            "Canvas Tote Bag",
            "canvas-tote-bag",
            [Variant("Default Title", "59.90")],
            product_type="Bags",
            tags=["bolsa", "sacola", "bolso"],
        ),
        Product(
            "Caneca Esmaltada",
            "caneca-esmaltada",
            [
                Variant("Branca", "45.00", available=False, inventory=0),
                Variant("Azul", "45.00", available=False, inventory=0),
            ],
            product_type="Casa",
            tags=["caneca", "enamel mug", "mug", "taza"],
        ),
    ]


_PRICE_NUMBER = re.compile(r"\d(?:[\d.,' ]*\d)?")


def price_and_format(text: str) -> tuple[str, str]:
    """A price as a person writes it ('R$ 1.234,50', '$49.00', '89,00 €') as the amount Shopify
    sends ('1234.50') and the shop's money format that writes it back the same way."""
    match = _PRICE_NUMBER.search(text)
    if match is None:
        raise ValueError(f"no amount in price {text!r}")
    number = match.group(0)
    decimals = re.search(r"[.,](\d{2})$", number)
    whole = number[: decimals.start()] if decimals else number
    mark = number[decimals.start()] if decimals else None
    thousands = next((c for c in whole if not c.isdigit()), None)
    placeholders: dict[tuple[str | None, str | None], str] = {
        (",", "."): "amount",
        (None, "."): "amount",
        (".", ","): "amount_with_comma_separator",
        (None, ","): "amount_with_comma_separator",
        ("'", "."): "amount_with_apostrophe_separator",
        (" ", ","): "amount_with_space_separator",
        (" ", "."): "amount_with_period_and_space_separator",
    }
    placeholder = placeholders.get((thousands, mark), "amount" if mark else "amount_no_decimals")
    digits = re.sub(r"\D", "", whole)
    amount = f"{digits}.{decimals.group(1) if decimals else '00'}"
    template = text[: match.start()] + "{{" + placeholder + "}}" + text[match.end() :]
    return amount, template


def product_from_json(data: dict[str, Any]) -> tuple[Product, str]:
    """A fake-shop product from a test case's JSON, and the money format its price is in.

    `{"title", "status", "price": "R$ 259,90", "available", "variants": ["P", {"title": "G",
    "price": "R$ 269,90", "available": false}], "url"}`; a null url means not published.
    """
    amount, money_format = price_and_format(str(data["price"]))
    available = data.get("available", True) is not False
    url = data.get("url")
    handle = str(url).rstrip("/").rsplit("/", 1)[-1] if url else _slug(str(data["title"]))
    variants = []
    for raw in data.get("variants") or ["Default Title"]:
        item: dict[str, Any] = raw if isinstance(raw, dict) else {"title": str(raw)}
        price = price_and_format(str(item["price"]))[0] if item.get("price") else amount
        buyable = bool(item.get("available", available))
        variants.append(Variant(str(item["title"]), price, buyable))
    status = str(data.get("status") or "ACTIVE").upper()
    product = Product(
        str(data["title"]),
        handle,
        variants,
        status=status,
        published=bool(url) and status == "ACTIVE",
        product_type=str(data.get("product_type") or ""),
        tags=[str(t) for t in data.get("tags") or []],
    )
    return product, money_format


def seed_products(catalogue: Catalogue, products: list[dict[str, Any]]) -> None:
    """Put test-case products into a catalogue: the first one's price and URL set the shop's
    money format and online-store domain."""
    for data in products:
        product, money_format = product_from_json(data)
        if not catalogue.products:
            catalogue.money_format = money_format
            if data.get("url"):
                parts = str(data["url"]).split("/")
                catalogue.storefront = "/".join(parts[:3])
        catalogue.products.append(product)


def order_from_json(data: dict[str, Any]) -> Order:
    """A fake-shop order from a test case's JSON: name, email, created_at, statuses,
    line_items [[title, quantity]], fulfillments [{status, estimated_delivery_at, delivered_at,
    tracking [{number, company, url}], events [{status, happened_at, message}]}], customer_email,
    cancelled_at, refunds [{created_at, amount (as written, e.g. "R$ 45,00")}]."""
    return Order(
        name=str(data["name"]),
        email=str(data["email"]),
        created_at=str(data.get("created_at") or "2026-11-20T12:00:00Z"),
        financial_status=str(data.get("financial_status") or "PAID"),
        fulfillment_status=str(data.get("fulfillment_status") or "UNFULFILLED"),
        line_items=[(str(title), int(count)) for title, count in data.get("line_items") or []],
        fulfillments=[
            Fulfillment(
                status=str(f.get("status") or "IN_TRANSIT"),
                estimated_delivery_at=f.get("estimated_delivery_at"),
                delivered_at=f.get("delivered_at"),
                tracking=[
                    Tracking(str(t["number"]), t.get("company"), t.get("url"))
                    for t in f.get("tracking") or []
                ],
                events=[
                    Event(str(e["status"]), str(e["happened_at"]), e.get("message"))
                    for e in f.get("events") or []
                ],
            )
            for f in data.get("fulfillments") or []
        ],
        customer_email=data.get("customer_email"),
        cancelled_at=data.get("cancelled_at"),
        refunds=[
            (str(r.get("created_at") or "2026-11-20T12:00:00Z"), *_refund_amount(r))
            for r in data.get("refunds") or []
        ],
    )


def _refund_amount(refund: dict[str, Any]) -> tuple[str, str]:
    amount, _ = price_and_format(str(refund["amount"]))
    return amount, str(refund.get("currency") or "BRL")


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", _fold(title)).strip("-")


def throttled_body(
    requested: float = 120.0, available: float = 20.0, restore_rate: float = RESTORE_RATE
) -> dict[str, Any]:
    """A THROTTLED answer as Shopify sends it (HTTP 200, errors + cost extension)."""
    return {
        "errors": [
            {
                "message": "Throttled",
                "extensions": {
                    "code": "THROTTLED",
                    "documentation": "https://shopify.dev/api/usage/rate-limits",
                },
            }
        ],
        "extensions": {
            "cost": {
                "requestedQueryCost": requested,
                "actualQueryCost": None,
                "throttleStatus": {
                    "maximumAvailable": MAXIMUM_AVAILABLE,
                    "currentlyAvailable": available,
                    "restoreRate": restore_rate,
                },
            }
        },
    }


def access_denied(field_name: str, scope: str) -> FakeReply:
    """Shopify's answer to a field the token has no scope for: HTTP 200, ACCESS_DENIED."""
    return FakeReply(
        200,
        {
            "errors": [
                {
                    "message": f"Access denied for {field_name} field. Required access: "
                    f"`{scope}` access scope.",
                    "locations": [{"line": 2, "column": 3}],
                    "extensions": {
                        "code": "ACCESS_DENIED",
                        "documentation": "https://shopify.dev/api/usage/access-scopes",
                        "requiredAccess": f"`{scope}` access scope.",
                    },
                    "path": [field_name],
                }
            ],
            "data": None,
        },
    )


UNAUTHORIZED_BODY = {
    "errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"
}


class FakeShopify(ScriptedServer):
    """Answers the client's orders and shop queries from a Catalogue."""

    def __init__(
        self,
        catalogue: Catalogue | None = None,
        *,
        access_token: str = TEST_ACCESS_TOKEN,
        port: int = 0,
        latency_seconds: float = 0.0,
    ) -> None:
        super().__init__(port=port, latency_seconds=latency_seconds)
        self.catalogue = catalogue if catalogue is not None else Catalogue()
        self.access_token = access_token
        # What the token was granted; a query for data outside it gets ACCESS_DENIED.
        self.scopes: set[str] = set(ALL_SCOPES)

    @property
    def queries(self) -> list[RecordedRequest]:
        """Recorded GraphQL requests."""
        return [r for r in self.requests if _PATH.match(r.path)]

    def throttle(self, times: int = 1, **kwargs: float) -> None:
        """Answer the next `times` requests with THROTTLED."""
        self.script(*(FakeReply(200, throttled_body(**kwargs)) for _ in range(times)))

    def reply_status(self, status: int, *, retry_after: str | None = None) -> None:
        """Answer the next request with a bare HTTP error."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = UNAUTHORIZED_BODY if status == 401 else {"errors": f"HTTP {status}"}
        self.script(FakeReply(status, body, headers))

    def precheck(self, request: RecordedRequest) -> FakeReply | None:
        if request.method != "POST" or not _PATH.match(request.path):
            return FakeReply(404, {"errors": "Not Found"})
        if request.headers.get("x-shopify-access-token") != self.access_token:
            return FakeReply(401, UNAUTHORIZED_BODY)
        return None

    def default_reply(self, request: RecordedRequest) -> FakeReply:
        body = request.body if isinstance(request.body, dict) else {}
        query = str(body.get("query") or "")
        variables = body.get("variables") or {}
        match = _PATH.match(request.path)
        shop = match.group("shop") if match else ""
        data: dict[str, Any] = {}
        cost = 0
        # Root fields the client's queries use; one request may ask for several.
        if re.search(r"\borders\s*\(", query):
            if "read_orders" not in self.scopes:
                return access_denied("orders", "read_orders")
            first = int(variables.get("first") or 10)
            orders = self._search(str(variables.get("query") or ""))[:first]
            data["orders"] = {"nodes": [o.node() for o in orders]}
            cost += 3 + first
        if re.search(r"\bproducts\s*\(", query):
            if "read_products" not in self.scopes:
                return access_denied("products", "read_products")
            first = int(variables.get("first") or 10)
            found = self.catalogue.search_products(str(variables.get("query") or ""))[:first]
            catalogue = self.catalogue
            data["products"] = {
                "nodes": [p.node(catalogue.storefront, catalogue.currency) for p in found]
            }
            cost += 2 + first
        if re.search(r"\bshop\s*\{", query):
            data["shop"] = {
                "name": self.catalogue.shop_name,
                "myshopifyDomain": shop,
                "currencyFormats": {"moneyInEmailsFormat": self.catalogue.money_format},
            }
            cost += 1
        if re.search(r"\bcurrentAppInstallation\s*\{", query):
            handles = [{"handle": scope} for scope in sorted(self.scopes)]
            data["currentAppInstallation"] = {"accessScopes": handles}
            cost += 1
        if data:
            return self._ok(data, cost=cost)
        return FakeReply(
            200,
            {
                "errors": [
                    {
                        "message": "Unsupported query for the fake shop",
                        "extensions": {"code": "undefinedField"},
                    }
                ]
            },
        )

    def _search(self, search: str) -> list[Order]:
        match = _SEARCH.match(search.strip())
        if not match:
            return []
        value = re.sub(r"\\(.)", r"\1", match.group("value"))
        if match.group("field") == "email":
            return self.catalogue.by_email(value)
        return self.catalogue.by_name(value)

    def _ok(self, data: dict[str, Any], *, cost: int) -> FakeReply:
        return FakeReply(
            200,
            {
                "data": data,
                "extensions": {
                    "cost": {
                        "requestedQueryCost": cost * 4,
                        "actualQueryCost": cost,
                        "throttleStatus": {
                            "maximumAvailable": MAXIMUM_AVAILABLE,
                            "currentlyAvailable": MAXIMUM_AVAILABLE - cost,
                            "restoreRate": RESTORE_RATE,
                        },
                    }
                },
            },
        )


def main(argv: list[str] | None = None) -> None:
    """Serve the demo catalogue until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--access-token", default=TEST_ACCESS_TOKEN)
    args = parser.parse_args(argv)
    fake = FakeShopify(
        demo_catalogue(),
        access_token=args.access_token,
        port=args.port,
        latency_seconds=args.latency,
    )
    fake.start()
    print(f"SHOPIFY_BASE_URL={fake.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
