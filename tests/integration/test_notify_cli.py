"""`python -m worker stores notify`: a store's notification settings from the command line,
against the real database; the webhook URL goes into Vault and is never printed."""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

import json

import pytest

from tests.integration.test_stores_cli import (
    Cli,
    Conn,
    cli,  # noqa: F401  (a fixture)
    create,
    email,  # noqa: F401  (a fixture)
)

pytestmark = pytest.mark.integration

HOOK = "https://hooks.slack.example/services/T1/B2/notify-cli-Secret-7731"


def test_notify_shows_the_defaults(cli: Cli, email: str) -> None:
    store_id = create(cli, email)

    code, out, err = cli("notify", store_id)

    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["recipients"].startswith(email)  # nobody is a member yet: the support address
    assert fields["digest"] == "at most every 15 min, after a 60 s wait"
    assert fields["webhook"] == "not set"


def test_notify_sets_addresses_timing_and_a_webhook_kept_in_vault(
    cli: Cli, db: Conn, email: str
) -> None:
    store_id = create(cli, email)

    code, out, err = cli(
        "notify",
        store_id,
        "--addresses",
        "Ops@Loja.test, boss@loja.test",
        "--interval-minutes",
        "30",
        "--wait-seconds",
        "5",
        "--webhook",
        "--json",
        STORE_NOTIFY_WEBHOOK_URL=HOOK,
    )

    assert code == 0, err
    view = json.loads(out)
    assert view["recipients"] == ["boss@loja.test", "ops@loja.test"]
    assert (view["digest_interval_minutes"], view["digest_wait_seconds"]) == (30, 5)
    assert view["webhook"] is True and view["webhook_hint"] == "hooks.slack.example …7731"
    assert HOOK not in out + err
    row = db.execute(
        "select ds.decrypted_secret from public.notification_settings ns"
        " join vault.decrypted_secrets ds on ds.id = ns.webhook_secret_id where ns.store_id = %s",
        (store_id,),
    ).fetchone()
    assert row is not None and row["decrypted_secret"] == HOOK
    settings_row = db.execute(
        "select * from public.notification_settings where store_id = %s", (store_id,)
    ).fetchone()
    assert HOOK not in json.dumps(settings_row, default=str)

    code, out, err = cli("notify", store_id, "--no-webhook", "--default-addresses")
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["webhook"] == "not set" and fields["recipients"].startswith(email)


def test_notify_refuses_bad_values_and_a_url_on_the_command_line(cli: Cli, email: str) -> None:
    store_id = create(cli, email)

    code, _, err = cli("notify", store_id, "--interval-minutes", "0", "--addresses", "nobody")
    assert code == 2
    assert "digest_interval_minutes must be 1 to 1440" in err
    assert "not an email address: nobody" in err

    code, _, err = cli("notify", store_id, "--webhook", STORE_NOTIFY_WEBHOOK_URL="http://x.test/h")
    assert code == 2 and "webhook_url must use https" in err

    code, _, err = cli("notify", store_id, "--webhook-url", HOOK)
    assert code == 2 and HOOK not in err

    code, _, err = cli("notify", store_id, "--webhook")  # no variable, no terminal
    assert code == 2 and "STORE_NOTIFY_WEBHOOK_URL" in err
