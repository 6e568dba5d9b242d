"""Inbound validation: a parseable sender, not the store itself, within limits, not empty."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.data import load_eml, sample_names
from worker import compose, smtp
from worker.mime import Attachment, ParsedEmail, parse_message
from worker.validate import is_valid_address, validate_inbound

STORE = {"support@lojaexemplo.com.br", "vendas@lojaexemplo.com.br"}
MAX_BYTES = 26_214_400


def validate(email: ParsedEmail) -> str | None:
    return validate_inbound(email, store_addresses=STORE, max_bytes=MAX_BYTES)


def customer(**changes: object) -> ParsedEmail:
    email = parse_message(load_eml("customer_pt_iso8859.eml"))
    return dataclasses.replace(email, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_has_a_valid_sender(name: str) -> None:
    assert validate(parse_message(load_eml(name))) is None


@pytest.mark.parametrize(
    "address",
    [
        "joao.silva@uol.com.br",
        "ana+pedidos@gmail.com",
        "o'brien@example.ie",
        "user@xn--exmplo-bva.com.br",
        "a@b.co",
    ],
)
def test_valid_addresses(address: str) -> None:
    assert is_valid_address(address)


@pytest.mark.parametrize(
    "address",
    [
        None,
        "",
        "no-at-sign",
        "two@@example.com",
        "user@localhost",
        "user@123.45.67.89",
        "user@-example.com",
        "user@example..com",
        ".user@example.com",
        "user.@example.com",
        "user name@example.com",
        '"quoted"@example.com',
        "user@[127.0.0.1]",
        "user@example.com>",
        "a" * 65 + "@example.com",
        "user@" + "a" * 250 + ".com",
        "user@example.com\nBcc: victim@example.com",
        # Replies are sent without SMTPUTF8: a non-ASCII address cannot be written in To.
        "josé@exemplo.com.br",
        "user@exêmplo.com",
        # RFC 2047 encoded words: the reply's To header cannot be built (issue 13 item 5).
        "=?utf-8?q?a?=@example.com",
        "x.=?UTF-8?B?YQ==?=@example.com",
    ],
)
def test_invalid_addresses(address: str | None) -> None:
    assert not is_valid_address(address)


def test_invalid_sender() -> None:
    assert validate(customer(from_address=None)) == "invalid_sender"
    assert validate(customer(from_address="undisclosed-recipients")) == "invalid_sender"


def test_own_address_in_any_case() -> None:
    assert validate(customer(from_address="vendas@lojaexemplo.com.br")) == "own_address"
    assert (
        validate_inbound(
            customer(from_address="support@lojaexemplo.com.br"),
            store_addresses=["Support@LojaExemplo.com.br"],
            max_bytes=MAX_BYTES,
        )
        == "own_address"
    )


def test_too_large() -> None:
    assert validate(customer(size_bytes=MAX_BYTES)) is None
    assert validate(customer(size_bytes=MAX_BYTES + 1)) == "too_large"
    assert validate(customer(skip_reason="oversized", size_bytes=10)) == "too_large"


def test_empty() -> None:
    assert validate(customer(subject="  ", body_text="\n\n")) == "empty"
    # A photo with no words is still a customer reaching out.
    photo = Attachment("IMG_0001.jpg", "image/jpeg", 2048)
    assert validate(customer(subject="", body_text="", attachments=(photo,))) is None
    assert validate(customer(subject="Pedido 1234", body_text="")) is None


def test_every_valid_address_can_be_written_into_a_reply() -> None:
    # What validation accepts, the reply builder must accept: otherwise the sender is charged a
    # credit after validation and the reply fails after begin_send (issue 13 item 5).
    for address in (
        "joao.silva@uol.com.br",
        "ana+pedidos@gmail.com",
        "o'brien@example.ie",
        "user@xn--exmplo-bva.com.br",
        "a=?x@example.com",
        "a?=b@example.com",
    ):
        assert is_valid_address(address)
        message = compose.build_reply(
            from_address="support@shop.test",
            from_name="Shop",
            to_address=address,
            original_subject="x",
            in_reply_to=None,
            references=[],
            body_text="hi",
            message_id="<r@shop.test>",
        )
        assert f"To: {address}".encode() in smtp.message_bytes(message)
