"""The answer-quality cases about the thread and the store's knowledge (tests/answers/cases/kn-*
and th-*), checked at the prompt: exactly the facts a good answer needs reach the model's draft
request, and the ones it must never see do not. (The end-to-end run of every case, with the fake
and with a real key, is tests/answers' harness; this checks the thread and knowledge parts
without a server.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker import knowledge, prompts, quotes, thread
from worker.responder import EmailFacts, ReplyContext, StoreVoice

CASES_DIR = Path(__file__).resolve().parents[1] / "answers" / "cases"
CASES = sorted(p for p in CASES_DIR.glob("*.json") if p.name.startswith(("kn-", "th-")))


def draft_text(case: dict[str, Any]) -> str:
    """The user turn of the request the pipeline would build for the case."""
    email = case["email"]
    body = quotes.own_text(email["body"]) or email["body"]
    facts = EmailFacts(email["from"], email["subject"], body)
    entries = knowledge.entries_from_rows(case.get("knowledge") or [])
    rows = [
        {"author": "store" if m["from"] == "store" else "customer", "at": None, "text": m["body"]}
        for m in case.get("thread") or []
    ]
    context = ReplyContext(
        StoreVoice("Loja Exemplo"),
        thread=thread.thread_messages(rows),
        knowledge=knowledge.select(entries, facts.subject, facts.body),
    )
    request = prompts.answer_request(facts, context)
    return "\n".join(block["text"] for block in request["messages"][0]["content"])


def test_there_are_thread_and_knowledge_cases() -> None:
    assert len(CASES) >= 9


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_exactly_the_right_facts_reach_the_model(path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))
    text = draft_text(case)
    for fact in case["must_contain"]:
        assert fact in text, f"{fact!r} should reach the model"
    for fact in case["must_not_contain"]:
        assert fact not in text, f"{fact!r} must not reach the model"
