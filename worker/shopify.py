"""Shopify Admin GraphQL client: a customer's recent orders and an order by number, as OrderFacts.

Honours Shopify's cost-based throttling: a THROTTLED error becomes a TransientError whose
retry-after is the time the bucket needs to refill to the query's requested cost.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

import httpx

from worker import errors
from worker.responder import FulfillmentFacts, OrderFacts, TrackingFacts

SERVICE = "shopify"
DEFAULT_TIMEOUT_SECONDS = 15.0
MAX_LINE_ITEMS = 10
MAX_FULFILLMENTS = 5
MAX_TRACKING = 5
MAX_ORDERS = 25
# Used when a THROTTLED answer lacks the cost extension Shopify normally includes.
DEFAULT_THROTTLE_SECONDS = 2.0
# GraphQL error codes that mean "Shopify had a problem", not "your query is wrong".
TRANSIENT_GRAPHQL_CODES = frozenset({"INTERNAL_SERVER_ERROR", "SERVICE_UNAVAILABLE", "TIMEOUT"})
# A token without the orders scope is answered with HTTP 200 and this code: GraphQL's form of a
# 403, so it carries that status and counts against the store's breaker like a refused token.
ACCESS_DENIED_GRAPHQL_CODE = "ACCESS_DENIED"

ORDERS_QUERY = f"""
query SupportOrders($query: String!, $first: Int!) {{
  orders(first: $first, query: $query, sortKey: CREATED_AT, reverse: true) {{
    nodes {{
      name
      createdAt
      email
      customer {{ defaultEmailAddress {{ emailAddress }} }}
      displayFinancialStatus
      displayFulfillmentStatus
      lineItems(first: {MAX_LINE_ITEMS}) {{ nodes {{ title quantity }} }}
      fulfillments(first: {MAX_FULFILLMENTS}) {{
        displayStatus
        estimatedDeliveryAt
        deliveredAt
        trackingInfo(first: {MAX_TRACKING}) {{ number url company }}
      }}
    }}
  }}
}}
""".strip()

SHOP_QUERY = "query SupportShop { shop { name myshopifyDomain } }"

_ORDER_NUMBER = re.compile(r"^#?\s*(\d{1,20})$")


def search_value(value: str) -> str:
    """A value quoted for Shopify's search syntax, so it cannot add terms of its own."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def throttle_retry_after(extensions: Mapping[str, Any] | None) -> float:
    """Seconds until the bucket holds the requested cost: (requested - available) / restore."""
    cost = (extensions or {}).get("cost") or {}
    status = cost.get("throttleStatus") or {}
    try:
        requested = float(cost["requestedQueryCost"])
        available = float(status["currentlyAvailable"])
        restore = float(status["restoreRate"])
    except (KeyError, TypeError, ValueError):
        return DEFAULT_THROTTLE_SECONDS
    if restore <= 0 or not all(map(math.isfinite, (requested, available, restore))):
        return DEFAULT_THROTTLE_SECONDS
    return max(1.0, math.ceil((requested - available) / restore))


def parse_order(node: Mapping[str, Any]) -> OrderFacts:
    """One `orders.nodes` item as OrderFacts (pure)."""
    customer = node.get("customer") or {}
    default_email = customer.get("defaultEmailAddress") or {}
    items = []
    for item in (node.get("lineItems") or {}).get("nodes") or []:
        title = str(item.get("title") or "").strip()
        if title:
            quantity = item.get("quantity") or 1
            items.append(f"{quantity} x {title}")
    fulfillments = [
        FulfillmentFacts(
            status=f.get("displayStatus"),
            estimated_delivery_at=f.get("estimatedDeliveryAt"),
            delivered_at=f.get("deliveredAt"),
            tracking=[
                TrackingFacts(number=t.get("number"), url=t.get("url"), company=t.get("company"))
                for t in f.get("trackingInfo") or []
            ],
        )
        for f in node.get("fulfillments") or []
    ]
    return OrderFacts(
        name=str(node.get("name") or ""),
        created_at=node.get("createdAt"),
        email=node.get("email"),
        customer_email=default_email.get("emailAddress"),
        financial_status=node.get("displayFinancialStatus"),
        fulfillment_status=node.get("displayFulfillmentStatus"),
        line_items=items,
        fulfillments=fulfillments,
    )


