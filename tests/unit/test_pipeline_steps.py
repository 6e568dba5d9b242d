"""The email pipeline's steps one at a time (worker.pipeline.steps), over a JobContext.

A new step gets its test here: build a context with what earlier steps would have filled in,
run the step, and look at what it added or how it ended the job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import pytest

from worker.db import Database
from worker.errors import TransientError
from worker.mime import ParsedEmail
from worker.model_cost import ModelUsage
from worker.offline import OfflineResponder
from worker.pipeline import steps
from worker.pipeline.context import JobContext, JobDone, PipelineOptions, Services
from worker.pipeline.handler import EmailHandler
from worker.queue.handlers import JobRun
from worker.queue.outcome import Complete
from worker.queue.trace import JobTrace
from worker.responder import (
    Answer,
    Classification,
    Draft,
    EmailFacts,
    OrderFacts,
    ProductFacts,
    VariantFacts,
)

STORE = {"id": "s1", "support_email": "suporte@loja.test", "active": True}
MESSAGE = {
    "id": "m1",
    "message_id": "<q1@example.com>",
    "from_address": "ana@example.com",
    "subject": "Onde está meu pedido?",
    "body_text": "Olá, quando chega o pedido #1001?",
    "size_bytes": 500,
}


class LoadingDb:
    """load_job_context (what the first step reads) and release_credit (recorded)."""

    def __init__(self, loaded: Mapping[str, Any] | None) -> None:
        self.loaded = loaded
        self.released: list[tuple[str, str, str]] = []

    def load_job_context(self, job_id: str, window: int | None = None) -> Any:
        return self.loaded

    def release_credit(self, store_id: str, job_id: str, reason: str) -> bool:
        self.released.append((store_id, job_id, reason))
        return True

    def get_store_secrets(self, store_id: str) -> dict[str, Any]:
        return {"shopify_token": "t"}

    # The breakers the model and Shopify calls go through: always closed here.
    def circuit_allow(self, service: str) -> bool:
        return True

    def circuit_record(self, service: str, success: bool) -> str:
        return "closed"


def context(
    *,
    store: Mapping[str, Any] = STORE,
    message: Mapping[str, Any] = MESSAGE,
    loaded: Mapping[str, Any] | None = None,
    job_id: str = "j1",
    **fields: Any,
) -> JobContext:
    job = {"id": job_id, "job_type": "process_email", "store_id": "s1"}
    services = Services(
        db=cast(Database, LoadingDb(loaded)),
        responder=OfflineResponder(),
        mail=None,  # type: ignore[arg-type]
        shop_for=lambda store, secrets: None,
    )
    ctx = JobContext(
        run=JobRun(job=job, worker_id="w1", trace=JobTrace(job)),
        services=services,
        options=PipelineOptions(),
        loaded=loaded or {},
        store_=store,
        message_=message,
        email_=ParsedEmail.from_row(message),
    )
    return dataclasses.replace(ctx, **fields)


def ended(step: steps.Step, ctx: JobContext) -> tuple[str, dict[str, Any]]:
    with pytest.raises(JobDone) as caught:
        step(ctx)
    return caught.value.outcome, caught.value.detail


def test_the_steps_run_in_the_documented_order() -> None:
    assert [s.__name__ for s in steps.STEPS] == [
        "load",
        "skip_inactive_store",
        "parse_email",
        "skip_marked",
        "validate_inbound",
        "skip_loops",
        "filter_spam",
        "cap_replies",
        "wait_for_credits",
        "read_email",
        "find_orders",
        "recall_thread",
        "select_knowledge",
        "find_products",
        "reserve_credit",
        "answer",
        "decide_hold",
        "save_reply",
        "deliver",
    ]


def test_load_skips_a_job_whose_message_is_gone() -> None:
    ctx = context(loaded=None)
    assert ended(steps.load, ctx) == ("skipped", {"reason": "message_gone"})


def test_load_fills_the_context_and_tags_events_with_the_message() -> None:
    ctx = context(loaded={"message": MESSAGE, "store": STORE, "recent_replies": 2})
    steps.load(ctx)
    assert ctx.message["id"] == "m1" and ctx.store["id"] == "s1"
    assert ctx.trace.message_id == "m1"


def test_load_resumes_a_reply_an_earlier_attempt_left_held() -> None:
    reply = {"id": "r1", "status": "held", "hold_reason": "complaint", "intent": "complaint"}
    ctx = context(loaded={"message": MESSAGE, "store": STORE, "reply": reply})
    outcome, detail = ended(steps.load, ctx)
    assert (outcome, detail["hold_reason"], detail["intent"]) == ("held", "complaint", "complaint")


def test_an_inactive_store_answers_nothing() -> None:
    ctx = context(store={**STORE, "active": False})
    assert ended(steps.skip_inactive_store, ctx) == ("skipped", {"reason": "store_inactive"})
    steps.skip_inactive_store(context())  # an active one goes on


def test_mail_marked_by_fetch_is_skipped_with_its_reason() -> None:
    ctx = context(message={**MESSAGE, "skip_reason": "oversized"})
    assert ended(steps.skip_marked, ctx) == ("skipped", {"reason": "oversized"})


def test_mail_from_the_store_itself_is_not_valid_inbound() -> None:
    ctx = context(message={**MESSAGE, "from_address": "Suporte@Loja.test"})
    assert ended(steps.validate_inbound, ctx) == ("skipped", {"reason": "own_address"})


def test_an_auto_reply_is_never_answered() -> None:
    message = {**MESSAGE, "headers": {"auto-submitted": "auto-replied"}}
    outcome, detail = ended(steps.skip_loops, context(message=message))
    assert outcome == "skipped" and detail["reason"] == "auto_submitted"


class HoldingDb(LoadingDb):
    """save_reply and wait_for_credits as the SQL answers them, recording the calls."""

    def __init__(self, credits_wait: str = "waiting") -> None:
        super().__init__(None)
        self.saved: list[dict[str, Any]] = []
        self.waits: list[tuple[str, str, int]] = []
        self.credits_wait = credits_wait

    def save_reply(self, job_id: str, message_id: str, reply: Mapping[str, Any]) -> Any:
        self.saved.append(dict(reply))
        status = "held" if reply["hold"] else "drafted"
        return {"id": "r1", **reply, "status": status}

    def wait_for_credits(self, job_id: str, worker_id: str, wait_seconds: int) -> str:
        self.waits.append((job_id, worker_id, wait_seconds))
        return self.credits_wait


JOB_UUID = "0190f0f0-0000-7000-8000-000000000001"  # a reply's Message-ID is built from it


def with_db(ctx: JobContext, db: HoldingDb) -> JobContext:
    ctx.services.db = cast(Database, db)
    return ctx


def test_the_reply_cap_counts_recent_replies_to_the_customer() -> None:
    steps.cap_replies(context(loaded={"recent_replies": 2}))
    db = HoldingDb()
    capped = with_db(context(loaded={"recent_replies": 3}, job_id=JOB_UUID), db)
    outcome, detail = ended(steps.cap_replies, capped)
    assert outcome == "held" and detail["hold_reason"] == "reply_cap"


def test_a_customer_over_the_cap_waits_for_a_person_without_a_model_draft() -> None:
    db = HoldingDb()
    ctx = with_db(context(loaded={"recent_replies": 3}, job_id=JOB_UUID), db)
    ended(steps.cap_replies, ctx)
    [reply] = db.saved
    assert reply["hold"] is True and reply["hold_reason"] == "reply_cap"
    assert reply["body_text"] == "" and reply["model"] is None  # no model was asked
    assert reply["to_address"] == "ana@example.com"
    assert reply["in_reply_to"] == "<q1@example.com>"
    assert [e["event_type"] for e in ctx.trace.events] == ["process.over_cap"]


def test_a_store_with_credits_goes_on_to_the_model() -> None:
    db = HoldingDb()
    ctx = with_db(context(store={**STORE, "credits": 1}), db)
    steps.wait_for_credits(ctx)
    assert db.waits == [] and ctx.settled is None


def test_a_store_without_credits_parks_the_email_before_any_paid_call() -> None:
    db = HoldingDb()
    ctx = with_db(context(store={**STORE, "credits": 0}), db)
    steps.wait_for_credits(ctx)
    assert db.waits == [("j1", "w1", steps.CREDIT_WAIT_SECONDS)]
    assert ctx.settled is not None and ctx.settled["outcome"] == "waiting_for_credits"
    assert [e["event_type"] for e in ctx.trace.events] == ["process.waiting_for_credits"]


def test_credits_that_arrived_meanwhile_let_the_email_go_on() -> None:
    db = HoldingDb(credits_wait="has_credits")
    ctx = with_db(context(store={**STORE, "credits": 0}), db)
    steps.wait_for_credits(ctx)
    assert len(db.waits) == 1 and ctx.settled is None


def test_mail_that_passes_the_spam_filter_is_recorded_as_validated() -> None:
    ctx = context()
    steps.filter_spam(ctx)
    assert [e["event_type"] for e in ctx.trace.events] == ["process.validated"]


def test_order_numbers_come_from_the_text_before_any_model_call() -> None:
    ctx = context(message={**MESSAGE, "subject": "Pedido 2002", "body_text": "E o #1001?"})
    steps.read_email(ctx)
    assert ctx.order_numbers == ["2002", "1001"]
    assert ctx.facts.sender == "ana@example.com"


class RecordingShop:
    """An OrderLookup with one of the sender's orders and one of someone else's."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.orders = [
            OrderFacts("#1001", None, "ana@example.com", None, "PAID", "FULFILLED"),
            OrderFacts("#2002", None, "john@example.com", None, "PAID", "FULFILLED"),
        ]

    def order_by_number(self, number: str) -> OrderFacts | None:
        self.calls.append(f"number:{number}")
        return next((o for o in self.orders if o.name == f"#{number}"), None)

    def recent_orders_for_email(self, email: str, limit: int = 5) -> list[OrderFacts]:
        self.calls.append(f"email:{email}")
        return [o for o in self.orders if o.email == email][:limit]


