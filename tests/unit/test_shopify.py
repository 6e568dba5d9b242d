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
    FakeShopify,
    throttled_body,
)
from worker.shopify import ShopifyClient, throttle_retry_after

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
