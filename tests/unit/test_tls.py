"""The shared verifying TLS context: built once, rebuilt when the CA file changes."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest

from worker import tls
from worker.devstack.tls import create_test_ca
from worker.errors import ConfigError


def test_the_context_is_shared_and_verifies(tmp_path: Path) -> None:
    ca = create_test_ca(tmp_path)
    first = tls.client_ssl_context(str(ca.ca_file))
    assert tls.client_ssl_context(str(ca.ca_file)) is first
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert tls.client_ssl_context(None) is tls.client_ssl_context()
    assert tls.client_ssl_context(None) is not first


def test_a_rewritten_ca_file_gets_a_new_context(tmp_path: Path) -> None:
    ca = create_test_ca(tmp_path)
    first = tls.client_ssl_context(str(ca.ca_file))
    stat = os.stat(ca.ca_file)
    os.utime(ca.ca_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert tls.client_ssl_context(str(ca.ca_file)) is not first


def test_an_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="EXTRA_CA_FILE"):
        tls.client_ssl_context(str(tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="EXTRA_CA_FILE"):
        tls.client_ssl_context(str(bad))