def test_orders_are_looked_up_for_any_email_before_the_model_is_asked() -> None:
    # "Is the jacket I bought machine-washable?" names no order and no order intent: the one
    # model call still needs the sender's own orders in front of it.
    shop = RecordingShop()
    question = {**MESSAGE, "subject": "Lavagem", "body_text": "Posso lavar a jaqueta na máquina?"}
    ctx = context(store={**STORE, "shopify_domain": "loja.myshopify.com"}, message=question)
    ctx.services.shop_for = lambda store, secrets: shop
    steps.read_email(ctx)
    steps.find_orders(ctx)
    assert shop.calls == ["email:ana@example.com"]
    assert [o.name for o in ctx.orders] == ["#1001"]


def test_someone_elses_mentioned_order_never_reaches_the_context() -> None:
    shop = RecordingShop()
    probe = {**MESSAGE, "subject": "Pedido #2002", "body_text": "Cadê o pedido #2002?"}
    ctx = context(store={**STORE, "shopify_domain": "loja.myshopify.com"}, message=probe)
    ctx.services.shop_for = lambda store, secrets: shop
    steps.read_email(ctx)
    steps.find_orders(ctx)
    assert shop.calls == ["number:2002", "email:ana@example.com"]
    assert [o.name for o in ctx.orders] == ["#1001"]


