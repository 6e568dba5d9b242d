"""ShopifyClient over httpx, mocked with respx: queries sent, parsing, throttling, error classes."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import respx

from worker import errors
from worker.devstack.fake_shopify import (
    TEST_ACCESS_TOKEN,
    Catalogue,
    FakeShopify,
    seed_products,
    throttled_body,
)
from worker.product_query import product_search
from worker.shopify import ShopifyClient, format_money, missing_scopes, throttle_retry_after

SHOP = "demo-store.myshopify.com"
VERSION = "2025-10"
URL = f"https://{SHOP}/admin/api/{VERSION}/graphql.json"

NODE = {
    "name": "#1001",
    "createdAt": "2025-09-28T14:12:00Z",
    "email": "ana@example.com",
    "customer": {"defaultEmailAddress": {"emailAddress": "ana@example.com"}},
    "displayFinancialStatus": "PAID",
    "displayFulfillmentStatus": "FULFILLED",
    "lineItems": {"nodes": [{"title": "Camiseta", "quantity": 2}]},
    "fulfillments": [
        {
            "displayStatus": "IN_TRANSIT",
            "estimatedDeliveryAt": "2025-10-06T23:59:00Z",
            "deliveredAt": None,
            "trackingInfo": [
                {"number": "BR1", "url": "https://t.example/BR1", "company": "Correios"}
            ],
        }
    ],
}


def orders_body(*nodes: dict) -> dict:
    return {"data": {"orders": {"nodes": list(nodes)}}}


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


@pytest.fixture
def client() -> Iterator[ShopifyClient]:
    with httpx.Client() as http:
        yield ShopifyClient(http, SHOP, "shpat_unit", VERSION)


def sent(route: respx.Route) -> dict:
    return json.loads(route.calls.last.request.content)


def test_recent_orders_query_and_parsing(mock: respx.MockRouter, client: ShopifyClient) -> None:
    route = mock.post(URL).mock(return_value=httpx.Response(200, json=orders_body(NODE)))
    [order] = client.recent_orders_for_email(" Ana@Example.com ", limit=3)

    request = route.calls.last.request
    assert request.headers["X-Shopify-Access-Token"] == "shpat_unit"
    body = sent(route)
    assert body["variables"] == {"query": 'email:"ana@example.com"', "first": 3}
    for fieldname in (
        "displayFulfillmentStatus",
        "trackingInfo",
        "defaultEmailAddress",
        "estimatedDeliveryAt",
        "sortKey: CREATED_AT",
    ):
        assert fieldname in body["query"]

    assert order.name == "#1001"
    assert order.email == order.customer_email == "ana@example.com"
    assert order.fulfillment_status == "FULFILLED"
    assert order.line_items == ["2 x Camiseta"]
    [tracking] = order.fulfillments[0].tracking
    assert (tracking.number, tracking.company, tracking.url) == (
        "BR1",
        "Correios",
        "https://t.example/BR1",
    )
    assert order.estimated_delivery_at == "2025-10-06T23:59:00Z"


def test_search_values_are_quoted(mock: respx.MockRouter, client: ShopifyClient) -> None:
    route = mock.post(URL).mock(return_value=httpx.Response(200, json=orders_body()))
    client.recent_orders_for_email('x@example.com" OR email:*')
    assert sent(route)["variables"]["query"] == 'email:"x@example.com\\" or email:*"'


def test_order_by_number_keeps_only_the_exact_name(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    other = {**NODE, "name": "#10010"}
    route = mock.post(URL).mock(return_value=httpx.Response(200, json=orders_body(other, NODE)))
    order = client.order_by_number("#1001")
    assert order is not None and order.name == "#1001"
    assert sent(route)["variables"]["query"] == 'name:"#1001"'

    route.mock(return_value=httpx.Response(200, json=orders_body(other)))
    assert client.order_by_number("1001") is None


def test_malformed_numbers_are_not_queried(mock: respx.MockRouter, client: ShopifyClient) -> None:
    route = mock.post(URL)
    assert client.order_by_number("1001 OR name:*") is None
    assert client.order_by_number("") is None
    assert not route.called


def test_base_url_puts_the_shop_in_the_path(mock: respx.MockRouter) -> None:
    url = f"http://127.0.0.1:9000/{SHOP}/admin/api/{VERSION}/graphql.json"
    route = mock.post(url).mock(return_value=httpx.Response(200, json=orders_body()))
    with httpx.Client() as http:
        shop = ShopifyClient(http, SHOP, "t", VERSION, base_url="http://127.0.0.1:9000/")
        assert shop.recent_orders_for_email("a@example.com") == []
    assert route.called


def test_throttled_is_transient_with_refill_time(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    mock.post(URL).mock(
        return_value=httpx.Response(
            200, json=throttled_body(requested=252, available=12, restore_rate=50)
        )
    )
    with pytest.raises(errors.TransientError) as caught:
        client.recent_orders_for_email("a@example.com")
    assert caught.value.service == "shopify"
    assert caught.value.retry_after == 5.0  # ceil((252 - 12) / 50)


def test_throttle_retry_after_defaults_and_floor() -> None:
    assert throttle_retry_after(None) == 2.0
    assert (
        throttle_retry_after(
            {
                "cost": {
                    "requestedQueryCost": 10,
                    "throttleStatus": {"currentlyAvailable": 500, "restoreRate": 100},
                }
            }
        )
        == 1.0
    )


def test_429_honours_retry_after(mock: respx.MockRouter, client: ShopifyClient) -> None:
    mock.post(URL).mock(return_value=httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(errors.TransientError) as caught:
        client.recent_orders_for_email("a@example.com")
    assert caught.value.retry_after == 7.0


def test_429_without_header_uses_the_cost_extension(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    body = throttled_body(requested=300, available=0, restore_rate=100)
    mock.post(URL).mock(return_value=httpx.Response(429, json=body))
    with pytest.raises(errors.TransientError) as caught:
        client.recent_orders_for_email("a@example.com")
    assert caught.value.retry_after == 3.0


@pytest.mark.parametrize("status", [401, 403, 404, 402, 400])
def test_client_errors_are_permanent(
    mock: respx.MockRouter, client: ShopifyClient, status: int
) -> None:
    mock.post(URL).mock(return_value=httpx.Response(status, json={"errors": "[API] nope"}))
    with pytest.raises(errors.PermanentError) as caught:
        client.recent_orders_for_email("a@example.com")
    assert caught.value.service == "shopify"
    assert f"HTTP {status}" in str(caught.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(
    mock: respx.MockRouter, client: ShopifyClient, status: int
) -> None:
    mock.post(URL).mock(return_value=httpx.Response(status, text="<html>oops</html>"))
    with pytest.raises(errors.TransientError):
        client.recent_orders_for_email("a@example.com")


@pytest.mark.parametrize(
    "exc", [httpx.ConnectTimeout("t"), httpx.ReadTimeout("t"), httpx.ConnectError("refused")]
)
def test_network_failures_are_transient(
    mock: respx.MockRouter, client: ShopifyClient, exc: Exception
) -> None:
    mock.post(URL).mock(side_effect=exc)
    with pytest.raises(errors.TransientError) as caught:
        client.recent_orders_for_email("a@example.com")
    assert caught.value.service == "shopify"


def test_graphql_access_denied_is_permanent(mock: respx.MockRouter, client: ShopifyClient) -> None:
    body = {
        "errors": [
            {"message": "Access denied for orders field.", "extensions": {"code": "ACCESS_DENIED"}}
        ]
    }
    mock.post(URL).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(errors.PermanentError, match="Access denied") as caught:
        client.recent_orders_for_email("a@example.com")
    # a missing scope repeats on every call, like a refused token: it counts against the breaker
    assert caught.value.is_auth_failure


def test_other_graphql_errors_are_not_auth_failures(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    body = {
        "errors": [{"message": "Field 'x' doesn't exist", "extensions": {"code": "undefinedField"}}]
    }
    mock.post(URL).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(errors.PermanentError) as caught:
        client.recent_orders_for_email("a@example.com")
    assert not caught.value.is_auth_failure


def test_non_json_200_is_transient(mock: respx.MockRouter, client: ShopifyClient) -> None:
    mock.post(URL).mock(return_value=httpx.Response(200, text="<html>maintenance</html>"))
    with pytest.raises(errors.TransientError):
        client.recent_orders_for_email("a@example.com")


# The loopback fake must answer exactly what the client sends (used by integration tests,
# the demo and benchmarks), so the client is checked against it too.


@pytest.fixture
def live(fake_shopify: FakeShopify) -> Iterator[ShopifyClient]:
    with httpx.Client() as http:
        yield ShopifyClient(http, SHOP, TEST_ACCESS_TOKEN, VERSION, base_url=fake_shopify.base_url)


def test_fake_shop_serves_the_client(live: ShopifyClient, fake_shopify: FakeShopify) -> None:
    [order] = live.recent_orders_for_email("ANA.SOUZA@example.com.br")
    assert order.name == "#1001"
    assert order.fulfillments[0].tracking[0].number == "BR123456789BR"
    assert live.order_by_number("#1002") is not None
    assert live.order_by_number("#4040") is None
    assert live.shop_name() == "Loja Demo"
    assert fake_shopify.queries[0].path == f"/{SHOP}/admin/api/{VERSION}/graphql.json"


def test_fake_shop_scripts_failures(live: ShopifyClient, fake_shopify: FakeShopify) -> None:
    fake_shopify.throttle(requested=400, available=100, restore_rate=100)
    fake_shopify.reply_status(429, retry_after="4")
    fake_shopify.reply_status(503)
    with pytest.raises(errors.TransientError) as throttled:
        live.recent_orders_for_email("a@example.com")
    assert throttled.value.retry_after == 3.0
    with pytest.raises(errors.TransientError) as limited:
        live.recent_orders_for_email("a@example.com")
    assert limited.value.retry_after == 4.0
    with pytest.raises(errors.TransientError):
        live.recent_orders_for_email("a@example.com")
    assert live.recent_orders_for_email("john.miller@example.com")[0].name == "#1002"


def test_fake_shop_rejects_a_wrong_token(fake_shopify: FakeShopify) -> None:
    with httpx.Client() as http:
        shop = ShopifyClient(http, SHOP, "shpat_wrong", VERSION, base_url=fake_shopify.base_url)
        with pytest.raises(errors.PermanentError, match="HTTP 401"):
            shop.shop_name()


# -- fuller orders: shipment events, cancellation, refunds --------------------------------------


def test_orders_carry_shipment_events_newest_first_cancellation_and_refunds(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    fulfillment = {
        **NODE["fulfillments"][0],  # type: ignore[index]
        "events": {
            "nodes": [
                {"status": "OUT_FOR_DELIVERY", "happenedAt": "2025-10-05T08:00:00Z"},
                {"status": "IN_TRANSIT", "happenedAt": "2025-10-01T08:00Z", "message": " Hub  SP "},
            ]
        },
    }
    node = {
        **NODE,
        "fulfillments": [fulfillment],
        "cancelledAt": "2025-10-06T10:00:00Z",
        "refunds": [
            {
                "createdAt": "2025-10-06T10:05:00Z",
                "totalRefundedSet": {"shopMoney": {"amount": "89.9", "currencyCode": "BRL"}},
            }
        ],
    }
    route = mock.post(URL).mock(return_value=httpx.Response(200, json=orders_body(node)))
    [order] = client.recent_orders_for_email("ana@example.com")

    query = sent(route)["query"]
    assert "events(first: 5, sortKey: HAPPENED_AT, reverse: true)" in query
    assert "status happenedAt message" in query and "cancelledAt" in query
    assert "totalRefundedSet" in query
    events = order.fulfillments[0].events
    assert [(e.status, e.happened_at, e.message) for e in events] == [
        ("OUT_FOR_DELIVERY", "2025-10-05T08:00:00Z", None),
        ("IN_TRANSIT", "2025-10-01T08:00Z", "Hub SP"),
    ]
    assert order.cancelled_at == "2025-10-06T10:00:00Z"
    assert [(r.created_at, r.amount) for r in order.refunds] == [
        ("2025-10-06T10:05:00Z", "89.90 BRL")
    ]
    data = order.as_prompt_data()
    assert data["shipments"][0]["events"][0]["status"] == "OUT_FOR_DELIVERY"
    assert data["cancelled_at"] == "2025-10-06T10:00:00Z"
    assert data["refunds"] == [{"refunded_at": "2025-10-06T10:05:00Z", "amount": "89.90 BRL"}]


def test_an_order_without_events_refunds_or_cancellation_says_nothing_of_them(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    mock.post(URL).mock(return_value=httpx.Response(200, json=orders_body(NODE)))
    [order] = client.recent_orders_for_email("ana@example.com")
    data = order.as_prompt_data()
    assert "cancelled_at" not in data and "refunds" not in data
    assert "events" not in data["shipments"][0]


# -- the catalogue ---------------------------------------------------------------------------------


def product_node(title: str, **overrides: object) -> dict:
    node = {
        "title": title,
        "handle": title.lower().replace(" ", "-"),
        "status": "ACTIVE",
        "onlineStoreUrl": f"https://shop.example/products/{title.lower().replace(' ', '-')}",
        "priceRangeV2": {
            "minVariantPrice": {"amount": "129.0", "currencyCode": "BRL"},
            "maxVariantPrice": {"amount": "129.0", "currencyCode": "BRL"},
        },
        "variants": {
            "nodes": [
                {"title": "Navy", "price": "129.00", "availableForSale": True},
                {"title": "Burgundy", "price": "129.00", "availableForSale": False},
            ]
        },
    }
    node.update(overrides)
    return node


def products_body(*nodes: dict) -> dict:
    return {"data": {"products": {"nodes": list(nodes)}}}


def test_product_search_query_and_parsing(mock: respx.MockRouter, client: ShopifyClient) -> None:
    route = mock.post(URL).mock(
        return_value=httpx.Response(200, json=products_body(product_node("Wool Scarf")))
    )
    [scarf] = client.search_products('status:active AND (scarf* OR "wool scarf")')

    body = sent(route)
    assert body["variables"] == {"query": 'status:active AND (scarf* OR "wool scarf")', "first": 10}
    query = body["query"]
    for wanted in ("products(", "sortKey: RELEVANCE", "onlineStoreUrl", "priceRangeV2",
                   "availableForSale", "status"):
        assert wanted in query
    # Stock counts are not public and need read_inventory: never asked for.
    assert "inventoryQuantity" not in query and "totalInventory" not in query

    assert scarf.title == "Wool Scarf"
    assert scarf.url == "https://shop.example/products/wool-scarf"
    assert scarf.price == "129.00 BRL"
    assert scarf.available is True
    assert [(v.title, v.price, v.available) for v in scarf.variants] == [
        ("Navy", "129.00 BRL", True),
        ("Burgundy", "129.00 BRL", False),
    ]


def test_drafts_archived_and_unpublished_products_are_dropped_even_when_shopify_returns_them(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    nodes = [
        product_node("Draft Scarf", status="DRAFT"),
        product_node("Archived Scarf", status="ARCHIVED"),
        product_node("Hidden Scarf", onlineStoreUrl=None),
        product_node("Wool Scarf"),
    ]
    mock.post(URL).mock(return_value=httpx.Response(200, json=products_body(*nodes)))
    assert [p.title for p in client.search_products("scarf*")] == ["Wool Scarf"]


def test_a_price_range_a_sold_out_product_and_the_default_variant(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    ranged = product_node(
        "Tote",
        priceRangeV2={
            "minVariantPrice": {"amount": "59.9", "currencyCode": "USD"},
            "maxVariantPrice": {"amount": "79.9", "currencyCode": "USD"},
        },
        variants={
            "nodes": [{"title": "Default Title", "price": "59.90", "availableForSale": False}]
        },
    )
    mock.post(URL).mock(return_value=httpx.Response(200, json=products_body(ranged)))
    [tote] = client.search_products("tote*")
    assert tote.price == "59.90 USD - 79.90 USD"
    assert tote.available is False
    assert tote.variants == []  # "Default Title" names no option


def test_product_search_limits_and_empty_searches(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    nodes = [product_node(f"Scarf {n}") for n in range(8)]
    route = mock.post(URL).mock(return_value=httpx.Response(200, json=products_body(*nodes)))
    assert len(client.search_products("scarf*")) == 5
    assert len(client.search_products("scarf*", limit=2)) == 2
    calls = route.call_count
    assert client.search_products("  ") == []
    assert route.call_count == calls


def test_product_search_errors_are_classified_like_the_order_lookup(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    denied = {
        "errors": [
            {
                "message": "Access denied for products field. Required access: `read_products`",
                "extensions": {"code": "ACCESS_DENIED"},
            }
        ]
    }
    route = mock.post(URL).mock(return_value=httpx.Response(200, json=denied))
    with pytest.raises(errors.PermanentError, match="read_products") as caught:
        client.search_products("scarf*")
    assert caught.value.is_auth_failure and caught.value.service == "shopify"

    route.mock(return_value=httpx.Response(200, json=throttled_body(252, 12, 50)))
    with pytest.raises(errors.TransientError) as throttled:
        client.search_products("scarf*")
    assert throttled.value.retry_after == 5.0

    route.mock(side_effect=httpx.ReadTimeout("t"))
    with pytest.raises(errors.TransientError, match="timed out"):
        client.search_products("scarf*")


def test_fake_shop_serves_the_catalogue_and_shipment_events(
    live: ShopifyClient, fake_shopify: FakeShopify
) -> None:
    found = live.search_products('status:active AND ("wool scarf" OR navy*)')
    assert [p.title for p in found] == ["Wool Scarf"]  # draft, archived, unpublished left out
    [scarf] = found
    assert scarf.url == "https://lojaexemplo.com.br/products/wool-scarf"
    assert {v.title: v.available for v in scarf.variants} == {
        "Grey": True,
        "Navy": True,
        "Burgundy": False,
    }
    # Without status:active the fake returns drafts too, like Shopify; the client drops them.
    assert [p.title for p in live.search_products("scarf*")] == ["Wool Scarf"]

    [order] = live.recent_orders_for_email("ana.souza@example.com.br")
    assert order.fulfillments[0].events[0].status == "IN_TRANSIT"
    assert len(order.fulfillments[0].events) == 3
    [refunded] = live.recent_orders_for_email("lucia.garcia@example.es")
    assert refunded.cancelled_at and refunded.refunds[0].amount == "R$ 45,00"


def test_fake_shop_denies_what_the_token_has_no_scope_for(
    live: ShopifyClient, fake_shopify: FakeShopify
) -> None:
    assert live.shop_check() == ("Loja Demo", ["read_customers", "read_orders", "read_products"])
    fake_shopify.scopes = {"read_customers", "read_orders"}
    assert live.shop_check() == ("Loja Demo", ["read_customers", "read_orders"])
    with pytest.raises(errors.PermanentError, match="read_products"):
        live.search_products("scarf*")
    assert live.recent_orders_for_email("john.miller@example.com")


def test_missing_scopes_counts_a_write_scope_as_its_read_scope() -> None:
    assert missing_scopes(["read_customers", "read_orders", "read_products"]) == []
    assert missing_scopes(["write_orders", "read_products", "write_customers"]) == []
    assert missing_scopes(["read_customers", "read_orders"]) == ["read_products"]
    assert missing_scopes([]) == ["read_customers", "read_orders", "read_products"]


@pytest.mark.parametrize(
    ("amount", "currency", "money_format", "expected"),
    [
        ("1234.5", "BRL", "R$ {{amount_with_comma_separator}}", "R$ 1.234,50"),
        ("49", "USD", "${{amount}}", "$49.00"),
        ("89", "EUR", "{{ amount_with_comma_separator }} €", "89,00 €"),
        ("1234.5", "CHF", "<b>{{amount_with_apostrophe_separator}}</b>", "1'234.50"),
        ("1200", "JPY", "¥{{amount_no_decimals}}", "¥1,200"),
        ("129", "BRL", None, "129.00 BRL"),  # the shop's format unknown
        ("129", "BRL", "{{unknown_placeholder}}", "129.00 BRL"),
        ("not a number", "BRL", "${{amount}}", None),
    ],
)
def test_money_is_written_as_the_shop_writes_it_in_its_emails(
    amount: str, currency: str, money_format: str | None, expected: str | None
) -> None:
    assert format_money(amount, currency, money_format) == expected


def test_prices_and_refunds_use_the_shops_money_format(
    mock: respx.MockRouter, client: ShopifyClient
) -> None:
    shop = {"currencyFormats": {"moneyInEmailsFormat": "R$ {{amount_with_comma_separator}}"}}
    body = products_body(product_node("Wool Scarf"))
    body["data"]["shop"] = shop
    route = mock.post(URL).mock(return_value=httpx.Response(200, json=body))
    [scarf] = client.search_products("scarf*")
    assert "currencyFormats { moneyInEmailsFormat }" in sent(route)["query"]
    assert scarf.price == "R$ 129,00" and scarf.variants[0].price == "R$ 129,00"

    node = {
        **NODE,
        "refunds": [
            {
                "createdAt": "2025-10-06T10:05:00Z",
                "totalRefundedSet": {"shopMoney": {"amount": "1089.9", "currencyCode": "BRL"}},
            }
        ],
    }
    body = orders_body(node)
    body["data"]["shop"] = shop
    route.mock(return_value=httpx.Response(200, json=body))
    [order] = client.recent_orders_for_email("ana@example.com")
    assert order.refunds[0].amount == "R$ 1.089,90"


@pytest.mark.parametrize(
    ("products", "subject", "body", "quoted"),
    [
        (
            [
                {"title": "Jaqueta Jeans Clássica", "status": "ACTIVE", "price": "R$ 259,90",
                 "available": True, "variants": ["P", "M", "G"],
                 "url": "https://loja.example/products/jaqueta-jeans-classica"},
                {"title": "Jaqueta Jeans Edição Secreta", "status": "DRAFT", "price": "R$ 999,00",
                 "variants": ["M"], "url": None},
            ],
            "Jaqueta jeans tamanho G",
            "Oi! Vocês têm a jaqueta jeans no tamanho G? Qual o preço? Camila",
            ["R$ 259,90", "Jaqueta Jeans Clássica", "/products/jaqueta-jeans-classica"],
        ),
        (
            [
                {"title": "Bolso de Cuero Marrón", "status": "ACTIVE", "price": "89,00 €",
                 "available": False, "variants": ["Único"],
                 "url": "https://loja.example/products/bolso-de-cuero"},
                {"title": "Bolso de Cuero Borrador", "status": "DRAFT", "price": "19,00 €",
                 "variants": ["Único"], "url": None},
            ],
            "¿Tenéis el bolso de cuero?",
            "Hola, ¿el bolso de cuero marrón está disponible? ¿Cuánto cuesta? Irene",
            ["89,00 €", "Bolso de Cuero Marrón"],
        ),
        (
            [
                {"title": "Linen Shirt", "status": "ACTIVE", "price": "$49.00",
                 "variants": ["S", "L / Blue"],
                 "url": "https://loja.example/products/linen-shirt"},
                {"title": "Linen Shirt Prototype", "status": "ACTIVE", "price": "$1.00",
                 "variants": ["L"], "url": None},
            ],
            "Linen shirt in L blue?",
            "Hello! Do you have the linen shirt in size L, in blue? How much is it? Ben",
            ["$49.00", "L / Blue"],
        ),
    ],
)
def test_test_case_products_seeded_in_the_fake_shop_come_back_as_the_case_writes_them(
    live: ShopifyClient,
    fake_shopify: FakeShopify,
    products: list[dict],
    subject: str,
    body: str,
    quoted: list[str],
) -> None:
    fake_shopify.catalogue = Catalogue()
    seed_products(fake_shopify.catalogue, products)
    search = product_search(subject, body)
    assert search is not None

    found = live.search_products(search)

    assert len(found) == 1  # the draft or unpublished one never comes back
    data = json.dumps([p.as_prompt_data() for p in found], ensure_ascii=False)
    for fact in quoted:
        assert fact in data
    assert products[1]["title"] not in data and products[1]["price"] not in data
