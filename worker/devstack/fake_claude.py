"""A local stand-in for the Anthropic Messages API (POST /v1/messages) on a loopback port.

The anthropic SDK 2.x speaks HTTP through `httpx2`, which respx cannot intercept, so tests point
the real SDK at this server with `base_url`. Responses use the API's real shapes: a message with
a `tool_use` block, and `{"type": "error", "error": {...}}` bodies with 400/401/429/500/529.
Each test can script the next responses; unscripted requests get a plausible answer computed by
the offline responder from the request's data blocks, which is what the demo and benchmarks use.
`ScriptedServer` (a threaded loopback HTTP server with scripted replies, recorded requests and
optional latency) is shared with `fake_shopify`.

Run standalone: `python -m worker.devstack.fake_claude --port 8787 --latency 0.3`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from worker import offline, promises, prompts
from worker.responder import (
    FulfillmentFacts,
    KnowledgeEntry,
    OrderFacts,
    ProductFacts,
    RefundFacts,
    ShipmentEvent,
    TrackingFacts,
    VariantFacts,
)

TEST_API_KEY = "sk-ant-test-fake-key"
ANTHROPIC_VERSION_HEADER = "anthropic-version"
# How often serve_forever checks for shutdown; short so each test stops its fake quickly.
SHUTDOWN_POLL_SECONDS = 0.05


@dataclass
class FakeReply:
    """One scripted HTTP answer; `delay` seconds pass before it is written."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop_connection: bool = False


@dataclass
class RecordedRequest:
    """A request the fake received (headers lower-cased, body JSON-decoded when possible)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def tool_name(self) -> str | None:
        """The forced tool's name, for Messages requests."""
        choice = (self.body or {}).get("tool_choice") or {}
        return choice.get("name")

    @property
    def user_text(self) -> str:
        """The concatenated text of the user turns."""
        parts: list[str] = []
        for message in (self.body or {}).get("messages") or []:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            else:
                parts.extend(b.get("text", "") for b in content or [] if isinstance(b, dict))
        return "\n".join(parts)


