"""The console's pages: server-rendered templates over the same calls the JSON API makes.

Actions are forms that the vendored console.js posts to the API with the page's CSRF token;
the sign-in form posts here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from flask import Blueprint, Response, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from worker.console import api, charts, session
from worker.console.auth_client import SignInRefused
from worker.console.identity import Person
from worker.console.session import ConsoleError
from worker.db import Database
from worker.errors import WorkerError

bp = Blueprint(
    "console_pages",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/console/static",
)

STATUS_LABELS = {
    "open": "in progress",
    "waiting": "waiting for a person",
    "waiting_credits": "waiting for credits",
    "answered_auto": "answered automatically",
    "answered_human": "answered by a person",
    "closed": "closed",
    "spam": "spam",
    "skipped": "skipped",
    "failed": "failed",
}

# Why a reply waits for a person, in words; other reasons are shown as they are.
HOLD_LABELS = {
    "reply_cap": "over the reply cap: no automatic reply, write one or discard",
    "follow_up_promised": "the draft promises a follow-up: a person answers",
    "needs_human": "asks for a person",
    "draft_only": "this store sends drafts only",
    "low_confidence": "unsure of the request",
    "delivery_in_doubt": "may already have been sent",
}


# The knowledge topics, as the page names them (the table's check has the same keys).
KNOWLEDGE_TOPICS = {
    "shipping": "Shipping times and costs",
    "returns": "Returns and exchanges",
    "payment": "Payment methods",
    "contact": "Contact hours",
    "faq": "FAQ",
}


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never an open redirect to another host.
    if not target or not target.startswith("/") or target.startswith("//"):
        return url_for("console_pages.queue")
    return urlsplit(target)._replace(scheme="", netloc="").geturl()


def _render(template: str, person: Person, status: int = 200, **context: Any) -> Response:
    html = render_template(
        template,
        person=person,
        csrf=session.page_csrf_token(),
        status_labels=STATUS_LABELS,
        hold_labels=HOLD_LABELS,
        **context,
    )
    return Response(html, status=status, content_type="text/html; charset=utf-8")


def _page(template: str, load: Any) -> BaseResponse:
    person = session.current_person()
    if person is None:
        return redirect(url_for("console_pages.login", next=request.full_path.rstrip("?")))
    try:
        context = load(session.person_db(person), person)
    except ConsoleError as exc:
        return _render("error.html", person, exc.status, message=exc.message)
    except WorkerError as exc:
        error = session.error_from_database(exc)
        return _render("error.html", person, error.status, message=error.message)
    return _render(template, person, **context)


@bp.get("/login")
def login() -> BaseResponse:
    """The sign-in form (email, password)."""
    return Response(
        render_template("login.html", next=request.args.get("next", ""), error=None,
                        email="", person=None, csrf=""),
        content_type="text/html; charset=utf-8",
    )


@bp.post("/login")
def login_submit() -> BaseResponse:
    """Sign in through Supabase Auth and keep the session in HttpOnly cookies."""
    email = (request.form.get("email") or "").strip()
    password = request.form.get("password") or ""
    target = _safe_next(request.form.get("next"))
    try:
        tokens = session.state().auth.sign_in(email, password)
    except SignInRefused:
        html = render_template("login.html", next=target, error="Wrong email or password.",
                               email=email, person=None, csrf="")
        return Response(html, status=401, content_type="text/html; charset=utf-8")
    except WorkerError:
        html = render_template("login.html", next=target, email=email, person=None, csrf="",
                               error="Sign-in is unavailable right now; try again shortly.")
        return Response(html, status=503, content_type="text/html; charset=utf-8")
    response = redirect(target)
    session.set_session_cookies(response, tokens)
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    """End the session at Auth and forget it here (CSRF-checked like any cookie write)."""
    try:
        person = session.require_person()
    except ConsoleError as exc:
        if exc.status == 401:
            return redirect(url_for("console_pages.login"))
        refusal, status = session.json_error(exc.status, exc.message)
        refusal.status_code = status
        return refusal
    try:
        session.state().auth.sign_out(person.access_token)
    except WorkerError:
        pass  # the cookies go anyway; the access token expires by itself
    response = redirect(url_for("console_pages.login"))
    session.clear_session_cookies(response)
    return response


@bp.get("/")
def home() -> BaseResponse:
    """The console's front page."""
    return redirect(url_for("console_pages.queue"))


