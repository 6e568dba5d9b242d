"""Shopify Admin GraphQL client: a customer's orders (OrderFacts), catalogue search (ProductFacts).

Honours Shopify's cost-based throttling: a THROTTLED error becomes a TransientError whose
retry-after is the time the bucket needs to refill to the query's requested cost.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx

from worker import errors
from worker.responder import (
    FulfillmentFacts,
    OrderFacts,
    ProductFacts,
    RefundFacts,
    ShipmentEvent,
    TrackingFacts,
    VariantFacts,
)

SERVICE = "shopify"
DEFAULT_TIMEOUT_SECONDS = 15.0
MAX_LINE_ITEMS = 10
MAX_FULFILLMENTS = 5
MAX_TRACKING = 5
MAX_ORDERS = 25
MAX_EVENTS = 5  # the newest steps of each shipment
MAX_REFUNDS = 5
MAX_PRODUCTS = 5  # products a reply is grounded in
PRODUCT_CANDIDATES = 10  # asked for, so unpublished ones can be dropped and MAX_PRODUCTS remain
MAX_VARIANTS = 10
# Shopify names the only variant of a product without options "Default Title"; not worth saying.
DEFAULT_VARIANT_TITLE = "Default Title"
# The scopes the worker's reads need (the order's customer address needs read_customers);
# `stores check` reports the missing ones.
REQUIRED_SCOPES = ("read_customers", "read_orders", "read_products")
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
        events(first: {MAX_EVENTS}, sortKey: HAPPENED_AT, reverse: true) {{
          nodes {{ status happenedAt message }}
        }}
      }}
      cancelledAt
      refunds(first: {MAX_REFUNDS}) {{
        createdAt
        totalRefundedSet {{ shopMoney {{ amount currencyCode }} }}
      }}
    }}
  }}
  shop {{ currencyFormats {{ moneyInEmailsFormat }} }}
}}
""".strip()

# Public catalogue data only: no inventory counts (they need read_inventory and are not what a
# storefront shows), no drafts (asked for `status:active`, and checked again when parsed).
PRODUCTS_QUERY = f"""
query SupportProducts($query: String!, $first: Int!) {{
  products(first: $first, query: $query, sortKey: RELEVANCE) {{
    nodes {{
      title
      handle
      status
      onlineStoreUrl
      priceRangeV2 {{
        minVariantPrice {{ amount currencyCode }}
        maxVariantPrice {{ amount currencyCode }}
      }}
      variants(first: {MAX_VARIANTS}) {{ nodes {{ title price availableForSale }} }}
    }}
  }}
  shop {{ currencyFormats {{ moneyInEmailsFormat }} }}
}}
""".strip()

SHOP_QUERY = "query SupportShop { shop { name myshopifyDomain } }"
# The shop's name and the token's scopes in one request, for `stores check`; asking for the
# scopes needs no scope.
SHOP_CHECK_QUERY = (
    "query SupportShopCheck { shop { name myshopifyDomain } "
    "currentAppInstallation { accessScopes { handle } } }"
)

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


def parse_order(node: Mapping[str, Any], money_format: str | None = None) -> OrderFacts:
    """One `orders.nodes` item as OrderFacts (pure); amounts in the shop's money format."""
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
            events=[
                ShipmentEvent(
                    status=e.get("status"),
                    happened_at=e.get("happenedAt"),
                    message=_text(e.get("message")),
                )
                for e in (f.get("events") or {}).get("nodes") or []
                if e
            ][:MAX_EVENTS],
        )
        for f in node.get("fulfillments") or []
    ]
    refunds = [
        RefundFacts(
            created_at=r.get("createdAt"),
            amount=money(
                ((r.get("totalRefundedSet") or {}).get("shopMoney")) or {},
                money_format=money_format,
            ),
        )
        for r in node.get("refunds") or []
        if r
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
        cancelled_at=node.get("cancelledAt"),
        refunds=refunds,
    )


def _text(value: object) -> str | None:
    text = " ".join(str(value).split()) if value is not None else ""
    return text or None


# The shop's money format placeholders (Liquid): thousands separator, decimal mark, decimals.
_MONEY_PLACEHOLDERS = {
    "amount": (",", ".", 2),
    "amount_no_decimals": (",", ".", 0),
    "amount_with_comma_separator": (".", ",", 2),
    "amount_no_decimals_with_comma_separator": (".", ",", 0),
    "amount_with_apostrophe_separator": ("'", ".", 2),
    "amount_no_decimals_with_space_separator": (" ", ".", 0),
    "amount_with_space_separator": (" ", ",", 2),
    "amount_with_period_and_space_separator": (" ", ".", 2),
}
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_TAG = re.compile(r"<[^>]*>")


def amount_text(amount: object) -> str | None:
    """A decimal amount with two places ('89.9' -> '89.90'); None when it is not a number."""
    value = _decimal(amount)
    return None if value is None else f"{value.quantize(Decimal('0.01'))}"


def _decimal(amount: object) -> Decimal | None:
    try:
        value = Decimal(str(amount))
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() else None


