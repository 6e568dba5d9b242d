"""Settings from the environment: defaults, types, and one error naming every problem."""

from __future__ import annotations

import dataclasses

import pytest

from worker.config import Settings, load_settings, redact_url
from worker.errors import ConfigError

SECRET = "test-worker-secret-0123456789"
DB_URL = "postgresql://postgres:db-password-xyz@127.0.0.1:54330/postgres"


def problems_of(env: dict[str, str], **kwargs: bool) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load_settings(env, **kwargs)
    return info.value.problems


def test_defaults_match_the_design() -> None:
    settings = load_settings({"DATABASE_URL": DB_URL, "WORKER_SECRET": SECRET})
    assert settings.database_backend == "postgres"
    assert settings.responder == "offline"
    assert settings.claude_model == "claude-haiku-4-5"
    assert settings.claude_timeout_seconds == 30.0
    assert settings.shopify_api_version == "2026-10"
    assert settings.shopify_base_url is None
    assert (settings.fetch_concurrency, settings.fetch_max_per_store) == (10, 200)
    assert settings.store_timeout_seconds == 60.0
    assert settings.imap_timeout_seconds == settings.smtp_timeout_seconds == 30.0
    assert settings.max_message_bytes == 26_214_400
    assert settings.run_budget_seconds == 110.0
    assert settings.process_concurrency == 16
    assert settings.lease_seconds == 30
    assert (settings.reply_cap_per_customer, settings.reply_cap_window_hours) == (3, 24)
    assert settings.db_timeout_seconds == 10.0
    assert (settings.log_level, settings.port) == ("INFO", 8080)
    assert settings.extra_ca_file is None


def test_every_variable_is_read_and_typed() -> None:
    env = {
        "SUPABASE_URL": "https://abcd.supabase.co/",
        "SUPABASE_SERVICE_ROLE_KEY": "service-role-jwt",
        "WORKER_SECRET": SECRET,
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:9100",
        "CLAUDE_MODEL": "claude-sonnet-4-5",
        "CLAUDE_TIMEOUT_SECONDS": "12.5",
        "SHOPIFY_API_VERSION": "2026-01",
        "SHOPIFY_BASE_URL": "http://127.0.0.1:9000/",
        "FETCH_CONCURRENCY": "4",
        "FETCH_MAX_PER_STORE": "25",
        "STORE_TIMEOUT_SECONDS": "45",
        "IMAP_TIMEOUT_SECONDS": "5",
        "SMTP_TIMEOUT_SECONDS": "6",
        "MAX_MESSAGE_BYTES": "1048576",
        "RUN_BUDGET_SECONDS": "50",
        "PROCESS_CONCURRENCY": "32",
        "LEASE_SECONDS": "120",
        "REPLY_CAP_PER_CUSTOMER": "5",
        "REPLY_CAP_WINDOW_HOURS": "12",
        "EXTRA_CA_FILE": "/tmp/ca.pem",
        "DB_TIMEOUT_SECONDS": "3",
        "LOG_LEVEL": "debug",
        "PORT": "9090",
    }
    settings = load_settings(env)
    assert settings.database_backend == "supabase"
    assert settings.supabase_url == "https://abcd.supabase.co"
    assert settings.responder == "claude"
    assert settings.anthropic_base_url == "http://127.0.0.1:9100"
    assert settings.claude_model == "claude-sonnet-4-5"
    assert settings.claude_timeout_seconds == 12.5
    assert settings.shopify_api_version == "2026-01"
    assert settings.shopify_base_url == "http://127.0.0.1:9000"
    assert (settings.fetch_concurrency, settings.fetch_max_per_store) == (4, 25)
    assert settings.store_timeout_seconds == 45.0
    assert (settings.imap_timeout_seconds, settings.smtp_timeout_seconds) == (5.0, 6.0)
    assert settings.max_message_bytes == 1_048_576
    assert settings.run_budget_seconds == 50.0
    assert (settings.process_concurrency, settings.lease_seconds) == (32, 120)
    assert (settings.reply_cap_per_customer, settings.reply_cap_window_hours) == (5, 12)
    assert settings.extra_ca_file == "/tmp/ca.pem"
    assert settings.db_timeout_seconds == 3.0
    assert (settings.log_level, settings.port) == ("DEBUG", 9090)


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of(
        {
            "PROCESS_CONCURRENCY": "abc",
            "LEASE_SECONDS": "-3",
            "CLAUDE_TIMEOUT_SECONDS": "nan",
            "PORT": "70000",
            "LOG_LEVEL": "chatty",
            "SHOPIFY_API_VERSION": "latest",
            "SHOPIFY_BASE_URL": "127.0.0.1:9000",
        }
    )
    assert problems == (
        "no database configured: set DATABASE_URL, or SUPABASE_URL and SUPABASE_SECRET_KEY "
        "(or the legacy SUPABASE_SERVICE_ROLE_KEY)",
        "WORKER_SECRET is missing",
        "LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'chatty'",
        "SHOPIFY_API_VERSION must be a Shopify API version (YYYY-01, -04, -07 or -10) such as "
        "2026-10, got 'latest'",
        "CLAUDE_TIMEOUT_SECONDS must be a positive number of seconds, got 'nan'",
        "SHOPIFY_BASE_URL must be an http(s) URL such as https://host, got '127.0.0.1:9000'",
        "PROCESS_CONCURRENCY must be a positive integer, got 'abc'",
        "LEASE_SECONDS must be a positive integer, got '-3'",
        "PORT must be a positive integer no greater than 65535, got '70000'",
    )


