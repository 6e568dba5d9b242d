"""Shopify's support window, computed from the date: quarterly versions, 12 months each."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from worker.app import warn_about_settings
from worker.config import DEFAULT_SHOPIFY_API_VERSION, Settings
from worker.shopify_versions import oldest_supported, support_warning

TODAY = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "oldest"),
    [
        (TODAY, "2026-01"),
        # 2025-10 is supported until 2026-10-01, when 2026-10 comes out at 17:00 UTC.
        (datetime(2026, 10, 1, 16, 59, tzinfo=UTC), "2025-10"),
        (datetime(2026, 10, 1, 17, 0, tzinfo=UTC), "2026-01"),
        (datetime(2027, 1, 31, 23, 0, tzinfo=UTC), "2026-04"),
        (datetime(2027, 3, 31, 23, 0, tzinfo=UTC), "2026-04"),
    ],
)
def test_oldest_supported_moves_with_the_calendar(now: datetime, oldest: str) -> None:
    assert oldest_supported(now) == oldest


def test_the_default_is_supported_today() -> None:
    assert support_warning(DEFAULT_SHOPIFY_API_VERSION, TODAY) is None
    assert support_warning("2026-01", TODAY) is None


def test_versions_past_their_window_or_unstable_or_unreleased_warn() -> None:
    expired = support_warning("2025-10", TODAY)
    assert expired is not None and "2025-10" in expired and "oldest supported is 2026-01" in expired
    assert support_warning("unstable", TODAY) is not None
    assert support_warning("2027-01", TODAY) is not None


def test_start_up_logs_one_line_for_an_old_version(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.app"):
        warn_about_settings(Settings(shopify_api_version="2024-01"))
        warn_about_settings(Settings())
    [record] = caplog.records
    assert "SHOPIFY_API_VERSION=2024-01" in record.getMessage()
