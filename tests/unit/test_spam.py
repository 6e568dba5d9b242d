"""Spam heuristics: catch the obvious, never flag a real customer."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.data import load_eml
from worker.mime import ParsedEmail, parse_message
from worker.spam import SPAM_THRESHOLD, fold, spam_verdict


def sample(name: str) -> ParsedEmail:
    return parse_message(load_eml(name))


def customer(**changes: object) -> ParsedEmail:
    return dataclasses.replace(sample("customer_en_shopify_question.eml"), **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "customer_pt_iso8859.eml",
        "customer_en_thread_reply.eml",
        "customer_en_shopify_question.eml",
        "html_only_pt.eml",
        "no_message_id.eml",
        "angry_customer_caps_en.eml",
        "prompt_injection_en.eml",
        "malformed_headers.eml",
    ],
)
def test_real_customers_are_never_spam(name: str) -> None:
    verdict = spam_verdict(sample(name))
    assert not verdict.is_spam
    assert verdict.score < SPAM_THRESHOLD


def test_angry_customer_in_capitals_scores_but_stays_below_threshold() -> None:
    verdict = spam_verdict(sample("angry_customer_caps_en.eml"))
    assert verdict.reasons == ("all_caps_subject", "punctuation_subject")
    assert verdict.score == 2.0


def test_portuguese_prize_scam_is_caught_by_heuristics_alone() -> None:
    verdict = spam_verdict(sample("spam_pt.eml"))
    assert verdict.is_spam
    assert "phrase:voce ganhou" in verdict.reasons
    assert "phrase:resgate seu premio" in verdict.reasons
    assert "all_caps_subject" in verdict.reasons


def test_upstream_spam_filter_verdict_is_trusted() -> None:
    verdict = spam_verdict(sample("spam_en_flagged.eml"))
    assert verdict.is_spam
    assert verdict.reasons[:2] == ("x_spam_flag", "x_spam_status")


@pytest.mark.parametrize(
    "headers",
    [{"x-spam-flag": "YES"}, {"x-spam-status": "Yes, score=6.1 required=5.0"}],
)
def test_each_spam_header_alone_is_enough(headers: dict[str, str]) -> None:
    assert spam_verdict(customer(headers=headers)).is_spam


def test_negative_spam_headers_do_not_count() -> None:
    verdict = spam_verdict(
        customer(headers={"x-spam-flag": "NO", "x-spam-status": "No, score=1.2 required=5.0"})
    )
    assert verdict.score == 0.0
    assert not verdict.is_spam


def test_phrases_match_whole_words_only() -> None:
    # "you have wonderful" contains "you have won"; "seo servicescape" contains "seo services".
    text = "You have wonderful products, better than the seo servicescape of big shops."
    assert spam_verdict(customer(body_text=text)).score == 0.0


def test_english_phrases_with_curly_apostrophes() -> None:
    verdict = spam_verdict(
        customer(subject="Congrats", body_text="You\u2019ve won! Claim your prize.")
    )
    assert {"phrase:you've won", "phrase:claim your prize"} <= set(verdict.reasons)


def test_many_links() -> None:
    links = "\n".join(f"https://promo.example/item/{i}" for i in range(25))
    verdict = spam_verdict(customer(body_text=links))
    assert verdict.reasons == ("many_links",)
    assert verdict.score == 3.0
    assert not verdict.is_spam


def test_no_single_customer_trait_reaches_the_threshold() -> None:
    shouting = "WHERE IS MY REFUND!!! I HAVE WAITED TOO LONG"
    links = " ".join(f"https://lojaexemplo.com.br/products/{i}" for i in range(12))
    verdict = spam_verdict(customer(subject=shouting, body_text=f"Look at these: {links}"))
    assert verdict.score == 4.0
    assert not verdict.is_spam


def test_thread_replies_get_the_benefit_of_the_doubt() -> None:
    text = "Sorry, I thought the email said you have won a prize? Claim your prize link broken."
    fresh = spam_verdict(customer(body_text=text))
    in_thread = spam_verdict(customer(body_text=text, in_reply_to="<reply.1@lojaexemplo.com.br>"))
    assert in_thread.score == fresh.score - 2.0
    assert "in_thread" in in_thread.reasons


def test_fold() -> None:
    assert fold("  Você  GANHOU\n um Prêmio ") == "voce ganhou um premio"