def format_money(amount: object, currency: str | None, money_format: str | None) -> str | None:
    """An amount as the shop writes money in its emails ('R$ {{amount_with_comma_separator}}'
    -> 'R$ 1.234,50'); '1234.50 BRL' when the shop's format is unknown. None for no amount."""
    value = _decimal(amount)
    if value is None:
        return None
    canonical = f"{value.quantize(Decimal('0.01'))}" + (f" {currency}" if currency else "")
    template = _TAG.sub("", money_format or "").strip()
    names = _PLACEHOLDER.findall(template)
    if not names or any(name not in _MONEY_PLACEHOLDERS for name in names):
        return canonical

    def render(match: re.Match[str]) -> str:
        thousands, decimal_mark, places = _MONEY_PLACEHOLDERS[match.group(1)]
        grouped = f"{value:,.{places}f}"  # '1,234.50'
        return grouped.replace(",", "\0").replace(".", decimal_mark).replace("\0", thousands)

    return _PLACEHOLDER.sub(render, template)


def money(
    node: Mapping[str, Any], currency: str | None = None, money_format: str | None = None
) -> str | None:
    """A MoneyV2 ({amount, currencyCode}) in the shop's format, else as '89.90 BRL'."""
    return format_money(node.get("amount"), node.get("currencyCode") or currency, money_format)


def shop_money_format(data: Mapping[str, Any]) -> str | None:
    """The shop's money format for emails, from a response's `shop.currencyFormats`."""
    formats = (data.get("shop") or {}).get("currencyFormats") or {}
    value = formats.get("moneyInEmailsFormat")
    return str(value) if value else None


def is_public(node: Mapping[str, Any]) -> bool:
    """An active product published to the online store: what any visitor of the shop can see."""
    return str(node.get("status") or "").upper() == "ACTIVE" and bool(node.get("onlineStoreUrl"))


def parse_product(node: Mapping[str, Any], money_format: str | None = None) -> ProductFacts:
    """One `products.nodes` item as ProductFacts (pure); callers keep only `is_public` ones.
    Prices are written in the shop's own money format when it is known."""
    price_range = node.get("priceRangeV2") or {}
    low = price_range.get("minVariantPrice") or {}
    high = price_range.get("maxVariantPrice") or {}
    currency = low.get("currencyCode") or high.get("currencyCode")
    low_price = money(low, currency, money_format)
    high_price = money(high, currency, money_format)
    if low_price and high_price and _decimal(low.get("amount")) != _decimal(high.get("amount")):
        price: str | None = f"{low_price} - {high_price}"
    else:
        price = low_price or high_price
    variants: list[VariantFacts] = []
    buyable: list[object] = []
    for variant in (node.get("variants") or {}).get("nodes") or []:
        if not variant:
            continue
        flag = variant.get("availableForSale")
        buyable.append(flag)
        title = _text(variant.get("title"))
        if not title or title == DEFAULT_VARIANT_TITLE:
            continue
        variants.append(
            VariantFacts(
                title=title,
                price=format_money(variant.get("price"), currency, money_format),
                available=flag if isinstance(flag, bool) else None,
            )
        )
    # Available when any variant can be bought; unknown when Shopify did not say for every one.
    known = bool(buyable) and all(isinstance(flag, bool) for flag in buyable)
    available = any(flag is True for flag in buyable) if known else None
    return ProductFacts(
        title=_text(node.get("title")) or "",
        url=node.get("onlineStoreUrl"),
        available=available,
        price=price,
        variants=variants,
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


def missing_scopes(granted: list[str]) -> list[str]:
    """The scopes the worker needs that a token lacks (a write scope implies its read scope)."""
    have = set(granted) | {f"read_{s.removeprefix('write_')}" for s in granted}
    return [scope for scope in REQUIRED_SCOPES if scope not in have]


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

    def search_products(self, search: str, limit: int = MAX_PRODUCTS) -> list[ProductFacts]:
        """The public products (active, on the online store) a search finds, best match first.

        `search` is Shopify search syntax as worker.product_query builds it.
        """
        if not search.strip():
            return []
        first = max(limit, PRODUCT_CANDIDATES)
        data = self._execute(PRODUCTS_QUERY, {"query": search, "first": first})
        connection = data.get("products") or {}
        nodes = [node for node in connection.get("nodes") or [] if node]
        money_format = shop_money_format(data)
        public = [parse_product(node, money_format) for node in nodes if is_public(node)]
        return public[: max(0, limit)]

    def shop_name(self) -> str:
        """The shop's name; a cheap call that proves the domain and token work."""
        data = self._execute(SHOP_QUERY, {})
        shop = data.get("shop") or {}
        return str(shop.get("name") or "")

    def shop_check(self) -> tuple[str, list[str]]:
        """The shop's name and the scopes the token was granted (sorted), in one request."""
        data = self._execute(SHOP_CHECK_QUERY, {})
        shop = data.get("shop") or {}
        installation = data.get("currentAppInstallation") or {}
        scopes = sorted(
            str(scope.get("handle"))
            for scope in installation.get("accessScopes") or []
            if scope and scope.get("handle")
        )
        return str(shop.get("name") or ""), scopes


    def _orders(self, search: str, first: int) -> list[OrderFacts]:
        data = self._execute(ORDERS_QUERY, {"query": search, "first": first})
        connection = data.get("orders") or {}
        money_format = shop_money_format(data)
        return [parse_order(node, money_format) for node in connection.get("nodes") or [] if node]

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