class ScriptedServer:
    """A threaded HTTP server on 127.0.0.1 whose answers a test scripts."""

    def __init__(self, *, port: int = 0, latency_seconds: float = 0.0) -> None:
        self.latency_seconds = latency_seconds
        self.requests: list[RecordedRequest] = []
        self._script: deque[FakeReply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Self:
        """Bind a loopback port and serve in a daemon thread."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, keep-alive clients stall
            # ~40 ms per request on delayed ACKs, which would distort every benchmark.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; slow replies in flight are released at once."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting -------------------------------------------------------------------------
    def script(self, *replies: FakeReply) -> None:
        """Queue replies for the next requests, in order; later requests use the default."""
        with self._lock:
            self._script.extend(replies)

    def clear(self) -> None:
        """Forget scripted replies and recorded requests."""
        with self._lock:
            self._script.clear()
            self.requests.clear()

    @property
    def pending_replies(self) -> int:
        with self._lock:
            return len(self._script)

    # -- subclass hooks --------------------------------------------------------------------
    def default_reply(self, request: RecordedRequest) -> FakeReply:
        """The answer when nothing is scripted."""
        raise NotImplementedError

    def precheck(self, request: RecordedRequest) -> FakeReply | None:
        """An answer that overrides the script (e.g. a bad credential), or None."""
        return None

    # -- serving ---------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = RecordedRequest(
            method=handler.command,
            path=handler.path,
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        reply = self.precheck(request)
        with self._lock:
            self.requests.append(request)
            if reply is None and self._script:
                reply = self._script.popleft()
        if reply is None:
            reply = self.default_reply(request)

        delay = self.latency_seconds + reply.delay
        if delay > 0 and self._stopping.wait(delay):
            return
        if reply.drop_connection:
            handler.close_connection = True
            return
        payload = (
            reply.body.encode()
            if isinstance(reply.body, str)
            else json.dumps(reply.body).encode()
            if reply.body is not None
            else b""
        )
        try:
            handler.send_response(reply.status)
            headers = {"Content-Type": "application/json", **reply.headers}
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout); nothing to answer.
            handler.close_connection = True


# ---------------------------------------------------------------------------------------------
# Anthropic Messages API shapes

_ids = itertools.count(1)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _request_id() -> str:
    return f"req_fake{next(_ids):08d}"


def tool_use_reply(
    name: str,
    tool_input: dict[str, Any],
    *,
    model: str = "claude-haiku-4-5",
    stop_reason: str = "tool_use",
    delay: float = 0.0,
) -> FakeReply:
    """A 200 message whose content is one tool_use block."""
    body = {
        "id": f"msg_fake{next(_ids):08d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {
                "type": "tool_use",
                "id": f"toolu_fake{next(_ids):08d}",
                "name": name,
                "input": tool_input,
            }
        ],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 412, "output_tokens": 87},
    }
    return FakeReply(200, body, {"request-id": _request_id()}, delay)


def text_reply(text: str, *, model: str = "claude-haiku-4-5") -> FakeReply:
    """A 200 message with only a text block (no tool call): malformed for our purposes."""
    body = {
        "id": f"msg_fake{next(_ids):08d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 400, "output_tokens": 20},
    }
    return FakeReply(200, body, {"request-id": _request_id()})


def error_reply(
    status: int,
    message: str | None = None,
    *,
    error_type: str | None = None,
    retry_after: str | None = None,
    delay: float = 0.0,
) -> FakeReply:
    """An API error in the documented shape, with `retry-after` when given."""
    kind = error_type or ERROR_TYPES.get(status, "api_error")
    request_id = _request_id()
    body = {
        "type": "error",
        "error": {"type": kind, "message": message or kind.replace("_", " ")},
        "request_id": request_id,
    }
    headers = {"request-id": request_id}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    if status in (429, 529, 500):
        headers["x-should-retry"] = "true"
    return FakeReply(status, body, headers, delay)


_BLOCK = re.compile(r"<(?P<tag>[a-z_]+)>\n(?P<json>.*?)\n</(?P=tag)>", re.S)


def data_blocks(text: str) -> dict[str, Any]:
    """The JSON data blocks of one of our prompts, by tag name."""
    blocks: dict[str, Any] = {}
    for match in _BLOCK.finditer(text):
        try:
            blocks[match.group("tag")] = json.loads(match.group("json"))
        except ValueError:
            continue
    return blocks


def _order_from_prompt(data: dict[str, Any]) -> OrderFacts:
    return OrderFacts(
        name=data.get("order") or "",
        created_at=data.get("created_at"),
        email=None,
        customer_email=None,
        financial_status=data.get("payment_status"),
        fulfillment_status=data.get("fulfillment_status"),
        line_items=list(data.get("items") or []),
        fulfillments=[
            FulfillmentFacts(
                status=s.get("status"),
                estimated_delivery_at=s.get("estimated_delivery_at"),
                delivered_at=s.get("delivered_at"),
                tracking=[
                    TrackingFacts(t.get("number"), t.get("url"), t.get("carrier"))
                    for t in s.get("tracking") or []
                ],
                events=[
                    ShipmentEvent(e.get("status"), e.get("happened_at"), e.get("message"))
                    for e in s.get("events") or []
                ],
            )
            for s in data.get("shipments") or []
        ],
        cancelled_at=data.get("cancelled_at"),
        refunds=[
            RefundFacts(r.get("refunded_at"), r.get("amount")) for r in data.get("refunds") or []
        ],
    )


def _product_from_prompt(data: dict[str, Any]) -> ProductFacts:
    return ProductFacts(
        title=str(data.get("title") or ""),
        url=data.get("url"),
        available=data.get("available"),
        price=data.get("price"),
        variants=[
            VariantFacts(str(v.get("title") or ""), v.get("price"), v.get("available"))
            for v in data.get("variants") or []
        ],
    )


def plausible_tool_input(request: RecordedRequest) -> dict[str, Any] | None:
    """What a well-behaved model would put in the forced tool call, via the offline rules."""
    blocks = data_blocks(request.user_text)
    email = blocks.get(prompts.EMAIL_BLOCK) or {}
    subject, body = str(email.get("subject") or ""), str(email.get("body") or "")
    if request.tool_name == prompts.CLASSIFY_TOOL_NAME:
        c = offline.classify_text(subject, body, email.get("language_hint"))
        return {
            "intent": c.intent,
            "language": c.language,
            "sentiment": c.sentiment,
            "needs_human": c.needs_human,
            "confidence": c.confidence,
            "order_numbers": c.order_numbers,
            "is_spam": c.is_spam,
        }
    if request.tool_name == prompts.DRAFT_TOOL_NAME:
        context = blocks.get(prompts.CONTEXT_BLOCK) or {}
        language = str(context.get("reply_language") or "en")
        intent = str((context.get("classification") or {}).get("intent") or "other")
        tone = str((context.get("store") or {}).get("tone") or "friendly")
        orders = [_order_from_prompt(o) for o in context.get("orders") or []]
        knowledge = [
            KnowledgeEntry(str(k.get("topic")), str(k.get("title")), str(k.get("text")))
            for k in context.get("store_knowledge") or []
        ]
        products = [_product_from_prompt(p) for p in context.get("products") or []]
        handoff = bool(context.get("person_follows_up"))
        body = offline.compose_reply(
            intent, orders, language, tone, products=products, knowledge=knowledge, handoff=handoff
        )
        return {
            "body_text": body,
            "language": language,
            # As the prompt asks: what needs the store's people is handed to them, and only
            # then does the reply say that they will follow up.
            "needs_human": not handoff and promises.promises_follow_up(body),
        }
    return None


class FakeClaude(ScriptedServer):
    """POST /v1/messages with scripted or computed answers; checks the API key like the API."""

    def __init__(
        self, *, api_key: str = TEST_API_KEY, port: int = 0, latency_seconds: float = 0.0
    ) -> None:
        super().__init__(port=port, latency_seconds=latency_seconds)
        self.api_key = api_key

    @property
    def messages(self) -> list[RecordedRequest]:
        """Recorded requests to /v1/messages."""
        return [r for r in self.requests if r.path.split("?")[0] == "/v1/messages"]

    def precheck(self, request: RecordedRequest) -> FakeReply | None:
        if request.method != "POST" or request.path.split("?")[0] != "/v1/messages":
            return error_reply(404, f"Not found: {request.method} {request.path}")
        # SDK 2.x sends the key as a bearer token; 0.x sent x-api-key. The API takes either.
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_key not in (request.headers.get("x-api-key"), bearer):
            return error_reply(401, "invalid x-api-key")
        if ANTHROPIC_VERSION_HEADER not in request.headers:
            return error_reply(400, "anthropic-version: header is required")
        if not isinstance(request.body, dict) or not request.body.get("model"):
            return error_reply(400, "model: Field required")
        return None

    def default_reply(self, request: RecordedRequest) -> FakeReply:
        tool_input = plausible_tool_input(request)
        model = str((request.body or {}).get("model") or "claude-haiku-4-5")
        if tool_input is None:
            return text_reply("I can only help with support emails.", model=model)
        return tool_use_reply(str(request.tool_name), tool_input, model=model)

    # Shortcuts for tests.
    def reply_tool(self, name: str, tool_input: dict[str, Any], **kwargs: Any) -> None:
        """Script one tool_use answer."""
        self.script(tool_use_reply(name, tool_input, **kwargs))

    def reply_error(self, status: int, message: str | None = None, **kwargs: Any) -> None:
        """Script one error answer."""
        self.script(error_reply(status, message, **kwargs))


def main(argv: list[str] | None = None) -> None:
    """Serve the fake until interrupted (demo and benchmarks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--api-key", default=TEST_API_KEY)
    args = parser.parse_args(argv)
    fake = FakeClaude(api_key=args.api_key, port=args.port, latency_seconds=args.latency)
    fake.start()
    print(f"ANTHROPIC_BASE_URL={fake.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
