"""The conversation's earlier messages as the model may see them (pure; decision 0023).

load_job_context hands over the conversation's earlier customer messages and the replies that
went out (automatic or a person's), newest 12. Here each loses its quoted history and signature
(worker.quotes), is cut to MESSAGE_CHARS, and the newest that fit THREAD_BUDGET_CHARS are kept,
in order, newest last. Characters, not tokens: the worker has no tokenizer, and for pt/en/es
text Claude's tokens run at about 3.5-4 characters, so 6,000 characters is ~1,500-1,700 tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from worker.quotes import own_text
from worker.responder import ThreadMessage

THREAD_BUDGET_CHARS = 6_000  # all earlier messages together
MESSAGE_CHARS = 1_500  # one earlier message (the current email has its own bound in prompts)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def thread_messages(
    rows: Iterable[Mapping[str, Any]],
    *,
    budget_chars: int = THREAD_BUDGET_CHARS,
    message_chars: int = MESSAGE_CHARS,
) -> list[ThreadMessage]:
    """Earlier messages, stripped and trimmed to the budget; oldest first, newest last."""
    stripped: list[ThreadMessage] = []
    for row in rows:
        author = row.get("author")
        if author not in ("customer", "store"):
            continue
        text = _cut(own_text(str(row.get("text") or "")), message_chars)
        if text:
            at = row.get("at")
            stripped.append(
                ThreadMessage(author=author, sent_at=str(at) if at else None, text=text)
            )
    kept: list[ThreadMessage] = []
    used = 0
    for message in reversed(stripped):
        if used + len(message.text) > budget_chars:
            break
        kept.append(message)
        used += len(message.text)
    return list(reversed(kept))
