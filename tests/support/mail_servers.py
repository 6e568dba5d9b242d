"""Pytest plugin: a test CA, a real Dovecot and an SMTP sink, all on loopback.

Dovecot is session-scoped (starting it is cheap, but tests share it); each test gets its own
user names from `mail_user`, so tests never see each other's mail. The SMTP sink is reset for
every test.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from worker.devstack.dovecot import DovecotServer
from worker.devstack.smtp_sink import SmtpSink
from worker.devstack.tls import TestCA, create_test_ca

_user_numbers = itertools.count(1)


@dataclass(frozen=True)
class MailUser:
    """A Dovecot user created for one test."""

    name: str
    password: str


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost."""
    return create_test_ca(tmp_path_factory.mktemp("tls-ca"))


@pytest.fixture(scope="session")
def dovecot(tls_ca: TestCA) -> Iterator[DovecotServer]:
    """A Dovecot started for this test session (imaps and imap/STARTTLS on free ports)."""
    # Not under pytest's tmp dir: that one is private to root, and Dovecot's mail processes run
    # as an unprivileged user that must reach the Maildirs.
    with DovecotServer(tls_ca) as server:
        yield server


@pytest.fixture
def mail_user(dovecot: DovecotServer) -> MailUser:
    """A fresh Dovecot user with an empty INBOX, unique to the test."""
    user = MailUser(name=f"user{next(_user_numbers)}@shop.test", password="imap-test-password")
    dovecot.add_user(user.name, user.password)
    return user


@pytest.fixture(scope="session")
def _smtp_sink_server(tls_ca: TestCA) -> Iterator[SmtpSink]:
    with SmtpSink(tls_ca) as sink:
        yield sink


@pytest.fixture
def smtp_sink(_smtp_sink_server: SmtpSink) -> SmtpSink:
    """The session's STARTTLS SMTP sink, emptied and with no scripted failures."""
    _smtp_sink_server.reset()
    return _smtp_sink_server


@pytest.fixture
def smtp_sink_implicit_tls(tls_ca: TestCA) -> Iterator[SmtpSink]:
    """An SMTP sink on an implicit-TLS (SMTPS) port."""
    with SmtpSink(tls_ca, implicit_tls=True) as sink:
        yield sink
