"""Shared fixtures live in tests/support, one plugin per kind of server a test needs; the servers
themselves (Dovecot, SMTP sink, fakes, gateway) live in worker/devstack."""

pytest_plugins = [
    "tests.support.postgres",
    "tests.support.pgbouncer",
    "tests.support.mail_servers",
    "tests.support.fakes",
    "tests.support.gateway",
    "tests.support.auth",
]
