"""Make any value storable in Postgres text and jsonb; pure.

Postgres rejects NUL in text and jsonb (and "\\u0000" in jsonb), and lone UTF-16 surrogates
cannot be encoded at all. Such characters come from hostile or broken mail (a NUL in an
attachment's content type, raw 8-bit bytes kept as surrogate escapes) and from error texts that
quote it; one of them fails the whole call, so every argument is cleaned on its way to the
database (worker/db), not field by field where someone might forget one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` without the characters Postgres text/jsonb cannot hold."""
    return _UNSTORABLE.sub("", text) if _UNSTORABLE.search(text) else text


def clean_value(value: Any) -> Any:
    """`value` with every string in it (mapping keys too) cleaned; other values unchanged."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, Mapping):
        return {clean_value(k): clean_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_value(item) for item in value]
    return value
