"""Typed values built once from a store row: Store and the IMAP/SMTP MailAccount."""

from __future__ import annotations

from worker.models import MailAccount, Store

ROW = {
    "id": "7d1c0b5e-0000-4000-8000-000000000001",
    "name": "Loja Exemplo",
    "support_email": "suporte@loja.test",
    "extra_addresses": ["Vendas@Loja.test"],
    "imap_host": "imap.loja.test",
    "imap_port": 993,
    "imap_tls": "ssl",
    "imap_user": "suporte@loja.test",
    "imap_folder": "Suporte",
    "smtp_host": "smtp.loja.test",
    "smtp_port": "587",
    "smtp_tls": "starttls",
    "smtp_user": None,
    "shopify_domain": "loja.myshopify.com",
    "active": True,
    "reply_mode": "draft_only",
}
SECRETS = {"imap_password": "imap-pw", "smtp_password": "smtp-pw", "shopify_token": "tok"}


def test_a_store_row_becomes_a_typed_store() -> None:
    store = Store.from_row(ROW)
    assert (store.id, store.name, store.support_email) == (
        ROW["id"],
        "Loja Exemplo",
        "suporte@loja.test",
    )
    assert store.extra_addresses == ("Vendas@Loja.test",)
    assert (store.active, store.reply_mode, store.imap_folder) == (True, "draft_only", "Suporte")
    assert store.shopify_domain == "loja.myshopify.com"


def test_missing_columns_with_a_table_default_get_that_default() -> None:
    store = Store.from_row({"id": "s1"})
    assert (store.active, store.reply_mode, store.imap_folder) == (True, "auto_send", "INBOX")
    assert store.shopify_domain is None and store.extra_addresses == ()
    assert Store.from_row({"id": "s1", "active": False}).active is False


def test_mail_accounts_come_from_the_row_and_the_vault_secrets() -> None:
    store = Store.from_row(ROW)
    assert store.imap_account(SECRETS) == MailAccount(
        "imap.loja.test", 993, "ssl", "suporte@loja.test", "imap-pw"
    )
    # ports arrive as text from PostgREST; a missing user or password is empty, not "None"
    assert store.smtp_account(SECRETS) == MailAccount(
        "smtp.loja.test", 587, "starttls", "", "smtp-pw"
    )
    assert MailAccount.imap(ROW, None).password == ""


def test_a_password_never_shows_in_a_repr() -> None:
    account = Store.from_row(ROW).imap_account(SECRETS)
    assert "imap-pw" not in repr(account)
    assert "imap.loja.test" in repr(account)