def raise_for_graphql_errors(payload: Mapping[str, Any]) -> None:
    """Turn a GraphQL `errors` list into a typed error (THROTTLED transient, others permanent)."""
    raw = payload.get("errors")
    if not raw:
        return
    if isinstance(raw, str):
        raise errors.PermanentError(raw, service=SERVICE)
    items = [e for e in raw if isinstance(e, Mapping)] if isinstance(raw, list) else []
    codes = [str((e.get("extensions") or {}).get("code") or "") for e in items]
    message = "; ".join(str(e.get("message") or "error") for e in items) or "GraphQL error"
    if "THROTTLED" in codes:
        retry_after = throttle_retry_after(payload.get("extensions"))
        raise errors.TransientError("throttled", service=SERVICE, retry_after=retry_after)
    if any(code in TRANSIENT_GRAPHQL_CODES for code in codes):
        raise errors.TransientError(message, service=SERVICE)
    status = 403 if ACCESS_DENIED_GRAPHQL_CODE in codes else None
    raise errors.PermanentError(message, service=SERVICE, http_status=status)


class ShopifyClient:
    """Read-only Admin GraphQL client for one shop; the httpx client is passed in."""

    def __init__(
        self,
        http: httpx.Client,
        shop_domain: str,
        access_token: str,
        api_version: str,
        base_url: str | None = None,
        *,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._http = http
        self._token = access_token
        self._timeout = timeout_seconds
        shop = shop_domain.strip().lower()
        path = f"/admin/api/{api_version}/graphql.json"
        # With an override (local fake, demo) the shop travels in the path instead of the host.
        self.endpoint = (
            f"{base_url.rstrip('/')}/{shop}{path}" if base_url else f"https://{shop}{path}"
        )

    def recent_orders_for_email(self, email: str, limit: int = 5) -> list[OrderFacts]:
        """The newest orders placed with this email address (at most `limit`)."""
        address = email.strip().lower()
        if not address:
            return []
        first = max(1, min(limit, MAX_ORDERS))
        return self._orders(f"email:{search_value(address)}", first)

    def order_by_number(self, number: str) -> OrderFacts | None:
        """The order named '#<number>', or None; a malformed number is simply not found."""
        match = _ORDER_NUMBER.match(number.strip())
        if not match:
            return None
        name = f"#{match.group(1)}"
        # Shopify's name search may match by prefix; keep only the exact order.
        for order in self._orders(f"name:{search_value(name)}", 5):
            if order.name == name:
                return order
        return None

    def shop_name(self) -> str:
        """The shop's name; a cheap call that proves the domain and token work."""
        data = self._execute(SHOP_QUERY, {})
        shop = data.get("shop") or {}
        return str(shop.get("name") or "")

    def _orders(self, search: str, first: int) -> list[OrderFacts]:
        data = self._execute(ORDERS_QUERY, {"query": search, "first": first})
        connection = data.get("orders") or {}
        return [parse_order(node) for node in connection.get("nodes") or [] if node]

    def _execute(self, query: str, variables: dict[str, Any]) -> Mapping[str, Any]:
        try:
            response = self._http.post(
                self.endpoint,
                json={"query": query, "variables": variables},
                headers={
                    "X-Shopify-Access-Token": self._token,
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                },
                timeout=self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise errors.TransientError("request timed out", service=SERVICE) from exc
        except httpx.TransportError as exc:
            raise errors.TransientError(f"connection failed: {exc}", service=SERVICE) from exc

        if response.status_code == 429 and "Retry-After" not in response.headers:
            # GraphQL throttling may come as a 429 carrying the cost extension instead of a header.
            raise errors.TransientError(
                "HTTP 429: throttled",
                service=SERVICE,
                retry_after=throttle_retry_after(_json_or_empty(response).get("extensions")),
            )
        if response.status_code >= 400:
            raise errors.classify_http_status(
                response.status_code,
                response.headers.get("Retry-After"),
                SERVICE,
                detail=_error_detail(response),
            )
        try:
            payload = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise errors.TransientError("response is not JSON", service=SERVICE) from exc
        if not isinstance(payload, Mapping):
            raise errors.TransientError("response is not a JSON object", service=SERVICE)
        raise_for_graphql_errors(payload)
        data = payload.get("data")
        if not isinstance(data, Mapping):
            raise errors.TransientError("response has no data", service=SERVICE)
        return data


def _json_or_empty(response: httpx.Response) -> Mapping[str, Any]:
    try:
        payload = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return payload if isinstance(payload, Mapping) else {}


def _error_detail(response: httpx.Response) -> str:
    problem = _json_or_empty(response).get("errors")
    if isinstance(problem, str):
        return problem[:200]
    return response.reason_phrase
