"""The console's notification settings form: what a store's owner typed, as the changes
console_set_notification_settings takes. Pure; the database validates the values."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

FIELDS = (
    "addresses",
    "digest_interval_minutes",
    "digest_wait_seconds",
    "webhook_url",
    "remove_webhook",
)
_SEPARATORS = re.compile(r"[\s,;]+")
_TRUE = ("1", "true", "on", "yes")


def changes_from_form(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a form (strings) or a JSON body (typed values) asks to change.

    addresses: a list, or text separated by commas, semicolons or line breaks; empty means the
    default (the store's people). A blank webhook_url keeps the current one (the form never
    shows it back); remove_webhook removes it.
    """
    changes: dict[str, Any] = {}
    if "addresses" in fields:
        value = fields["addresses"]
        if isinstance(value, str):
            value = [a for a in _SEPARATORS.split(value) if a]
        changes["addresses"] = value or None
    for key in ("digest_interval_minutes", "digest_wait_seconds"):
        value = fields.get(key)
        if isinstance(value, str):
            value = int(value) if value.strip().isdigit() else value.strip()
        if value is not None and value != "":
            changes[key] = value
    remove = fields.get("remove_webhook")
    if remove is True or (isinstance(remove, str) and remove.lower() in _TRUE):
        changes["webhook_url"] = None
    elif isinstance(fields.get("webhook_url"), str) and fields["webhook_url"].strip():
        changes["webhook_url"] = fields["webhook_url"].strip()
    return changes
