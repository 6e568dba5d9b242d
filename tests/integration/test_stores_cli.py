"""`python -m worker stores ...` against the real database, Dovecot, the SMTP sink and the fake
Shopify: every subcommand, validation before anything is saved, secrets only in Vault and never
printed, and the exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow

from tests.support.mail_servers import MailUser
from worker import stores
from worker.devstack.dovecot import DovecotServer
from worker.devstack.fake_shopify import TEST_ACCESS_TOKEN, FakeShopify
from worker.devstack.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[DictRow]
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
# Throwaway test values; each test checks they never reach output or the stores table.
IMAP_PASSWORD = "imap-Pa55-" + uuid.uuid4().hex[:8]
SMTP_PASSWORD = "smtp-Pa55-" + uuid.uuid4().hex[:8]
SHOPIFY_TOKEN = "shpat_" + uuid.uuid4().hex
SECRET_VALUES = (IMAP_PASSWORD, SMTP_PASSWORD, SHOPIFY_TOKEN)


class Cli:
    """Runs the store CLI in-process with a given environment; captures its output."""

    def __init__(self, capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> None:
        self.capsys = capsys
        self.env = env
        self.outputs: list[str] = []

    def __call__(
        self, *argv: str, prompt: Callable[[str], str] | None = None, **extra_env: str
    ) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = stores.main(list(argv), environ={**self.env, **extra_env}, prompt=prompt)
        out, err = self.capsys.readouterr()
        self.outputs += [out, err]
        return code, out, err

    def assert_no_secret_printed(self) -> None:
        for text in self.outputs:
            for secret in SECRET_VALUES:
                assert secret not in text


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], database_url: str) -> Any:
    """The CLI with secrets in the default environment variables."""
    runner = Cli(
        capsys,
        {
            "DATABASE_URL": database_url,
            "STORE_IMAP_PASSWORD": IMAP_PASSWORD,
            "STORE_SMTP_PASSWORD": SMTP_PASSWORD,
            "STORE_SHOPIFY_TOKEN": SHOPIFY_TOKEN,
        },
    )
    yield runner
    runner.assert_no_secret_printed()


@pytest.fixture
def bare_cli(capsys: pytest.CaptureFixture[str], database_url: str) -> Any:
    """The CLI with no secrets in its environment."""
    runner = Cli(capsys, {"DATABASE_URL": database_url})
    yield runner
    runner.assert_no_secret_printed()


@pytest.fixture
def email() -> str:
    """A support address no other test uses."""
    return f"support-{uuid.uuid4().hex[:10]}@loja.test"


def add_args(email: str, *extra: str) -> list[str]:
    return [
        "add",
        "--name",
        "Loja Exemplo",
        "--support-email",
        email,
        "--imap-host",
        "imap.loja.test",
        "--smtp-host",
        "smtp.loja.test",
        *extra,
    ]


def store_row(db: Conn, store_id: str) -> dict[str, Any]:
    row = db.execute("select * from public.stores where id = %s", (store_id,)).fetchone()
    assert row is not None
    return dict(row)


def stores_with_email(db: Conn, email: str) -> int:
    row = db.execute(
        "select count(*) as n from public.stores where support_email = lower(%s)", (email,)
    ).fetchone()
    assert row is not None
    return int(row["n"])


def vault_value(db: Conn, secret_id: Any) -> str | None:
    row = db.execute(
        "select decrypted_secret from vault.decrypted_secrets where id = %s", (secret_id,)
    ).fetchone()
    return None if row is None else row["decrypted_secret"]


def assert_row_has_no_secret(row: dict[str, Any]) -> None:
    text = json.dumps(row, default=str)
    for secret in SECRET_VALUES:
        assert secret not in text


def create(cli: Cli, email: str, *extra: str) -> str:
    code, out, err = cli(*add_args(email, *extra))
    assert code == 0, err
    return out.strip()


# -- add ----------------------------------------------------------------------------------------


def test_add_stores_settings_with_defaults_and_only_secret_ids(
    cli: Cli, db: Conn, email: str
) -> None:
    code, out, err = cli(
        *add_args(
            email.upper(),
            "--extra-address",
            "Vendas@Loja.test",
            "--shopify-domain",
            "Loja-Exemplo.myshopify.com",
            "--reply-language",
            "pt-BR",
            "--reply-signature",
            "Equipe Loja",
            "--reply-mode",
            "draft_only",
            "--credits",
            "25",
        )
    )

    assert code == 0, err
    store_id = out.strip()
    assert str(uuid.UUID(store_id)) == store_id
    assert "secrets stored in Vault" in err
    row = store_row(db, store_id)
    assert row["name"] == "Loja Exemplo"
    assert row["support_email"] == email
    assert row["extra_addresses"] == ["vendas@loja.test"]
    assert (row["imap_host"], row["imap_port"], row["imap_tls"]) == ("imap.loja.test", 993, "ssl")
    assert (row["imap_user"], row["imap_folder"]) == (email, "INBOX")
    assert (row["smtp_host"], row["smtp_port"], row["smtp_tls"]) == (
        "smtp.loja.test",
        587,
        "starttls",
    )
    assert row["smtp_user"] == email
    assert row["shopify_domain"] == "loja-exemplo.myshopify.com"
    assert (row["reply_language"], row["reply_signature"], row["reply_mode"]) == (
        "pt-BR",
        "Equipe Loja",
        "draft_only",
    )
    assert (row["credits"], row["active"], row["reply_tone"]) == (25, True, "friendly")
    assert_row_has_no_secret(row)
    assert vault_value(db, row["imap_password_secret_id"]) == IMAP_PASSWORD
    assert vault_value(db, row["smtp_password_secret_id"]) == SMTP_PASSWORD
    assert vault_value(db, row["shopify_token_secret_id"]) == SHOPIFY_TOKEN
    ledger = db.execute(
        "select delta, reason from public.credit_ledger where store_id = %s", (store_id,)
    ).fetchall()
    assert [(r["delta"], r["reason"]) for r in ledger] == [(25, "topup")]


def test_add_reads_secrets_from_named_variables(bare_cli: Cli, db: Conn, email: str) -> None:
    code, out, err = bare_cli(
        *add_args(email, "--imap-password-env", "MY_IMAP", "--smtp-password-env", "MY_IMAP"),
        MY_IMAP=IMAP_PASSWORD,
    )

    assert code == 0, err
    row = store_row(db, out.strip())
    assert row["shopify_token_secret_id"] is None
    assert vault_value(db, row["imap_password_secret_id"]) == IMAP_PASSWORD
    assert vault_value(db, row["smtp_password_secret_id"]) == IMAP_PASSWORD


def test_add_prompts_for_missing_secrets_when_interactive(
    bare_cli: Cli, db: Conn, email: str
) -> None:
    asked: list[str] = []
    answers = {"IMAP password: ": IMAP_PASSWORD, "SMTP password: ": SMTP_PASSWORD}

    def prompt(text: str) -> str:
        asked.append(text)
        return answers[text]

    code, out, err = bare_cli(*add_args(email), prompt=prompt)

    assert code == 0, err
    assert asked == ["IMAP password: ", "SMTP password: "]
    row = store_row(db, out.strip())
    assert vault_value(db, row["smtp_password_secret_id"]) == SMTP_PASSWORD


def test_add_without_a_secret_source_exits_2_and_saves_nothing(
    bare_cli: Cli, db: Conn, email: str
) -> None:
    code, out, err = bare_cli(*add_args(email))
    assert (code, out) == (2, "")
    assert "IMAP password needed: set STORE_IMAP_PASSWORD" in err

    code, _, err = bare_cli(*add_args(email, "--imap-password-env", "NOT_SET_ANYWHERE"))
    assert code == 2
    assert "environment variable NOT_SET_ANYWHERE is not set" in err

    code, _, err = bare_cli(
        *add_args(email, "--shopify-domain", "loja.myshopify.com"),
        STORE_IMAP_PASSWORD=IMAP_PASSWORD,
        STORE_SMTP_PASSWORD=SMTP_PASSWORD,
    )
    assert code == 2
    assert "Shopify Admin API token needed" in err
    assert stores_with_email(db, email) == 0


@pytest.mark.parametrize("flag", ["--imap-password", "--smtp-password", "--shopify-token"])
def test_a_secret_on_the_command_line_is_refused_without_echoing_it(
    cli: Cli, db: Conn, email: str, flag: str
) -> None:
    code, out, err = cli(*add_args(email, flag, "typed-in-the-shell"))

    assert (code, out) == (2, "")
    assert f"{flag} takes no value on the command line" in err
    assert "typed-in-the-shell" not in err
    assert stores_with_email(db, email) == 0


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (["--support-email", "not-an-email"], "support_email must be an email address"),
        (["--extra-address", "vendas"], "extra_addresses: vendas is not an email address"),
        (["--imap-port", "70000"], "imap_port must be between 1 and 65535"),
        (["--smtp-port", "0"], "smtp_port must be between 1 and 65535"),
        (["--imap-tls", "tls"], "imap_tls must be ssl, starttls or plain"),
        (["--smtp-tls", "plain"], "smtp_tls 'plain' (no TLS) is only allowed for loopback"),
        (["--shopify-domain", "https://loja.myshopify.com/"], "shopify_domain must be a host"),
        (["--reply-mode", "yolo"], "reply_mode must be auto_send or draft_only"),
        (["--reply-language", "Portuguese"], "reply_language must be auto or a language tag"),
        (["--credits", "-1"], "credits must be zero or more"),
        (["--owner-id", "bob"], 'owner_id: invalid input syntax for type uuid: "bob"'),
        (["--name", " "], "name is required"),
    ],
)
def test_bad_settings_exit_2_before_anything_is_saved_or_asked(
    cli: Cli, db: Conn, email: str, extra: list[str], problem: str
) -> None:
    def prompt(text: str) -> str:
        raise AssertionError("no secret may be asked for invalid settings")

    args = add_args(email, *extra)
    code, out, err = cli(*args, prompt=prompt)

    assert (code, out) == (2, "")
    assert "invalid store settings" in err
    assert problem in err
    assert stores_with_email(db, email) == 0


def test_all_problems_are_reported_at_once(cli: Cli, email: str) -> None:
    code, _, err = cli(
        *add_args(email, "--imap-port", "0", "--imap-tls", "plain", "--smtp-tls", "nope")
    )

    assert code == 2
    assert "imap_port must be between" in err
    assert "imap_tls 'plain' (no TLS) is only allowed for loopback hosts" in err
    assert "smtp_tls must be ssl, starttls or plain" in err


def test_plain_tls_is_accepted_for_loopback_hosts(cli: Cli, db: Conn, email: str) -> None:
    store_id = create(
        cli, email, "--imap-host", "127.0.0.1", "--imap-tls", "plain", "--smtp-host", "localhost"
    )
    row = store_row(db, store_id)
    assert (row["imap_tls"], row["imap_port"]) == ("plain", 143)


def test_the_database_validation_backs_up_the_cli(
    cli: Cli, db: Conn, email: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the pre-check (validate_store_settings) skipped, admin_create_store still refuses,
    # and the CLI reports its reasons as invalid settings.
    monkeypatch.setattr(stores, "settings_problems", lambda db, settings, store_id=None: [])

    code, out, err = cli(*add_args(email, "--support-email", "nope", "--imap-port", "0"))

    assert (code, out) == (2, "")
    assert "invalid store settings" in err
    assert "support_email must be an email address" in err
    assert "imap_port must be between 1 and 65535" in err
    assert stores_with_email(db, "nope") == 0


# -- list / show ----------------------------------------------------------------------------------


def test_list_shows_active_stores_without_secrets(cli: Cli, email: str) -> None:
    store_id = create(cli, email, "--credits", "7", "--shopify-domain", "loja.myshopify.com")

    code, out, err = cli("list")

    assert code == 0, err
    assert out.splitlines()[0].split() == [
        "ID",
        "NAME",
        "SUPPORT",
        "EMAIL",
        "CREDITS",
        "MODE",
        "SHOPIFY",
    ]
    [line] = [line for line in out.splitlines() if line.startswith(store_id)]
    assert line.split()[-5:] == ["Exemplo", email, "7", "auto_send", "loja.myshopify.com"]
    assert "secret" not in out

    code, out, _ = cli("list", "--json")
    [listed] = [s for s in json.loads(out) if s["id"] == store_id]
    assert listed["secrets"] == {
        "imap_password": True,
        "smtp_password": True,
        "shopify_token": True,
    }
    assert not any(key.endswith("_secret_id") for key in listed)


def test_list_all_includes_inactive_stores(cli: Cli, email: str) -> None:
    store_id = create(cli, email)
    assert cli("deactivate", store_id)[0] == 0

    _, active, _ = cli("list")
    _, everything, _ = cli("list", "--all")

    assert store_id not in active
    assert store_id in everything


def test_show_prints_settings_and_which_secrets_are_set(cli: Cli, email: str) -> None:
    store_id = create(cli, email)

    code, out, err = cli("show", store_id)

    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert (fields["id"], fields["support_email"]) == (store_id, email)
    assert (fields["imap_port"], fields["extra_addresses"]) == ("993", "-")
    assert fields["imap_password"] == "set (in Vault)"
    assert fields["shopify_token"] == "not set"
    assert "secret_id" not in out

    code, out, _ = cli("show", store_id, "--json")
    data = json.loads(out)
    assert (data["id"], data["imap_port"]) == (store_id, 993)
    assert data["secrets"]["shopify_token"] is False


def test_unknown_store_exits_1_and_bad_id_exits_2(cli: Cli) -> None:
    for argv in (
        ["show", UNKNOWN_ID],
        ["update", UNKNOWN_ID, "--name", "x"],
        ["credits", UNKNOWN_ID, "+5"],
        ["deactivate", UNKNOWN_ID],
        ["check", UNKNOWN_ID],
    ):
        code, out, err = cli(*argv)
        assert (code, out) == (1, ""), argv
        assert UNKNOWN_ID in err, err
        assert "not found" in err or "no such store" in err, err

    code, _, err = cli("show", "shop-1")
    assert code == 2
    assert "bad store id 'shop-1': not a UUID" in err


# -- update / credits / activate ------------------------------------------------------------------


def test_update_changes_settings_and_rotates_secrets_in_place(
    cli: Cli, db: Conn, email: str
) -> None:
    store_id = create(cli, email)
    before = store_row(db, store_id)
    new_password = "rotated-" + uuid.uuid4().hex

    code, out, err = cli(
        "update",
        store_id,
        "--name",
        "Loja Nova",
        "--smtp-port",
        "465",
        "--smtp-tls",
        "ssl",
        "--imap-password-env",
        "NEW_IMAP",
        NEW_IMAP=new_password,
    )

    assert code == 0, err
    assert "imap_password (rotated)" in err
    assert new_password not in out + err
    after = store_row(db, store_id)
    assert (after["name"], after["smtp_port"], after["smtp_tls"]) == ("Loja Nova", 465, "ssl")
    assert after["imap_password_secret_id"] == before["imap_password_secret_id"]
    assert vault_value(db, after["imap_password_secret_id"]) == new_password
    assert vault_value(db, after["smtp_password_secret_id"]) == SMTP_PASSWORD
    assert new_password not in json.dumps(after, default=str)


def test_the_mailbox_settings_default_on_and_are_changed_and_checked_like_the_others(
    cli: Cli, db: Conn, email: str
) -> None:
    store_id = create(cli, email)
    row = store_row(db, store_id)
    assert (row["mailbox_sent"], row["mailbox_drafts"], row["mailbox_mark_answered"]) == (
        "auto",
        True,
        True,
    )
    assert (row["mailbox_sent_folder"], row["mailbox_drafts_folder"]) == (None, None)

    code, _, err = cli(
        "update",
        store_id,
        "--mailbox-sent",
        "always",
        "--no-mailbox-drafts",
        "--no-mailbox-mark-answered",
        "--mailbox-sent-folder",
        "Itens Enviados",
    )
    assert code == 0, err
    row = store_row(db, store_id)
    assert (row["mailbox_sent"], row["mailbox_drafts"], row["mailbox_mark_answered"]) == (
        "always",
        False,
        False,
    )
    assert row["mailbox_sent_folder"] == "Itens Enviados"
    code, out, _ = cli("show", store_id)
    assert code == 0 and "mailbox_sent_folder" in out and "Itens Enviados" in out

    # '' names no folder: back to the special-use flag.
    code, _, err = cli("update", store_id, "--mailbox-sent-folder", "", "--mailbox-drafts")
    assert code == 0, err
    row = store_row(db, store_id)
    assert (row["mailbox_sent_folder"], row["mailbox_drafts"]) == (None, True)

    code, _, err = cli("update", store_id, "--mailbox-sent", "sometimes")
    assert code == 2
    assert "mailbox_sent must be auto, always or never" in err
    assert store_row(db, store_id)["mailbox_sent"] == "always"


def test_update_adding_shopify_asks_for_its_token(cli: Cli, db: Conn, email: str) -> None:
    store_id = create(cli, email)

    code, _, err = cli("update", store_id, "--shopify-domain", "loja.myshopify.com")

    assert code == 0, err
    row = store_row(db, store_id)
    assert vault_value(db, row["shopify_token_secret_id"]) == SHOPIFY_TOKEN


def test_invalid_or_empty_update_exits_2_and_changes_nothing(
    cli: Cli, db: Conn, email: str
) -> None:
    store_id = create(cli, email)
    before = store_row(db, store_id)

    code, _, err = cli("update", store_id, "--imap-host", "imap.far.away", "--imap-tls", "plain")
    assert code == 2
    assert "imap_tls 'plain' (no TLS) is only allowed for loopback hosts" in err

    code, _, err = cli("update", store_id)
    assert code == 2
    assert "nothing to update" in err
    assert store_row(db, store_id) == before


def test_update_reports_every_problem_at_once_before_asking_for_secrets(
    cli: Cli, db: Conn, email: str
) -> None:
    store_id = create(cli, email)
    before = store_row(db, store_id)

    def prompt(text: str) -> str:
        raise AssertionError("no secret may be asked for invalid settings")

    code, out, err = cli(
        "update", store_id, "--imap-port", "0", "--smtp-tls", "nope", "--reply-mode", "yolo",
        "--rotate-imap-password", prompt=prompt,
    )

    assert (code, out) == (2, "")
    assert "invalid store settings" in err
    assert "imap_port must be between 1 and 65535" in err
    assert "smtp_tls must be ssl, starttls or plain" in err
    assert "reply_mode must be auto_send or draft_only" in err
    assert store_row(db, store_id) == before


def test_credits_top_up_and_correct_through_the_ledger(cli: Cli, db: Conn, email: str) -> None:
    store_id = create(cli, email, "--credits", "10")

    code, out, err = cli("credits", store_id, "+50")
    assert (code, out.strip()) == (0, "60"), err
    code, out, _ = cli("credits", store_id, "5", "--reason", "grant")
    assert (code, out.strip()) == (0, "65")
    code, out, _ = cli("credits", store_id, "--", "-15")
    assert (code, out.strip()) == (0, "50")

    code, _, err = cli("credits", store_id, "--", "-51")
    assert code == 1
    assert "has 50 credits; cannot remove 51" in err
    code, _, err = cli("credits", store_id, "0")
    assert code == 2
    code, _, err = cli("credits", store_id, "ten")
    assert code == 2

    ledger = db.execute(
        "select delta, reason from public.credit_ledger where store_id = %s order by id",
        (store_id,),
    ).fetchall()
    assert [(r["delta"], r["reason"]) for r in ledger] == [
        (10, "topup"),
        (50, "topup"),
        (5, "grant"),
        (-15, "adjustment"),
    ]
    assert store_row(db, store_id)["credits"] == 50


def test_deactivate_and_activate(cli: Cli, db: Conn, email: str) -> None:
    store_id = create(cli, email)

    assert cli("deactivate", store_id)[0] == 0
    assert store_row(db, store_id)["active"] is False
    assert store_id not in cli("list")[1]

    assert cli("activate", store_id)[0] == 0
    assert store_row(db, store_id)["active"] is True
    assert store_id in cli("list")[1]


# -- check --------------------------------------------------------------------------------------


@pytest.fixture
def mail_cli(
    capsys: pytest.CaptureFixture[str],
    database_url: str,
    dovecot: DovecotServer,
    mail_user: MailUser,
    smtp_sink: SmtpSink,
    fake_shopify: FakeShopify,
) -> Any:
    """The CLI set up to reach the test Dovecot, SMTP sink and fake Shopify."""
    runner = Cli(
        capsys,
        {
            "DATABASE_URL": database_url,
            "STORE_IMAP_PASSWORD": mail_user.password,
            "STORE_SMTP_PASSWORD": smtp_sink.password or "",
            "STORE_SHOPIFY_TOKEN": TEST_ACCESS_TOKEN,
            "EXTRA_CA_FILE": str(dovecot.ca.ca_file),
            "SHOPIFY_BASE_URL": fake_shopify.base_url,
            "IMAP_TIMEOUT_SECONDS": "20",
            "SMTP_TIMEOUT_SECONDS": "20",
        },
    )
    yield runner
    for text in runner.outputs:
        assert mail_user.password not in text
        assert str(smtp_sink.password) not in text
        assert TEST_ACCESS_TOKEN not in text


def mail_store(
    cli: Cli, dovecot: DovecotServer, user: MailUser, sink: SmtpSink, *extra: str
) -> str:
    return create(
        cli,
        user.name,
        "--imap-host",
        dovecot.host,
        "--imap-port",
        str(dovecot.imaps_port),
        "--imap-tls",
        "ssl",
        "--imap-user",
        user.name,
        "--smtp-host",
        sink.host,
        "--smtp-port",
        str(sink.port),
        "--smtp-tls",
        sink.tls_mode,
        "--smtp-user",
        str(sink.username),
        *extra,
    )


def check_lines(out: str) -> dict[str, tuple[str, str]]:
    result = {}
    for line in out.splitlines():
        service, status, detail = line.split(None, 2)
        result[service] = (status, detail)
    return result


def test_check_reports_each_service_ok(
    mail_cli: Cli,
    dovecot: DovecotServer,
    mail_user: MailUser,
    smtp_sink: SmtpSink,
    fake_shopify: FakeShopify,
) -> None:
    store_id = mail_store(
        mail_cli, dovecot, mail_user, smtp_sink, "--shopify-domain", "loja-demo.myshopify.com"
    )

    code, out, err = mail_cli("check", store_id)

    assert code == 0, out + err
    lines = check_lines(out)
    assert lines["imap"] == ("ok", f"logged in as {mail_user.name}; INBOX has 0 message(s)")
    assert lines["smtp"] == ("ok", f"logged in as {smtp_sink.username}")
    assert lines["shopify"][0] == "ok"
    assert "loja-demo.myshopify.com" in lines["shopify"][1]
    assert lines["shopify"][1].endswith("; scopes read_customers, read_orders, read_products")
    # Nothing was sent, and Shopify was asked exactly once with the stored token.
    assert smtp_sink.messages == []
    [query] = fake_shopify.queries
    assert "/loja-demo.myshopify.com/admin/api/" in query.path


def test_check_reports_failures_with_their_reasons(
    mail_cli: Cli,
    db: Conn,
    dovecot: DovecotServer,
    mail_user: MailUser,
    smtp_sink: SmtpSink,
) -> None:
    store_id = mail_store(
        mail_cli,
        dovecot,
        mail_user,
        smtp_sink,
        "--imap-folder",
        "Missing",
        "--shopify-domain",
        "loja-demo.myshopify.com",
    )
    code, _, err = mail_cli(
        "update",
        store_id,
        "--rotate-smtp-password",
        "--rotate-shopify-token",
        STORE_SMTP_PASSWORD="wrong-smtp-password",
        STORE_SHOPIFY_TOKEN="shpat_wrong",
    )
    assert code == 0, err

    code, out, _ = mail_cli("check", store_id)

    assert code == 1
    lines = check_lines(out)
    assert lines["imap"][0] == "failed"
    assert lines["imap"][1].startswith("cannot open folder 'Missing': ")
    assert lines["smtp"][0] == "failed"
    assert "login" in lines["smtp"][1] and "535" in lines["smtp"][1]
    assert lines["shopify"][0] == "failed"
    assert "HTTP 401" in lines["shopify"][1]
    for text in mail_cli.outputs:
        assert "wrong-smtp-password" not in text and "shpat_wrong" not in text


def test_check_fails_a_token_without_the_scopes_the_worker_reads_with(
    mail_cli: Cli,
    dovecot: DovecotServer,
    mail_user: MailUser,
    smtp_sink: SmtpSink,
    fake_shopify: FakeShopify,
) -> None:
    store_id = mail_store(
        mail_cli, dovecot, mail_user, smtp_sink, "--shopify-domain", "loja-demo.myshopify.com"
    )
    # A token made before product answers existed.
    fake_shopify.scopes = {"read_customers", "read_orders"}

    code, out, _ = mail_cli("check", store_id)

    assert code == 1
    status, detail = check_lines(out)["shopify"]
    assert status == "failed"
    assert "token accepted by loja-demo.myshopify.com" in detail
    assert detail.endswith("lacks the scopes read_products")


def test_check_with_a_wrong_imap_password_and_no_shopify(
    mail_cli: Cli, dovecot: DovecotServer, mail_user: MailUser, smtp_sink: SmtpSink
) -> None:
    store_id = mail_store(mail_cli, dovecot, mail_user, smtp_sink)
    code, _, err = mail_cli(
        "update", store_id, "--rotate-imap-password", STORE_IMAP_PASSWORD="wrong-imap-password"
    )
    assert code == 0, err

    code, out, _ = mail_cli("check", store_id)

    assert code == 1
    lines = check_lines(out)
    assert lines["imap"][0] == "failed"
    assert "login" in lines["imap"][1]
    assert lines["smtp"][0] == "ok"
    assert lines["shopify"] == ("skipped", "no Shopify domain configured")


# -- the real entry point -------------------------------------------------------------------------


def test_python_m_worker_stores_delegates_here(database_url: str, email: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "STORE_IMAP_PASSWORD": IMAP_PASSWORD,
        "STORE_SMTP_PASSWORD": SMTP_PASSWORD,
    }
    added = subprocess.run(
        [sys.executable, "-m", "worker", "stores", *add_args(email)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    bad = subprocess.run(
        [sys.executable, "-m", "worker", "stores", "show", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    helped = subprocess.run(
        [sys.executable, "-m", "worker", "stores", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert helped.returncode == 0, helped.stderr
    assert "usage: python -m worker stores" in helped.stdout
    assert added.returncode == 0, added.stderr
    assert str(uuid.UUID(added.stdout.strip())) == added.stdout.strip()
    assert bad.returncode == 2
    for text in (added.stdout, added.stderr, bad.stdout, bad.stderr):
        assert IMAP_PASSWORD not in text and SMTP_PASSWORD not in text


def test_the_low_credit_threshold_is_a_store_setting(cli: Cli, db: Conn, email: str) -> None:
    store_id = create(cli, email)
    assert store_row(db, store_id)["low_credits_at"] == 10  # the default
    code, _, err = cli("update", store_id, "--low-credits-at", "25")
    assert code == 0, err
    assert store_row(db, store_id)["low_credits_at"] == 25
    code, _, err = cli("update", store_id, "--low-credits-at", "-1")
    assert code == 2
    assert "low_credits_at must be zero or more" in err
    assert store_row(db, store_id)["low_credits_at"] == 25
