"""A real SMTP server (aiosmtpd) on loopback that records what it accepts and fails on demand.

STARTTLS (or implicit TLS) with the test CA, AUTH PLAIN/LOGIN for one configured user, and
scripted failures: a recipient refused with 550 or 451, or the connection dropped after DATA.
Usable outside pytest: `python -m worker.devstack.smtp_sink` runs one until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import logging
import shutil
import signal
import threading
import warnings
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from worker.devstack.dovecot import _interrupt, free_port
from worker.devstack.tls import TestCA, create_test_ca

# aiosmtpd logs deprecation notes and the implicit-TLS AUTH warning on every session at WARNING;
# its errors (a failed TLS handshake in a negative test) still show.
logging.getLogger("mail.log").setLevel(logging.ERROR)


@dataclass(frozen=True)
class ReceivedMessage:
    """One message the sink accepted: the envelope and the raw bytes as sent."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    authenticated_as: str | None
    tls: bool
    # True when the sink kept the message but cut the connection before answering 250:
    # the sender cannot know the message went out.
    dropped_connection: bool = False

    def message(self) -> EmailMessage:
        """The message parsed with the modern email policy."""
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Script:
    refused: dict[str, str] = field(default_factory=dict)
    drop_after_data: int = 0


class _QuietController(Controller):
    def factory(self) -> SMTP:
        # aiosmtpd warns that AUTH without STARTTLS is unsafe; on an implicit-TLS port it is not.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return super().factory()


class SmtpSink:
    """An aiosmtpd server on a free loopback port; inspect `.messages`, script failures."""

    def __init__(
        self,
        ca: TestCA | None = None,
        *,
        username: str | None = "sender@shop.test",
        password: str | None = "sink-password",  # noqa: S107 - a throwaway test login
        implicit_tls: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self._own_ca = ca is None
        self.ca = ca or create_test_ca()
        self.username = username
        self.password = password
        self.implicit_tls = implicit_tls
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._messages: list[ReceivedMessage] = []
        self._script = _Script()
        self.failed_logins = 0
        self._controller: Controller | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> SmtpSink:
        """Start listening; returns once the server answers."""
        if self._controller is not None:
            raise RuntimeError("SMTP sink already running")
        self.port = free_port(self.host)
        context = self.ca.server_context()
        options: dict[str, Any] = {
            "server_hostname": "localhost",
            "authenticator": self._authenticate if self.username else None,
            "auth_required": self.username is not None,
            # aiosmtpd only counts STARTTLS as TLS; on an implicit-TLS port everything already is.
            "auth_require_tls": not self.implicit_tls,
        }
        if self.implicit_tls:
            options["ssl_context"] = context
        else:
            options["tls_context"] = context
            options["require_starttls"] = True
        self._controller = _QuietController(
            _Handler(self), hostname=self.host, port=self.port, **options
        )
        self._controller.start()
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
        if self._own_ca:
            shutil.rmtree(self.ca.directory, ignore_errors=True)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def tls_mode(self) -> str:
        """The worker's name for this sink's TLS mode."""
        return "ssl" if self.implicit_tls else "starttls"

    # -- scripting -----------------------------------------------------------------------------

    def refuse(self, recipient: str, code: int = 550) -> None:
        """Refuse RCPT TO for recipient: 550 (permanent) or 451 (transient) by default."""
        text = "5.1.1 Recipient address rejected" if code >= 500 else "4.3.0 Try again later"
        with self._lock:
            self._script.refused[recipient.lower()] = f"{code} {text}"

    def drop_after_data(self, times: int = 1) -> None:
        """For the next `times` messages: keep the message but close the connection unanswered."""
        with self._lock:
            self._script.drop_after_data = times

    def reset(self) -> None:
        """Forget received messages and scripted failures."""
        with self._lock:
            self._messages.clear()
            self._script = _Script()
            self.failed_logins = 0

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._lock:
            return list(self._messages)

    # -- server side ---------------------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode(errors="replace")
            password = auth_data.password.decode(errors="replace")
            if login == self.username and password == self.password:
                return AuthResult(success=True, auth_data=login)
        with self._lock:
            self.failed_logins += 1
        return AuthResult(success=False, handled=False)

    def _rcpt_refusal(self, address: str) -> str | None:
        with self._lock:
            return self._script.refused.get(address.lower())

    def _record(self, message: ReceivedMessage) -> None:
        with self._lock:
            self._messages.append(message)

    def _take_drop(self) -> bool:
        with self._lock:
            if self._script.drop_after_data > 0:
                self._script.drop_after_data -= 1
                return True
            return False


class _Handler:
    """aiosmtpd hooks; the event loop thread calls these."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.sink._rcpt_refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        dropped = self.sink._take_drop()
        content = envelope.original_content or b""
        self.sink._record(
            ReceivedMessage(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=content,
                authenticated_as=session.auth_data if session.authenticated else None,
                tls=session.ssl is not None or self.sink.implicit_tls,
                dropped_connection=dropped,
            )
        )
        if dropped and isinstance(server.transport, asyncio.Transport):
            server.transport.abort()
        return "250 2.0.0 Message accepted"


def main() -> None:
    """Run a sink until Ctrl-C, then list the envelopes of the messages it accepted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--user", default="sender@shop.test")
    parser.add_argument("--password", default="sink-password")
    args = parser.parse_args()
    sink = SmtpSink(username=args.user, password=args.password, implicit_tls=args.implicit_tls)
    with sink:
        print(f"SMTP_HOST={sink.host}")
        print(f"SMTP_PORT={sink.port}")
        print(f"SMTP_TLS={sink.tls_mode}")
        print(f"SMTP_USER={sink.username}")
        print(f"SMTP_PASSWORD={sink.password}")
        print(f"EXTRA_CA_FILE={sink.ca.ca_file}", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        for received in sink.messages:
            print(received.mail_from, "->", ", ".join(received.rcpt_tos), len(received.data))


if __name__ == "__main__":
    main()