@bp.get("/console")
def queue() -> BaseResponse:
    """The needs-a-person queue."""

    def load(db: Database, _person: Person) -> dict[str, Any]:
        store = request.args.get("store") or None
        return {"queue": db.console_needs_person(store_id=store), "store": store}

    return _page("queue.html", load)


@bp.get("/console/conversations")
def conversations() -> BaseResponse:
    """The conversation list with filters and search."""

    def load(db: Database, _person: Person) -> dict[str, Any]:
        return {
            "page": api.conversations_query(db),
            "stores": db.console_stores(),
            "filters": {
                "store": request.args.get("store", ""),
                "status": request.args.get("status", ""),
                "q": request.args.get("q", ""),
            },
        }

    return _page("conversations.html", load)


@bp.get("/console/conversations/<uuid:conversation_id>")
def conversation(conversation_id: UUID) -> BaseResponse:
    """One conversation with the edit-and-send form."""

    def load(db: Database, _person: Person) -> dict[str, Any]:
        found = db.console_conversation(str(conversation_id))
        if found is None:
            raise ConsoleError(404, "conversation not found")
        held = [
            item for item in found["thread"]
            if item["kind"] == "reply" and item["status"] == "held"
        ]
        return {"c": found, "held": held[-1] if held else None}

    return _page("conversation.html", load)


@bp.get("/console/stores")
def stores() -> BaseResponse:
    """The person's stores, with the voice and notification settings owners may change."""

    def load(db: Database, _person: Person) -> dict[str, Any]:
        found = db.console_stores()
        # A person belongs to a few stores; each card shows who its digests go to.
        notices = {str(s["id"]): db.console_notifications(str(s["id"]), 10) for s in found}
        return {"stores": found, "notices": notices}

    return _page("stores.html", load)


@bp.get("/console/stores/<uuid:store_id>/knowledge")
def knowledge(store_id: UUID) -> BaseResponse:
    """The store's policies and answers that replies may use: list, and for owners add, edit
    and delete."""

    def load(db: Database, _person: Person) -> dict[str, Any]:
        found = db.console_knowledge(str(store_id))
        if found is None:
            raise ConsoleError(404, "store not found")
        return {"store": found["store"], "entries": found["entries"], "topics": KNOWLEDGE_TOPICS}

    return _page("knowledge.html", load)


@bp.get("/console/dead-letters")
def dead_letters() -> BaseResponse:
    """Dead letters with requeue (and purge for operators)."""

    def load(db: Database, _person: Person) -> dict[str, Any]:
        return {"jobs": db.console_dead_letters(store_id=request.args.get("store") or None)}

    return _page("dead_letters.html", load)


def _parse_time(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


@bp.get("/console/health")
def health() -> BaseResponse:
    """Operators: queue charts of the last 24 hours, breakers, stores."""

    def load(db: Database, person: Person) -> dict[str, Any]:
        if not person.operator:
            raise ConsoleError(403, "the health page is for operators")
        metrics = db.console_queue_metrics(24)
        points = metrics.get("points") or []
        times = [_parse_time(p["window_start"]) for p in points]
        series = [
            ("Jobs completed", "completed", ""),
            ("Retries scheduled", "retried", ""),
            ("Dead-lettered", "dead_lettered", ""),
            ("p95 duration, ms", "p95_ms", ""),
            ("Queue depth", "depth", ""),
        ]
        chart_svgs = [
            (title, Markup(charts.line_chart(title, times, [p.get(key) for p in points], unit)))  # noqa: S704
            for title, key, unit in series
        ]
        return {"charts": chart_svgs, "breakers": metrics.get("breakers") or [],
                "stores": db.console_stores()}

    return _page("health.html", load)


@bp.app_template_filter("when")
def when(value: Any) -> str:
    """A timestamp as `2026-12-01 14:05 UTC` (the API's ISO text or a datetime)."""
    if not value:
        return ""
    try:
        moment = _parse_time(value)
    except ValueError:
        return str(value)
    return f"{moment:%Y-%m-%d %H:%M} UTC"
