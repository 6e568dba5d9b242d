"""The Claude responder: classification and reply in one call of the anthropic SDK's Messages API.

Structured output comes from a forced tool call (`tool_choice` of type `tool`), so the answer is
the tool's JSON input, validated here; nothing is parsed out of free text. Each answer carries
the tokens it cost (`usage`, with the prompt cache's writes and reads).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import anthropic

from worker import errors, prompts
from worker.model_cost import ModelUsage
from worker.responder import (
    HOLD_NEEDS_HUMAN,
    Answer,
    Classification,
    Draft,
    EmailFacts,
    InvalidModelOutputError,
    ReplyContext,
    StoreVoice,
    reply_language,
    validate_classification,
)

log = logging.getLogger(__name__)

SERVICE = "claude"
DEFAULT_MODEL = "claude-haiku-4-5"
DEFAULT_TIMEOUT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10.0
# One extra sample when the output breaks the schema; sampling again usually fixes it, and a
# second failure is left to a person (see InvalidModelOutputError).
INVALID_OUTPUT_ATTEMPTS = 2
MAX_HUMAN_REASON_CHARS = 200


class ClaudeResponder:
    """Responder backed by Claude; every failure surfaces as a worker.errors type."""

    def __init__(
        self,
        api_key: str,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        self._model = model
        # max_retries=0: the queue owns backoff (fail_job honours Retry-After, breakers stop
        # storms); SDK retries on top would multiply attempts and hold a worker slot meanwhile.
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=anthropic.Timeout(
                timeout_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, timeout_seconds)
            ),
        )

    @property
    def model(self) -> str:
        """The Claude model id sent with every request."""
        return self._model

    def close(self) -> None:
        """Release the SDK's connection pool."""
        self._client.close()

    def answer(self, email: EmailFacts, context: ReplyContext) -> Answer:
        """Classify and reply in one forced `record_answer` call; the signature is ours."""
        request = prompts.answer_request(email, context)
        usage = ModelUsage()
        last: InvalidModelOutputError | None = None
        for attempt in range(1, INVALID_OUTPUT_ATTEMPTS + 1):
            message = self._create(request)
            # Every attempt is paid for, the rejected ones too.
            usage += ModelUsage.from_api(getattr(message, "usage", None))
            try:
                data = tool_input(message, prompts.ANSWER_TOOL_NAME)
                classification = validate_classification(data)
                draft = (
                    None
                    if classification.is_spam
                    else self._validate_draft(data, classification, context.store)
                )
                return Answer(classification, draft, usage)
            except InvalidModelOutputError as exc:
                log.warning("claude output rejected (attempt %d): %s", attempt, exc.message)
                last = exc
        assert last is not None
        raise last

    def _create(self, request: dict[str, Any]) -> Any:
        try:
            return self._client.messages.create(model=self._model, **request)
        except anthropic.APIError as exc:
            raise map_sdk_error(exc) from exc

    def _validate_draft(
        self, data: Mapping[str, Any], classification: Classification, store: StoreVoice
    ) -> Draft:
        reply = data.get("reply")
        if not isinstance(reply, Mapping):
            raise InvalidModelOutputError("no reply for an email that is not spam")
        body = reply.get("body_text")
        if not isinstance(body, str) or not body.strip():
            raise InvalidModelOutputError("empty reply body")
        language = reply.get("language")
        if not isinstance(language, str) or not language.strip():
            language = reply_language(classification, store)
        hold_reason = None
        if classification.needs_human:
            reason = data.get("human_reason")
            detail = reason.strip()[:MAX_HUMAN_REASON_CHARS] if isinstance(reason, str) else ""
            hold_reason = f"{HOLD_NEEDS_HUMAN}: {detail}" if detail else HOLD_NEEDS_HUMAN
        return Draft(
            body_text=prompts.with_signature(body, store),
            language=language.strip(),
            model=self._model,
            hold_reason=hold_reason,
        )


def tool_input(message: Any, tool_name: str) -> Mapping[str, Any]:
    """The input of the named tool_use block; a missing or truncated call is invalid output."""
    stop_reason = getattr(message, "stop_reason", None)
    if stop_reason == "max_tokens":
        raise InvalidModelOutputError("response truncated at max_tokens")
    if stop_reason == "refusal":
        raise InvalidModelOutputError("model refused")
    for block in getattr(message, "content", None) or []:
        if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == tool_name:
            data = getattr(block, "input", None)
            if not isinstance(data, Mapping):
                raise InvalidModelOutputError(f"{tool_name} input is not an object")
            return data
    raise InvalidModelOutputError(f"no {tool_name} tool call in the response")


def map_sdk_error(exc: anthropic.APIError) -> errors.WorkerError:
    """The worker error for an SDK failure: 429/529/5xx/timeouts transient, other 4xx permanent."""
    if isinstance(exc, anthropic.APITimeoutError):
        return errors.TransientError("request timed out", service=SERVICE)
    if isinstance(exc, anthropic.APIConnectionError):
        return errors.TransientError(f"connection failed: {exc.message}", service=SERVICE)
    if isinstance(exc, anthropic.APIStatusError):
        headers = exc.response.headers
        retry_after = headers.get("retry-after")
        retry_after_ms = headers.get("retry-after-ms")
        if retry_after is None and retry_after_ms is not None:
            try:
                retry_after = str(float(retry_after_ms) / 1000.0)
            except ValueError:
                retry_after = None
        detail = _status_detail(exc)
        return errors.classify_http_status(exc.status_code, retry_after, SERVICE, detail=detail)
    # A response that parsed but broke the SDK's own model: a server-side anomaly, retry later.
    return errors.TransientError(f"unexpected API response: {exc.message}", service=SERVICE)


def _status_detail(exc: anthropic.APIStatusError) -> str:
    kind = exc.type or "error"
    text = exc.api_message or ""
    request_id = f" (request {exc.request_id})" if exc.request_id else ""
    return f"{kind}: {text}{request_id}" if text else f"{kind}{request_id}"
