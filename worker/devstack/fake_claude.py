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
import dataclasses
import hashlib
import itertools
import json
import math
import re
import threading
import time
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
    # What the fake answered with in `usage` (Messages requests answered 200 only).
    usage: dict[str, Any] | None = None

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

    def finalize(self, request: RecordedRequest, reply: FakeReply) -> FakeReply:
        """The answer as it goes out (a subclass may fill in what depends on the request)."""
        return reply

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
        reply = self.finalize(request, reply)

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

# Token counts. The fake cannot run Claude's tokenizer, so it estimates: one token per
# CHARS_PER_TOKEN characters of the JSON the API would see (mixed pt/en/es prose and JSON keys
# tokenise at 3-4 characters; the lower end keeps cost estimates on the safe side).
CHARS_PER_TOKEN = 3.5
# The tool-use system prompt the API adds when tools are given, for tool_choice any/tool on
# current Claude models (Anthropic docs, "Tool use: pricing"), counted once per request.
TOOL_USE_SYSTEM_TOKENS = 313
# A tool_use block's own wrapper (id, name, type) on top of its input.
TOOL_USE_BLOCK_TOKENS = 12
# The smallest prefix the API caches, per model (Anthropic docs, "Prompt caching": 4,096 for
# Haiku 4.5 and Opus 4.5+, 1,024 for Sonnet 4.x); a shorter marked prefix is simply not cached.
MIN_CACHEABLE_TOKENS = {"claude-haiku-4-5": 4096, "claude-opus-4-5": 4096, "claude-opus-4-6": 4096}
DEFAULT_MIN_CACHEABLE_TOKENS = 1024
CACHE_TTL_SECONDS = 300.0  # the default "5m" ephemeral cache, refreshed on every hit


def estimate_tokens(text: str) -> int:
    """The fake's token estimate for a piece of prompt or output text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def _usage(
    input_tokens: int, output_tokens: int, cache_creation: int = 0, cache_read: int = 0
) -> dict[str, Any]:
    """A `usage` object in the API's shape (the 5-minute cache is the only one we use)."""
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_creation,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _without_cache_control(block: Any) -> str:
    if isinstance(block, dict):
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            return str(block["text"])
        block = {k: v for k, v in block.items() if k != "cache_control"}
    return block if isinstance(block, str) else json.dumps(block, ensure_ascii=False)


