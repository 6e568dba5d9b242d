"""Log lines are JSON objects, one per line, with tracebacks; client libraries never log at
DEBUG (they would write whole emails, prompts and headers)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from logging.config import BaseConfigurator

import pytest

from worker import logs


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    # A handler of our own with the production formatter, restored afterwards.
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.json_formatter())
    root = logging.getLogger()
    saved = root.level, {n: logging.getLogger(n).level for n in logs.THIRD_PARTY_LOGGERS}
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_its_traceback(captured: io.StringIO) -> None:
    logs.configure("INFO")
    log = logging.getLogger("worker.test")
    log.info("run.finished", extra={"event": "run.finished", "summary": {"sent": 2}})
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("step failed")
    first, second = lines(captured)
    assert first["message"] == "run.finished" and first["summary"] == {"sent": 2}
    assert (first["level"], first["logger"]) == ("INFO", "worker.test")
    assert str(first["time"]).endswith("Z")
    assert second["level"] == "ERROR"
    assert "Traceback" in str(second["exc_info"]) and "ValueError: bad" in str(second["exc_info"])


def test_client_libraries_stay_at_info_when_log_level_is_debug(captured: io.StringIO) -> None:
    logs.configure("DEBUG")
    logging.getLogger("worker.test").debug("ours")
    logging.getLogger("imapclient.imaplib").debug("> FETCH 1 BODY.PEEK[] customer email")
    logging.getLogger("anthropic._base_client").debug("Request options: prompt with orders")
    logging.getLogger("httpcore.http11").debug("send_request_headers authorization")
    logging.getLogger("httpx").info("HTTP Request: POST")
    assert [line["message"] for line in lines(captured)] == ["ours", "HTTP Request: POST"]


def test_a_higher_level_also_applies_to_client_libraries(captured: io.StringIO) -> None:
    logs.configure("WARNING")
    logging.getLogger("httpx").info("HTTP Request: POST")
    assert lines(captured) == []


def test_gunicorn_logs_through_the_same_formatter() -> None:
    config = logs.gunicorn_logconfig("debug")
    # The factory dictConfig will import, resolved the way dictConfig resolves it.
    factory = BaseConfigurator({}).resolve(config["formatters"]["json"]["()"])
    record = logging.LogRecord("gunicorn.error", logging.INFO, __file__, 1, "Booting", (), None)
    assert json.loads(factory().format(record))["logger"] == "gunicorn.error"
    assert config["loggers"]["gunicorn.access"]["propagate"] is True
