"""Pytest plugin: `fake_claude` and `fake_shopify`, loopback HTTP fakes of the two AI/commerce APIs,
and `webhook_sink`, a notification webhook receiver.

Each fixture starts its server on a free 127.0.0.1 port for one test and stops it afterwards;
the real anthropic SDK and the real ShopifyClient are pointed at `fake.base_url`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.devstack.fake_claude import TEST_API_KEY, FakeClaude
from worker.devstack.fake_shopify import TEST_ACCESS_TOKEN, FakeShopify, demo_catalogue
from worker.devstack.webhook_sink import WebhookSink

__all__ = ["TEST_ACCESS_TOKEN", "TEST_API_KEY", "fake_claude", "fake_shopify", "webhook_sink"]


@pytest.fixture
def fake_claude() -> Iterator[FakeClaude]:
    """A running FakeClaude accepting TEST_API_KEY; unscripted requests get plausible answers."""
    with FakeClaude(api_key=TEST_API_KEY) as fake:
        yield fake


@pytest.fixture
def fake_shopify() -> Iterator[FakeShopify]:
    """A running FakeShopify with the demo catalogue, accepting TEST_ACCESS_TOKEN."""
    with FakeShopify(demo_catalogue(), access_token=TEST_ACCESS_TOKEN) as fake:
        yield fake


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    """A running webhook receiver answering 200 `ok` (Slack's answer) unless scripted."""
    with WebhookSink() as sink:
        yield sink