def test_one_call_gives_classification_and_draft_and_records_its_tokens() -> None:
    ctx = context()
    steps.read_email(ctx)
    steps.answer(ctx)
    assert ctx.classification.intent == "order_status"
    assert ctx.draft.body_text
    usage, classified = ctx.trace.events
    assert usage["event_type"] == "process.model_usage"
    assert usage["detail"] == {"model": "offline-responder", **ModelUsage().as_event()}
    assert classified["event_type"] == "process.classified"


def test_spam_found_by_the_model_gives_the_credit_back_and_writes_no_reply() -> None:
    spam = {**MESSAGE, "subject": "Ganhe dinheiro fácil", "body_text": "Cassino online, bitcoin!"}
    ctx = context(message=spam)
    steps.read_email(ctx)
    outcome, detail = ended(steps.answer, ctx)
    assert (outcome, detail["reasons"]) == ("spam", ["classifier"])
    assert cast(LoadingDb, ctx.db).released == [("s1", "j1", "spam")]
    assert ctx.draft_ is None


def test_the_hold_decision_is_recorded_with_the_draft() -> None:
    classification = Classification(
        intent="complaint", language="pt-BR", sentiment="negative", needs_human=False, confidence=1
    )
    draft = Draft(body_text="...", language="pt-BR", model="offline")
    ctx = context(classification_=classification, draft_=draft)
    steps.decide_hold(ctx)
    assert ctx.hold == "complaint"
    [event] = ctx.trace.events
    assert event["event_type"] == "process.drafted" and event["detail"]["hold"] == "complaint"


