"""A local stand-in for the Shopify Admin GraphQL API, answering the queries `ShopifyClient` sends.

Serves `POST /<shop>/admin/api/<version>/graphql.json` (the client's `base_url` form) from an
in-memory catalogue of orders with fulfillments and tracking. It checks the access token like
Shopify (401 with Shopify's body), reports query cost in `extensions.cost`, and can be scripted
to answer THROTTLED, 429, 401, 5xx. Used by integration tests, the demo and benchmarks.

Run standalone: `python -m worker.devstack.fake_shopify --port 9000` (demo catalogue).
"""

from __future__ import annotations

import argparse
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from worker.devstack.fake_claude import FakeReply, RecordedRequest, ScriptedServer

TEST_ACCESS_TOKEN = "shpat_test_fake_token"  # noqa: S105 - the fake's own test token
MAXIMUM_AVAILABLE = 2000.0
RESTORE_RATE = 100.0

_PATH = re.compile(r"^/(?P<shop>[A-Za-z0-9.-]+)/admin/api/(?P<version>[^/]+)/graphql\.json$")
_SEARCH = re.compile(r'^(?P<field>email|name):"(?P<value>(?:[^"\\]|\\.)*)"$')


@dataclass
class Tracking:
    number: str
    company: str | None = None
    url: str | None = None


@dataclass
class Fulfillment:
    status: str = "IN_TRANSIT"
    estimated_delivery_at: str | None = None
    delivered_at: str | None = None
    tracking: list[Tracking] = field(default_factory=list)


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
                }
                for f in self.fulfillments
            ],
        }


@dataclass
class Catalogue:
    """The fake shop's orders."""

    shop_name: str = "Demo Shop"
    orders: list[Order] = field(default_factory=list)

    def add(self, order: Order) -> Order:
        self.orders.append(order)
        return order

    def by_email(self, email: str) -> list[Order]:
        wanted = email.strip().lower()
        found = [o for o in self.orders if o.email.lower() == wanted]
        return sorted(found, key=lambda o: o.created_at, reverse=True)

    def by_name(self, name: str) -> list[Order]:
        return [o for o in self.orders if o.name == name]


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
                    )
                ],
            ),
        ],
    )


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
        if re.search(r"\bshop\s*\{", query):
            data: dict[str, Any] = {
                "shop": {"name": self.catalogue.shop_name, "myshopifyDomain": shop}
            }
            return self._ok(data, cost=1)
        if re.search(r"\borders\s*\(", query):
            first = int(variables.get("first") or 10)
            orders = self._search(str(variables.get("query") or ""))[:first]
            return self._ok({"orders": {"nodes": [o.node() for o in orders]}}, cost=3 + first)
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