def test_supabase_needs_both_url_and_key() -> None:
    assert problems_of({"SUPABASE_URL": "https://x.supabase.co", "WORKER_SECRET": SECRET}) == (
        "SUPABASE_SECRET_KEY (or the legacy SUPABASE_SERVICE_ROLE_KEY) is missing "
        "(SUPABASE_URL is set)",
    )
    assert problems_of({"SUPABASE_SERVICE_ROLE_KEY": "k", "WORKER_SECRET": SECRET}) == (
        "SUPABASE_URL is missing (a Supabase key is set)",
    )
    assert problems_of({"SUPABASE_SECRET_KEY": "sb_secret_k", "WORKER_SECRET": SECRET}) == (
        "SUPABASE_URL is missing (a Supabase key is set)",
    )


def test_the_secret_key_replaces_the_service_role_key() -> None:
    url = "https://x.supabase.co"
    settings = load_settings(
        {"SUPABASE_URL": url, "SUPABASE_SECRET_KEY": "sb_secret_abc", "WORKER_SECRET": SECRET}
    )
    assert settings.database_backend == "supabase"
    assert settings.supabase_key == "sb_secret_abc"
    assert "sb_secret_abc" not in repr(settings)
    legacy = load_settings(
        {"SUPABASE_URL": url, "SUPABASE_SERVICE_ROLE_KEY": "a.b.c", "WORKER_SECRET": SECRET}
    )
    assert legacy.supabase_key == "a.b.c"
    both = {
        "SUPABASE_URL": url,
        "SUPABASE_SECRET_KEY": "sb_secret_abc",
        "SUPABASE_SERVICE_ROLE_KEY": "a.b.c",
        "WORKER_SECRET": SECRET,
    }
    assert problems_of(both) == (
        "set one Supabase key, not both: SUPABASE_SECRET_KEY (sb_secret_...) or the legacy "
        "SUPABASE_SERVICE_ROLE_KEY",
    )
    # A legacy JWT put in the new variable names the variable it belongs in, not the value.
    (problem,) = problems_of(
        {"SUPABASE_URL": url, "SUPABASE_SECRET_KEY": "eyJ.x.y", "WORKER_SECRET": SECRET}
    )
    assert "SUPABASE_SERVICE_ROLE_KEY" in problem and "eyJ" not in problem
    (problem,) = problems_of(
        {"DATABASE_URL": DB_URL, "SUPABASE_SECRET_KEY": "sb_secret_abc", "WORKER_SECRET": SECRET}
    )
    assert problem.startswith("set exactly one database backend")


