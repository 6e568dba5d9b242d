"""Shopify's Admin API support window, computed from the calendar (pure).

Shopify releases a stable version at the start of each quarter (YYYY-01, -04, -07, -10, at 17:00
UTC) and supports each for at least 12 months from its release, so the window moves by itself:
no list of versions to keep up to date here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

SUPPORT_MONTHS = 12
RELEASE_HOUR_UTC = 17
_STABLE = re.compile(r"^(\d{4})-(01|04|07|10)$")


def release_time(version: str) -> datetime | None:
    """When a stable version was (or will be) released; None for `unstable` or a bad name."""
    match = _STABLE.match(version)
    if match is None:
        return None
    return datetime(int(match[1]), int(match[2]), 1, RELEASE_HOUR_UTC, tzinfo=UTC)


def _months_later(release: datetime, months: int) -> datetime:
    # Only ever applied to release times, which fall on the 1st, so the day always exists.
    index = release.year * 12 + release.month - 1 + months
    return release.replace(year=index // 12, month=index % 12 + 1)


def is_supported(release: datetime, now: datetime) -> bool:
    """Whether a version released at `release` is inside its support window at `now`."""
    return release <= now < _months_later(release, SUPPORT_MONTHS)


def oldest_supported(now: datetime) -> str:
    """The oldest stable version Shopify still supports at `now` (aware)."""
    quarter = (now.month - 1) // 3 * 3 + 1
    newest = datetime(now.year, quarter, 1, RELEASE_HOUR_UTC, tzinfo=UTC)
    if now < newest:  # this quarter's version comes out at 17:00 UTC on the 1st
        newest = _months_later(newest, -3)
    oldest = newest
    while is_supported(_months_later(oldest, -3), now):
        oldest = _months_later(oldest, -3)
    return f"{oldest.year:04d}-{oldest.month:02d}"


def support_warning(version: str, now: datetime | None = None) -> str | None:
    """A one-line warning when `version` is not a supported stable version at `now`, else None."""
    now = now or datetime.now(UTC)
    released = release_time(version)
    if released is None:
        return (
            f"SHOPIFY_API_VERSION={version} is not a stable version; Shopify may change it at any "
            "time. Use a stable version such as " + oldest_supported(now) + " or newer"
        )
    if now < released:
        return f"SHOPIFY_API_VERSION={version} is not released yet; Shopify will answer 404"
    if now >= _months_later(released, SUPPORT_MONTHS):
        return (
            f"SHOPIFY_API_VERSION={version} is past Shopify's 12-month support window (the oldest "
            f"supported is {oldest_supported(now)}); Shopify now answers with a newer version. "
            "Set a supported version"
        )
    return None
