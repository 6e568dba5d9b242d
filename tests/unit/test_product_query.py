"""The catalogue search built from an email's text (worker.product_query), in pt, en and es."""

from __future__ import annotations

import re

import pytest

from worker.devstack.fake_shopify import demo_catalogue
from worker.product_query import (
    MAX_TERMS,
    asks_about_products,
    keywords,
    prefix_term,
    product_search,
    quoted_names,
    search_for,
)


@pytest.mark.parametrize(
    ("subject", "body", "wanted"),
    [
        (
            "Is the wool scarf available in navy?",
            "Hello,\n\nI love the grey wool scarf I bought from you. Do you have the same scarf "
            "in navy, and is it in stock at the moment?\n\nKind regards,\nEmma",
            ["scarf*", "wool*", "navy*"],
        ),
        (
            "Camisetas de algodão",
            "Olá! Vocês têm camisetas de algodão no tamanho G? Qual o preço?",
            ["camiseta*", "algodão*"],
        ),
        (
            "¿Tienen zapatillas de cuero?",
            "Hola, ¿tienen zapatillas de cuero en talla 44? ¿Cuánto cuesta?",
            ["zapatilla*", "cuero*"],
        ),
    ],
)
def test_the_words_that_name_a_product_become_prefix_terms(
    subject: str, body: str, wanted: list[str]
) -> None:
    search = product_search(subject, body)
    assert search is not None and search.startswith("status:active AND (")
    terms = search.removeprefix("status:active AND (").removesuffix(")").split(" OR ")
    assert terms[: len(wanted)] == wanted
    assert len(terms) <= MAX_TERMS


def test_function_words_numbers_and_support_vocabulary_are_not_searched() -> None:
    words = keywords("Pedido 1001", "Olá, bom dia! Vocês têm disponível? Obrigada, the price")
    assert words == []


def test_subject_words_rank_before_body_words() -> None:
    assert keywords("Mug", "scarf scarf")[0] == "mug"


def test_plural_s_is_dropped_for_the_prefix() -> None:
    assert prefix_term("camisetas") == "camiseta*"
    assert prefix_term("dress") == "dress*"  # a double s is not a plural
    assert prefix_term("bus") == "bus*"  # too short to tell


def test_quoted_names_become_phrases_first() -> None:
    text = 'Do you still sell the “Caneca Esmaltada” and "Wool Scarf"? And "ok"?'
    assert quoted_names(text) == ["caneca esmaltada", "wool scarf"]
    search = product_search("Question", text)
    assert search is not None
    assert search.startswith('status:active AND ("caneca esmaltada" OR "wool scarf" OR ')


def test_customer_text_cannot_add_a_filter_of_its_own() -> None:
    search = product_search(
        "price?",
        'do you have status:draft OR title:* "x\\" OR status:archived" (vendor:evil) '
        "-status:active",
    )
    assert search is not None
    inside = search.removeprefix("status:active AND (").removesuffix(")")
    # Only letters, digits, prefix stars, quoted phrases and ORs: no field, no parenthesis.
    for term in inside.split(" OR "):
        assert re.fullmatch(r'[^\W_]+\*|"[\w -]+"', term), term


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Is the scarf available?", ""),
        ("Tamanho", "Vocês têm essa camiseta no tamanho M?"),
        ("Precio", "¿Cuánto cuesta la bufanda?"),
        ("Back in stock?", "When is the mug back in stock?"),
    ],
)
def test_questions_about_the_catalogue_are_recognised(subject: str, body: str) -> None:
    assert asks_about_products(subject, body)


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Onde está meu pedido #1001?", "Comprei duas camisetas. Quando chega?"),
        ("Where is my order?", "I ordered a mug last week. Could you send the tracking number?"),
        ("Reembolso", "Quiero la devolución del pedido 1005."),
    ],
)
def test_order_questions_are_not_searched_in_the_catalogue(subject: str, body: str) -> None:
    assert search_for(subject, body) is None


def test_a_quoted_name_in_any_email_is_looked_up_by_the_name_only() -> None:
    search = search_for("Pedido", 'Meu pedido tinha a "Caneca Esmaltada", chegou quebrada.')
    assert search == 'status:active AND ("caneca esmaltada")'


def test_the_demo_catalogue_finds_the_product_the_demo_email_asks_about() -> None:
    search = product_search(
        "Is the wool scarf available in navy?", "Do you have the same scarf in navy?"
    )
    assert search is not None
    found = [p.title for p in demo_catalogue().search_products(search)]
    # The fake searches like Shopify: drafts and archived are filtered by status:active; the
    # active but unpublished sample is still returned and left to the client to drop.
    assert found[0] == "Wool Scarf"
    assert "Wool Scarf - Limited Edition" not in found and "Wool Scarf Classic" not in found


def test_the_fake_shop_searches_like_shopify_with_fields_negation_and_groups() -> None:
    catalogue = demo_catalogue()

    def titles(search: str) -> list[str]:
        return [p.title for p in catalogue.search_products(search)]

    assert titles("status:draft") == ["Wool Scarf - Limited Edition"]
    assert titles('title:"canvas tote bag"') == ["Canvas Tote Bag"]
    assert titles("tag:zapatillas") == ["Tênis Casual Couro"]  # accents folded
    assert "Wool Scarf" not in titles("scarf* -status:active")
    assert titles("status:active AND (caneca* OR NOT status:active) AND -tag:mug") == []
    # More terms matched ranks first (Shopify's RELEVANCE).
    assert titles("status:active AND (grey* OR navy* OR wool* OR camiseta*)")[:2] == [
        "Wool Scarf",
        "Wool Scarf Sample",
    ]