def test_shopify_versions_are_quarterly() -> None:
    env = {"DATABASE_URL": DB_URL, "WORKER_SECRET": SECRET}
    assert load_settings({**env, "SHOPIFY_API_VERSION": "2026-07"}).shopify_api_version == "2026-07"
    (problem,) = problems_of({**env, "SHOPIFY_API_VERSION": "2026-05"})
    assert problem.startswith("SHOPIFY_API_VERSION must be a Shopify API version")


def test_exactly_one_database_backend() -> None:
    env = {
        "DATABASE_URL": DB_URL,
        "SUPABASE_URL": "https://x.supabase.co",
        "SUPABASE_SERVICE_ROLE_KEY": "k",
        "WORKER_SECRET": SECRET,
    }
    (problem,) = problems_of(env)
    assert problem.startswith("set exactly one database backend")


def test_malformed_database_url_never_echoes_the_password() -> None:
    (problem,) = problems_of({"DATABASE_URL": "mysql://u:hunter2@db/x", "WORKER_SECRET": SECRET})
    assert problem == "DATABASE_URL must be a postgresql:// URL"
    assert "hunter2" not in problem


def test_worker_secret_length_is_checked_without_echoing_it() -> None:
    (problem,) = problems_of({"DATABASE_URL": DB_URL, "WORKER_SECRET": "short-secret"})
    assert problem == "WORKER_SECRET must be at least 16 characters, got 12"


def test_database_only_tools_do_not_need_the_worker_secret() -> None:
    settings = load_settings({"DATABASE_URL": DB_URL}, require_worker_secret=False)
    assert settings.worker_secret is None
    # A secret that is set must still be valid.
    assert problems_of(
        {"DATABASE_URL": DB_URL, "WORKER_SECRET": "x"}, require_worker_secret=False
    ) == ("WORKER_SECRET must be at least 16 characters, got 1",)


def test_empty_values_mean_unset() -> None:
    settings = load_settings(
        {"DATABASE_URL": DB_URL, "WORKER_SECRET": SECRET, "ANTHROPIC_API_KEY": "", "PORT": " "}
    )
    assert settings.responder == "offline"
    assert settings.port == 8080


def test_repr_hides_secrets_and_the_database_password() -> None:
    settings = load_settings(
        {"DATABASE_URL": DB_URL, "WORKER_SECRET": SECRET, "ANTHROPIC_API_KEY": "sk-ant-very-secret"}
    )
    text = repr(settings)
    for secret in (SECRET, "sk-ant-very-secret", "db-password-xyz"):
        assert secret not in text
    assert "postgresql://postgres:***@127.0.0.1:54330/postgres" in text
    supa = load_settings(
        {
            "SUPABASE_URL": "https://x.supabase.co",
            "SUPABASE_SERVICE_ROLE_KEY": "service-role-secret",
            "WORKER_SECRET": SECRET,
        }
    )
    assert "service-role-secret" not in repr(supa)
    assert "supabase_service_role_key='***'" in repr(supa)


def test_settings_are_frozen() -> None:
    settings = load_settings({"DATABASE_URL": DB_URL, "WORKER_SECRET": SECRET})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_redact_url() -> None:
    assert redact_url("postgresql://u:p@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"
    assert redact_url("postgresql://u:p@[::1]:5432/d") == "postgresql://u:***@[::1]:5432/d"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f.name.upper(), raising=False)
    monkeypatch.setenv("DATABASE_URL", DB_URL)
    monkeypatch.setenv("WORKER_SECRET", SECRET)
    monkeypatch.setenv("FETCH_CONCURRENCY", "3")
    assert load_settings().fetch_concurrency == 3