def prompt_blocks(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The request's prompt in the order the API caches it (tools, system, messages), as
    (text, marked with cache_control) pairs."""
    blocks: list[tuple[str, bool]] = []
    for tool in body.get("tools") or []:
        blocks.append((_without_cache_control(tool), "cache_control" in tool))
    system = body.get("system")
    for block in [system] if isinstance(system, str) else system or []:
        blocks.append(
            (_without_cache_control(block), isinstance(block, dict) and "cache_control" in block)
        )
    for message in body.get("messages") or []:
        content = message.get("content")
        for block in [content] if isinstance(content, str) else content or []:
            marked = isinstance(block, dict) and "cache_control" in block
            blocks.append((_without_cache_control(block), marked))
    return blocks


class PromptCache:
    """The API's prompt cache as the fake models it: prefixes up to a cache_control mark, at
    least the model's minimum long, live CACHE_TTL_SECONDS after their last use."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._expiry.clear()

    def usage(self, body: dict[str, Any], output_tokens: int) -> dict[str, Any]:
        """The `usage` the API would report for this request (input split by the cache)."""
        model = str(body.get("model") or "")
        minimum = MIN_CACHEABLE_TOKENS.get(model, DEFAULT_MIN_CACHEABLE_TOKENS)
        total = TOOL_USE_SYSTEM_TOKENS if body.get("tools") else 0
        digest = hashlib.sha256(model.encode())
        breakpoints: list[tuple[str, int]] = []
        for text, marked in prompt_blocks(body):
            total += estimate_tokens(text)
            digest.update(text.encode())
            digest.update(b"\x00")
            if marked and total >= minimum:
                breakpoints.append((digest.hexdigest(), total))
        now = time.monotonic()
        read = created = 0
        with self._lock:
            for key, tokens in breakpoints:
                if self._expiry.get(key, 0.0) > now:
                    read = tokens
            for key, _tokens in breakpoints:
                self._expiry[key] = now + CACHE_TTL_SECONDS
        if breakpoints and breakpoints[-1][1] > read:
            created = breakpoints[-1][1] - read
        return _usage(total - read - created, output_tokens, created, read)


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
        # Replaced by FakeClaude.finalize with counts computed from the request.
        "usage": _usage(412, 87),
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
        "usage": _usage(400, 20),
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
    if request.tool_name != prompts.ANSWER_TOOL_NAME:
        return None
    c = offline.classify_text(subject, body, email.get("language_hint"))
    answer: dict[str, Any] = {
        "intent": c.intent,
        "language": c.language,
        "sentiment": c.sentiment,
        "needs_human": c.needs_human,
        "confidence": c.confidence,
        "order_numbers": c.order_numbers,
        "is_spam": c.is_spam,
    }
    if c.needs_human:
        answer["human_reason"] = "the customer asks for a person"
    if c.is_spam:
        return answer
    context = blocks.get(prompts.CONTEXT_BLOCK) or {}
    store_facts = blocks.get(prompts.STORE_BLOCK) or {}
    store = store_facts.get("store") or {}
    language = str(context.get("reply_language") or "auto")
    if language == "auto":
        language = c.language
    tone = str(store.get("tone") or "friendly")
    orders = [_order_from_prompt(o) for o in context.get("orders") or []]
    knowledge = [
        KnowledgeEntry(str(k.get("topic")), str(k.get("title")), str(k.get("text")))
        for k in store_facts.get("store_knowledge") or []
    ]
    products = [_product_from_prompt(p) for p in context.get("products") or []]
    handoff = bool(context.get("person_follows_up"))
    reply_body = offline.templated_body(
        c, language, tone, orders=orders, products=products, knowledge=knowledge, handoff=handoff
    )
    # As the prompt asks: what needs the store's people is handed to them (needs_human), and
    # only then may the reply say that they will follow up.
    if not (handoff or c.needs_human) and promises.promises_follow_up(reply_body):
        answer["needs_human"] = True
        answer["human_reason"] = "the store has to decide"
    answer["reply"] = {"body_text": reply_body, "language": language}
    return answer


class FakeClaude(ScriptedServer):
    """POST /v1/messages with scripted or computed answers; checks the API key like the API."""

    def __init__(
        self,
        *,
        api_key: str = TEST_API_KEY,
        port: int = 0,
        latency_seconds: float = 0.0,
        seconds_per_output_token: float = 0.0,
    ) -> None:
        super().__init__(port=port, latency_seconds=latency_seconds)
        self.api_key = api_key
        # Generation time: a real answer takes longer the more tokens it writes.
        self.seconds_per_output_token = seconds_per_output_token
        self.prompt_cache = PromptCache()

    def finalize(self, request: RecordedRequest, reply: FakeReply) -> FakeReply:
        """A 200 message gets the usage the API would report for this request and answer."""
        body = reply.body
        if reply.status != 200 or not isinstance(body, dict) or body.get("type") != "message":
            return reply
        output_tokens = 0
        for block in body.get("content") or []:
            if block.get("type") == "tool_use":
                text = json.dumps(block.get("input"), ensure_ascii=False)
                output_tokens += estimate_tokens(text) + TOOL_USE_BLOCK_TOKENS
            else:
                output_tokens += estimate_tokens(str(block.get("text") or ""))
        usage = self.prompt_cache.usage(request.body, output_tokens)
        request.usage = usage
        delay = reply.delay + self.seconds_per_output_token * output_tokens
        return dataclasses.replace(reply, body={**body, "usage": usage}, delay=delay)

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
    parser.add_argument(
        "--per-token", type=float, default=0.0, help="seconds per output token on top"
    )
    parser.add_argument("--api-key", default=TEST_API_KEY)
    args = parser.parse_args(argv)
    fake = FakeClaude(
        api_key=args.api_key,
        port=args.port,
        latency_seconds=args.latency,
        seconds_per_output_token=args.per_token,
    )
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