def test_an_automatic_reply_that_promises_a_persons_follow_up_goes_to_a_person() -> None:
    classification = Classification(
        intent="other", language="en", sentiment="neutral", needs_human=False, confidence=0.9
    )
    promising = Draft(body_text="Our team will review it and reply soon.", language="en",
                      model="m")
    ctx = context(classification_=classification, draft_=promising)
    steps.decide_hold(ctx)
    assert ctx.hold == "follow_up_promised"
    plain = Draft(body_text="Your order #1001 ships today.", language="en", model="m")
    ctx = context(classification_=classification, draft_=plain)
    steps.decide_hold(ctx)
    assert ctx.hold is None


@pytest.mark.parametrize(
    ("store", "unauthenticated", "handoff"),
    [
        (STORE, None, False),
        ({**STORE, "reply_mode": "draft_only"}, None, True),
        (STORE, "dmarc=fail", True),
    ],
)
def test_the_model_is_told_whether_a_person_will_read_the_conversation(
    store: Mapping[str, Any],
    unauthenticated: str | None,
    handoff: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Known before the one call: the store's mode and the sender's authentication. A hold the
    # model's own reading brings comes with needs_human in the same answer (the prompt's rule).
    seen: list[bool] = []
    monkeypatch.setattr(steps, "guarded", lambda breakers, service, call: call())

    class Recording:
        model = "m"

        def answer(self, email: Any, reply_context: Any) -> Answer:
            seen.append(reply_context.handoff)
            classification = Classification(
                intent="order_status", language="en", sentiment="neutral", needs_human=False,
                confidence=0.9,
            )
            return Answer(classification, Draft(body_text="ok", language="en", model="m"))

    ctx = context(store=store, facts_=EmailFacts("ana@example.com", "s", "b"))
    ctx.unauthenticated = unauthenticated
    ctx.services.responder = cast(Any, Recording())
    steps.answer(ctx)
    assert seen == [handoff]


def test_a_step_that_reads_what_no_earlier_step_filled_in_says_so() -> None:
    with pytest.raises(RuntimeError, match="the draft is not known yet"):
        steps.decide_hold(context())


def test_the_handler_completes_an_early_end_and_records_its_event() -> None:
    def skip(ctx: JobContext) -> None:
        raise JobDone("skipped", reason="store_inactive")

    job = {"id": "j1", "job_type": "process_email"}
    handler = EmailHandler(context().services, steps=(skip,))
    trace = JobTrace(job)
    outcome = handler.handle(JobRun(job=job, worker_id="w1", trace=trace))
    assert isinstance(outcome, Complete)
    assert outcome.summary["outcome"] == "skipped"
    assert outcome.summary["reason"] == "store_inactive"
    assert [e["event_type"] for e in trace.events] == ["process.skipped"]


def test_recall_thread_strips_quotes_and_keeps_the_order_newest_last() -> None:
    loaded = {
        "thread": [
            {
                "author": "customer",
                "at": "2026-11-30T10:00:00Z",
                "text": "Quero trocar a camiseta.",
            },
            {
                "author": "store",
                "at": "2026-11-30T11:00:00Z",
                "text": "Olá! Pode trocar em até 30 dias.\n\nEquipe Loja",
            },
            {"author": "someone", "at": None, "text": "not a thread message"},
        ]
    }
    ctx = context(loaded=loaded)
    steps.recall_thread(ctx)
    assert [(m.author, m.text.splitlines()[0]) for m in ctx.thread] == [
        ("customer", "Quero trocar a camiseta."),
        ("store", "Olá! Pode trocar em até 30 dias."),
    ]


def test_select_knowledge_picks_the_entries_the_email_needs_and_records_them() -> None:
    loaded = {
        "knowledge": [
            {"topic": "returns", "title": "Trocas", "body": "Trocas em até 30 dias."},
            {"topic": "payment", "title": "Pagamento", "body": "Pix e cartão."},
            {"topic": "faq", "title": "Presente", "body": "Embalagem para presente."},
        ]
    }
    ctx = context(loaded=loaded, facts_=steps.EmailFacts("a@x.test", "Troca", "Posso trocar?"))
    steps.select_knowledge(ctx)
    assert [entry.title for entry in ctx.knowledge] == ["Trocas"]
    [event] = [e for e in ctx.trace.events if e["event_type"] == "process.context"]
    assert event["detail"] == {"thread": 0, "knowledge": ["Trocas"], "knowledge_available": 3}


def test_a_store_without_knowledge_gives_none() -> None:
    ctx = context(loaded={}, facts_=steps.EmailFacts("a@x.test", "Troca", "Posso trocar?"))
    steps.select_knowledge(ctx)
    assert ctx.knowledge == []


# -- find_products -------------------------------------------------------------------------------

SCARF = ProductFacts(
    title="Wool Scarf",
    url="https://shop.example/products/wool-scarf",
    available=True,
    price="129.00 BRL",
    variants=[VariantFacts("Navy", "129.00 BRL", True)],
)


class CatalogueDb(LoadingDb):
    """Breakers always closed, recorded; the store's secrets."""

    def __init__(self) -> None:
        super().__init__(None)
        self.recorded: list[tuple[str, bool]] = []

    def circuit_allow(self, service: str) -> bool:
        return True

    def circuit_record(self, service: str, success: bool) -> str:
        self.recorded.append((service, success))
        return "closed"

    def get_store_secrets(self, store_id: str) -> dict[str, Any]:
        return {"shopify_token": "t"}


class Catalogue:
    """An OrderLookup whose catalogue search answers `found`, recording the searches."""

    def __init__(self, *found: ProductFacts, error: Exception | None = None) -> None:
        self.found, self.error = list(found), error
        self.searches: list[str] = []

    def search_products(self, search: str, limit: int = 5) -> list[ProductFacts]:
        self.searches.append(search)
        if self.error is not None:
            raise self.error
        return self.found[:limit]


def catalogue_context(shop: Catalogue, message: Mapping[str, Any], **store: Any) -> JobContext:
    ctx = context(store={**STORE, "shopify_domain": "loja.myshopify.com", **store}, message=message)
    db = CatalogueDb()
    ctx.services = Services(
        db=cast(Database, db),
        responder=None,  # type: ignore[arg-type]
        mail=None,  # type: ignore[arg-type]
        shop_for=lambda store, secrets: cast(Any, shop),
    )
    return ctx


PRODUCT_MESSAGE = {
    **MESSAGE,
    "subject": "Is the wool scarf available in navy?",
    "body_text": "Hello, do you have the wool scarf in navy?",
}


def test_a_product_question_fills_the_products_from_the_catalogue_search() -> None:
    shop = Catalogue(SCARF)
    ctx = catalogue_context(shop, PRODUCT_MESSAGE)
    steps.find_products(ctx)
    assert ctx.products == [SCARF]
    [search] = shop.searches
    assert search.startswith("status:active AND (") and "scarf*" in search and "wool*" in search
    [event] = ctx.trace.events
    assert event["event_type"] == "process.product_lookup"
    assert event["detail"]["found"] == 1 and event["detail"]["products"] == ["Wool Scarf"]
    db = cast(CatalogueDb, ctx.services.db)
    assert db.recorded == [("shopify:s1", True)]


def test_an_order_question_costs_no_catalogue_search() -> None:
    shop = Catalogue(SCARF)
    ctx = catalogue_context(shop, MESSAGE)  # "quando chega o pedido #1001?"
    steps.find_products(ctx)
    assert ctx.products == [] and shop.searches == [] and ctx.trace.events == []


def test_a_store_without_a_shop_searches_nothing() -> None:
    shop = Catalogue(SCARF)
    ctx = catalogue_context(shop, PRODUCT_MESSAGE, shopify_domain=None)
    steps.find_products(ctx)
    assert ctx.products == [] and shop.searches == []


def test_a_failed_catalogue_search_fails_the_job_and_counts_against_the_shops_breaker() -> None:
    shop = Catalogue(error=TransientError("request timed out", service="shopify"))
    ctx = catalogue_context(shop, PRODUCT_MESSAGE)
    with pytest.raises(TransientError):
        steps.find_products(ctx)
    assert cast(CatalogueDb, ctx.services.db).recorded == [("shopify:s1", False)]
    assert ctx.products == []


def test_the_search_reads_the_customers_own_words_not_the_quoted_history() -> None:
    shop = Catalogue(SCARF)
    quoted = {
        **MESSAGE,
        "subject": "Re: Your message",
        "body_text": "Thanks, all clear!\n\n> Wool Scarf - R$ 129,00 - available\n> Price?",
    }
    ctx = catalogue_context(shop, quoted)
    ctx.facts_ = EmailFacts(sender="ana@example.com", subject="Re: Your message", body="Thanks!")
    steps.find_products(ctx)
    assert shop.searches == [] and ctx.products == []
