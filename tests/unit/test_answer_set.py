"""The answer-quality set's files and the live score (worker.devstack.answer_set), no servers."""

from __future__ import annotations

import pytest

from worker.devstack import answer_set
from worker.devstack.answer_set import Case, CaseRun


def run_of(case: Case, body: str | None, language: str = "pt-BR") -> CaseRun:
    reply = None if body is None else {"body_text": body, "language": language}
    return CaseRun(case, "j1", "replied", reply, [], 1.0)


CASE = Case.from_json(
    {
        "id": "pt-x",
        "email": {"from": "ana@example.com", "subject": "Pedido", "body": "Cadê?"},
        "language": "pt",
        "must_contain": ["BR123", "Camiseta Algodão"],
        "must_not_contain": ["1Z999"],
    }
)


def test_every_case_file_loads_and_names_what_it_needs() -> None:
    cases = answer_set.load_cases()
    assert len(cases) >= 40
    for case in cases:
        assert case.language in ("pt", "en", "es"), case.id
        # A case about orders says exactly which may reach the model.
        if case.orders and case.outcome != "spam":
            assert case.orders_seen is not None, case.id


def test_a_good_reply_scores_and_accents_do_not_matter() -> None:
    score = answer_set.score_reply(
        run_of(CASE, "Olá! Seu pedido (camiseta algodao) está com o BR123.")
    )
    assert score["all_present"] and score["leaked"] == [] and score["language_ok"]


def test_a_missing_fact_a_leak_and_a_wrong_language_are_each_reported() -> None:
    neighbour = answer_set.load_neighbour().facts[0]
    score = answer_set.score_reply(run_of(CASE, f"Hi! BR123, 1Z999 and {neighbour}.", "en"))
    assert score["must_contain"] == "1/2" and not score["all_present"]
    assert score["leaked"] == ["1Z999", neighbour]
    assert not score["language_ok"]
    assert answer_set.score_reply(run_of(CASE, None))["has_reply"] is False


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outcome": "sent"}, "outcome"),
        ({"needs": ["magic"]}, "needs"),
        ({"surprise": 1}, "unknown keys"),
        ({"email": {"from": "a@example.com"}}, "email needs"),
    ],
)
def test_a_malformed_case_fails_loudly(change: dict[str, object], message: str) -> None:
    data = {
        "id": "bad",
        "email": {"from": "a@example.com", "subject": "s", "body": "b"},
        "language": "en",
        "must_contain": [],
        "must_not_contain": [],
        **change,
    }
    with pytest.raises(ValueError, match=message):
        Case.from_json(data)
