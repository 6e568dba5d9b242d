"""The email pipeline as named steps over one JobContext, run in the order of STEPS.

Each step reads what earlier steps put in the context, adds its own part, and either lets the
job go on or ends it (JobDone, or `ctx.settled` once delivered). A new step is one function
here, its place in STEPS, and its unit test. Every decision that can be pure lives in its own
module (`validate`, `loops`, `spam`, `privacy`, `prompts`); every outside service is reached
through ctx.services.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from worker import (
    compose,
    knowledge,
    loops,
    mime,
    offline,
    privacy,
    product_query,
    promises,
    quotes,
    reply_guard,
    sender_auth,
    spam,
    thread,
    validate,
)
from worker.errors import CircuitOpenError
from worker.pipeline import delivery
from worker.pipeline.context import JobContext, JobDone, OrderLookup
from worker.queue.breakers import guarded
from worker.queue.trace import finish
from worker.responder import (
    Answer,
    Classification,
    EmailFacts,
    OrderFacts,
    ReplyContext,
    StoreVoice,
)

# Intents that always go to a person as a draft (angry customers deserve a human).
HUMAN_INTENTS = frozenset({"complaint"})

Step = Callable[[JobContext], None]
RATE_LIMIT_RETRY_SECONDS = 600  # a store past its hourly reply rate is asked again this late
# An email waiting for credits is woken by the top-up (wake_credit_waiters); this is only how
# often it looks again by itself, so a waiting backlog costs one claim per email per period.
CREDIT_WAIT_SECONDS = 6 * 3600
OVER_CAP = "reply_cap"  # the hold reason of a customer past the reply cap


# --- pure decisions the steps use --------------------------------------------------------------


def store_addresses(store: Mapping[str, Any]) -> list[str]:
    """Every address that belongs to the store (its own mail is never answered)."""
    addresses = [str(store.get("support_email") or "")]
    addresses += [str(a) for a in store.get("extra_addresses") or []]
    return [a.lower() for a in addresses if a]


def hold_reason(
    classification: Classification,
    draft_hold: str | None,
    store: Mapping[str, Any],
    min_confidence: float,
) -> str | None:
    """Why a reply must wait for a person instead of being sent, or None to send it."""
    if store.get("reply_mode") == "draft_only":
        return "draft_only"
    if classification.needs_human:
        return "needs_human"
    if classification.intent in HUMAN_INTENTS:
        return classification.intent
    if classification.confidence < min_confidence:
        return "low_confidence"
    return draft_hold


def store_domains(store: Mapping[str, Any]) -> list[str]:
    """The store's own domains: its addresses' and its shop's."""
    domains = [a.rpartition("@")[2] for a in store_addresses(store)]
    return [*domains, *([str(store["shopify_domain"])] if store.get("shopify_domain") else [])]


def rate_limited(ctx: JobContext) -> CircuitOpenError:
    """The store answered its hourly rate: the job waits, without spending an attempt."""
    return CircuitOpenError(f"reply_rate:{ctx.store['id']}", retry_after=RATE_LIMIT_RETRY_SECONDS)


def wants_orders(order_numbers: list[str], sender: str, reply_to: str | None) -> bool:
    """Whether to look up orders before the model call.

    Every email that names an order, or whose reply goes back to the sender: their recent
    orders are what "where is my parcel?" needs. A reply the customer asked to go to another
    address (Reply-To) can carry no order facts (privacy.reply_recipient), so without a named
    order there is nothing to look up for it, and the customer gets the reply where they asked.
    """
    if order_numbers:
        return True
    to_address, _ = privacy.reply_recipient(sender, reply_to, False)
    return privacy.same_address(to_address, sender)


def lookup_orders(shop: OrderLookup, sender: str, order_numbers: list[str]) -> list[OrderFacts]:
    """Orders the customer mentioned, else their recent ones; `privacy` filters them after.

    The fallback to recent orders depends on whether a mentioned order is the sender's own, not
    on whether it exists: otherwise someone else's number (no fallback, a neutral reply) and an
    unknown one (fallback, the sender's orders) would get different answers, which tells a
    prober that the number exists.
    """
    found: list[OrderFacts] = []
    for number in order_numbers[:3]:
        order = shop.order_by_number(number)
        if order is not None:
            found.append(order)
    if not any(privacy.order_belongs_to(order, sender) for order in found):
        found += shop.recent_orders_for_email(sender, limit=5)
    return found


# --- the steps, in order -----------------------------------------------------------------------


def load(ctx: JobContext) -> None:
    """Read the job's message, store and reply; a reply from an earlier attempt is resumed."""
    with ctx.trace.timed("load"):
        loaded = ctx.db.load_job_context(ctx.job_id, ctx.options.reply_cap_window_hours)
    if loaded is None or not loaded.get("message") or not loaded.get("store"):
        # The message or its store was deleted after the job was queued: nothing to answer.
        raise JobDone("skipped", reason="message_gone")
    ctx.loaded, ctx.message_, ctx.store_ = loaded, loaded["message"], loaded["store"]
    ctx.trace.message_id = str(ctx.message["id"])
    if loaded.get("reply"):
        ctx.reply = loaded["reply"]
        delivery.resume_reply(ctx)


def skip_inactive_store(ctx: JobContext) -> None:
    """Deactivating a store stops its automation at once, also for mail already queued."""
    if ctx.store.get("active") is False:
        raise JobDone("skipped", reason="store_inactive")


def parse_email(ctx: JobContext) -> None:
    """The stored message as a ParsedEmail, for the pure checks that follow."""
    ctx.email_ = mime.ParsedEmail.from_row(ctx.message)


def skip_marked(ctx: JobContext) -> None:
    """Mail that fetch already marked as not to be answered (skip_reason)."""
    if ctx.message.get("skip_reason"):
        raise JobDone("skipped", reason=str(ctx.message["skip_reason"]))


def validate_inbound(ctx: JobContext) -> None:
    """An unusable sender, our own address, too large or empty: skipped."""
    reason = validate.validate_inbound(
        ctx.email,
        store_addresses=store_addresses(ctx.store),
        max_bytes=ctx.options.max_message_bytes,
    )
    if reason:
        raise JobDone("skipped", reason=reason)


def skip_loops(ctx: JobContext) -> None:
    """Auto-replies, bounces, lists and mail loops are never answered."""
    reason = loops.auto_reply_reason(ctx.email, store_addresses=store_addresses(ctx.store))
    if reason:
        raise JobDone("skipped", reason=reason)


def cap_replies(ctx: JobContext) -> None:
    """At most reply_cap_per_customer automatic replies to one customer per window, then a
    person decides (hold_over_cap); a store past its hourly reply rate waits, before any model
    call (reserve_credit checks both atomically)."""
    recent = int(ctx.loaded.get("recent_replies") or 0)
    if loops.reply_cap_reached(recent, ctx.options.reply_cap_per_customer):
        hold_over_cap(ctx)
    per_hour = ctx.options.store_replies_per_hour
    if per_hour is not None and int(ctx.loaded.get("store_replies_last_hour") or 0) >= per_hour:
        raise rate_limited(ctx)


def hold_over_cap(ctx: JobContext) -> None:
    """The customer had their automatic replies: the email waits for a person, without a draft.

    No model call is made for it: a sender past the cap may be a loop or an abuser, and each
    draft would cost a paid call; the person writes the reply in the console (or discards it).
    The held reply is not charged; sending it is (console_send_reply).
    """
    email = ctx.email
    if not ctx.to_address:
        ctx.to_address, _ = privacy.reply_recipient(email.from_address or "", email.reply_to, False)
    ctx.hold = OVER_CAP
    intent = ctx.classification_.intent if ctx.classification_ else None
    ctx.trace.event("process.over_cap", intent=intent)
    ctx.reply = ctx.db.save_reply(
        ctx.job_id,
        str(ctx.message["id"]),
        reply_row(ctx, body_text="", intent=intent, language=None, model=None),
    )
    delivery.resume_reply(ctx)


def park_until_credits(ctx: JobContext) -> bool:
    """Defer the job until its store has credits (wait_for_credits); False if it has them now.

    The SQL defers the job without spending an attempt, marks the conversation as waiting for
    credits and tells the store's people; a top-up makes the job due again.
    """
    state = ctx.db.wait_for_credits(ctx.job_id, ctx.run.worker_id, CREDIT_WAIT_SECONDS)
    if state == "has_credits":
        return False
    ctx.trace.event("process.waiting_for_credits", state=state)
    ctx.settled = finish(
        ctx.trace, "waiting_for_credits" if state == "waiting" else "lease_lost", state=state
    )
    return True


def wait_for_credits(ctx: JobContext) -> None:
    """A store without credits makes no paid call (Claude, Shopify): the email waits instead."""
    if int(ctx.store.get("credits") or 0) < 1:
        park_until_credits(ctx)


def filter_spam(ctx: JobContext) -> None:
    """Heuristic spam never reaches the model; what passes is a valid email to answer."""
    verdict = spam.spam_verdict(ctx.email)
    if verdict.is_spam:
        raise JobDone("spam", reasons=list(verdict.reasons), score=verdict.score)
    ctx.trace.event("process.validated")


def read_email(ctx: JobContext) -> None:
    """The email as the model may see it, and the order numbers it mentions.

    The numbers come from the text (offline.find_order_numbers), not from the model, so every
    fact the reply may use is looked up before the one model call.
    """
    email = ctx.email
    ctx.facts_ = EmailFacts(
        sender=email.from_address or "",
        subject=email.subject or "",
        # The model reads what the customer wrote now; the history comes as the thread. A body
        # that is nothing but a quote (a bare forward) is kept whole.
        body=quotes.own_text(email.body_text) or email.body_text or "",
    )
    ctx.order_numbers = offline.find_order_numbers(f"{ctx.facts.subject}\n{ctx.facts.body}")


def find_orders(ctx: JobContext) -> None:
    """The reply's recipient and the orders it may mention (privacy rules applied).

    The lookup comes before the model call, for every email that wants it (wants_orders): the
    orders it names, else the sender's recent ones ("where is my parcel?" names none). A sender
    the receiving server failed to authenticate learns nothing about orders, and what we would
    say is held for a person (worker/sender_auth.py).
    """
    email, store, services = ctx.email, ctx.store, ctx.services
    sender = email.from_address or ""
    orders: list[OrderFacts] = []
    ctx.unauthenticated = sender_auth.failure(email.headers)
    if ctx.unauthenticated:
        ctx.trace.event("process.sender_unauthenticated", verdict=ctx.unauthenticated)
        ctx.to_address, ctx.orders = sender, []
        return
    if store.get("shopify_domain") and wants_orders(ctx.order_numbers, sender, email.reply_to):
        shop = services.shop_for(store, services.secrets(str(store["id"])))
        if shop is not None:
            service = f"shopify:{store['id']}"
            numbers = ctx.order_numbers
            with ctx.trace.timed("shopify"):
                found = guarded(
                    services.breakers, service, lambda: lookup_orders(shop, sender, numbers)
                )
            orders = privacy.disclosable_orders(sender, found)
            ctx.trace.event("process.shopify_lookup", found=len(found), disclosed=len(orders))
    to_address, include_orders = privacy.reply_recipient(sender, email.reply_to, bool(orders))
    ctx.to_address, ctx.orders = to_address, orders if include_orders else []


def recall_thread(ctx: JobContext) -> None:
    """The conversation's earlier messages and our replies, stripped and trimmed (worker.thread).

    Loaded with the job (load_job_context), so this costs no round trip.
    """
    ctx.thread = thread.thread_messages(ctx.loaded.get("thread") or [])


def select_knowledge(ctx: JobContext) -> None:
    """The store's knowledge entries this email needs (worker.knowledge), from its own words.

    The store's entries came with the job (load_job_context); the pick depends only on the
    email's text, so it can run before any model call.
    """
    entries = knowledge.entries_from_rows(ctx.loaded.get("knowledge") or [])
    ctx.knowledge = knowledge.select(entries, ctx.facts.subject, ctx.facts.body)
    ctx.trace.event(
        "process.context",
        thread=len(ctx.thread),
        knowledge=[entry.title for entry in ctx.knowledge],
        knowledge_available=len(entries),
    )


def find_products(ctx: JobContext) -> None:
    """The catalogue products the email asks about (worker.product_query decides the search).

    Decided from the email's text, not the model's reading of it, so it can run before the one
    model call. Public data, the same for every sender: an unauthenticated sender's held draft
    gets them too.
    """
    store, services, email = ctx.store, ctx.services, ctx.email
    if not store.get("shopify_domain"):
        return
    # The customer's own words: the email facts' body when a step built them (without quoted
    # history, whose product lines would be searched again), else the stored text.
    body = ctx.facts_.body if ctx.facts_ is not None else email.body_text or ""
    search = product_query.search_for(email.subject or "", body)
    if search is None:
        return
    shop = services.shop_for(store, services.secrets(str(store["id"])))
    if shop is None:
        return
    with ctx.trace.timed("shopify_products"):
        ctx.products = guarded(
            services.breakers, f"shopify:{store['id']}", lambda: shop.search_products(search)
        )
    ctx.trace.event(
        "process.product_lookup",
        search=search,
        found=len(ctx.products),
        products=[p.title for p in ctx.products],
    )


def reserve_credit(ctx: JobContext) -> None:
    """One credit per answered email, taken before the model call (refunded if never sent, and
    when the reply is held for a person: save_reply). Out of credits: the email waits.

    The reply cap is checked again here, where the credit is reserved, atomically per store:
    cap_replies is only a cheap early exit, and concurrent jobs of one sender all pass it.
    """
    options = ctx.options
    for _ in range(2):  # again only when the credits came back between the two calls
        ctx.credit = ctx.db.reserve_reply(
            str(ctx.store["id"]),
            ctx.job_id,
            ctx.to_address,
            cap=options.reply_cap_per_customer,
            window_hours=options.reply_cap_window_hours,
            per_hour=options.store_replies_per_hour,
        )
        if ctx.credit != "no_credits" or park_until_credits(ctx):
            break
    else:
        # Credits came and went twice within this step: try the whole job again shortly.
        raise CircuitOpenError(f"credits:{ctx.store['id']}", retry_after=5)
    if ctx.credit == "reply_cap":
        hold_over_cap(ctx)
    if ctx.credit == "rate_limited":
        raise rate_limited(ctx)


def answer(ctx: JobContext) -> None:
    """One model call: the classification and the reply in the store's voice, grounded in the
    reply context (worker.responder); the tokens it cost go into a process.model_usage event.

    Spam the heuristics missed is only known now, after the credit was reserved: the credit
    goes back and no reply is written.
    """
    services, facts = ctx.services, ctx.facts
    context = ReplyContext(
        store=StoreVoice.from_store_row(ctx.store),
        orders=ctx.orders,
        thread=ctx.thread,
        knowledge=ctx.knowledge,
        products=ctx.products,
        handoff=held_before_answering(ctx) is not None,
    )
    with ctx.trace.timed("answer"):
        result: Answer = guarded(
            services.breakers, "claude", lambda: services.responder.answer(facts, context)
        )
    classification = ctx.classification_ = result.classification
    ctx.trace.event(
        "process.model_usage",
        model=services.responder.model,
        **result.usage.as_event(),
    )
    ctx.trace.event(
        "process.classified",
        intent=classification.intent,
        language=classification.language,
        sentiment=classification.sentiment,
        needs_human=classification.needs_human,
        confidence=classification.confidence,
        model=services.responder.model,
    )
    if classification.is_spam or result.draft is None:
        ctx.db.release_credit(str(ctx.store["id"]), ctx.job_id, "spam")
        raise JobDone("spam", reasons=["classifier"], intent=classification.intent)
    ctx.draft_ = result.draft


def held_before_answering(ctx: JobContext) -> str | None:
    """The hold the store and the sender already decide before the model call (a draft-only
    store, a sender the receiving server failed to authenticate): the model is told whether a
    person will read the conversation (ReplyContext.handoff). A hold the model's own reading
    brings (needs_human, a complaint, low confidence) comes with its answer, and the prompt lets
    it promise a person's follow-up only together with needs_human."""
    if ctx.store.get("reply_mode") == "draft_only":
        return "draft_only"
    return sender_auth.UNAUTHENTICATED if ctx.unauthenticated else None


def decide_hold(ctx: JobContext) -> None:
    """Whether the reply waits for a person (recorded with the draft's event)."""
    reply_draft, store = ctx.draft, ctx.store
    ctx.hold = hold_reason(
        ctx.classification, reply_draft.hold_reason, store, ctx.options.min_confidence
    )
    if ctx.hold is None and ctx.unauthenticated:
        ctx.hold = sender_auth.UNAUTHENTICATED
    if ctx.hold is None and promises.promises_follow_up(reply_draft.body_text):
        # Nobody is queued behind an automatic reply: a reply that says a person will follow up
        # goes to a person, so that what it says is true.
        ctx.hold = promises.FOLLOW_UP_PROMISED
    if ctx.hold is None:
        # Whatever the model was talked into, nothing it wrote beyond the facts goes out unseen.
        ctx.hold = reply_guard.check_reply(
            reply_draft.body_text,
            store_domains=store_domains(store),
            orders=ctx.orders,
            # The store's own words: its name, signature and the knowledge the reply was given
            # (a shipping price or phone number from there is the store's, not an injection).
            store_text=" ".join(
                [
                    str(store.get("name") or ""),
                    str(store.get("reply_signature") or ""),
                    *(entry.body for entry in ctx.knowledge),
                ]
            ),
            products=ctx.products,
        )
    ctx.trace.event(
        "process.drafted", language=reply_draft.language, model=reply_draft.model, hold=ctx.hold
    )


def save_reply(ctx: JobContext) -> None:
    """The reply row (drafted, or held), with the threading every attempt sends identically."""
    reply_draft = ctx.draft
    ctx.reply = ctx.db.save_reply(
        ctx.job_id,
        str(ctx.message["id"]),
        reply_row(
            ctx,
            body_text=reply_draft.body_text,
            intent=ctx.classification.intent,
            language=reply_draft.language,
            model=reply_draft.model,
        ),
    )


def reply_row(
    ctx: JobContext, *, body_text: str, intent: str | None, language: str | None, model: str | None
) -> dict[str, Any]:
    """What save_reply stores: the text, the hold, and the threading every attempt sends."""
    email, store = ctx.email, ctx.store
    domain = str(store["support_email"]).rpartition("@")[2] or "localhost"
    return {
        "to_address": ctx.to_address,
        "subject": reply_guard.safe_subject(email.subject, store.get("name")),
        "body_text": body_text,
        "smtp_message_id": compose.reply_message_id(ctx.job_id, domain),
        "in_reply_to": email.message_id,
        "references": compose.thread_references(email.references, email.message_id),
        "hold": ctx.hold is not None,
        "hold_reason": ctx.hold,
        "intent": intent,
        "language": language,
        "model": model,
    }


def deliver(ctx: JobContext) -> None:
    """Send the reply exactly once (worker.pipeline.delivery)."""
    delivery.resume_reply(ctx)


STEPS: tuple[Step, ...] = (
    load,
    skip_inactive_store,
    parse_email,
    skip_marked,
    validate_inbound,
    skip_loops,
    filter_spam,
    cap_replies,
    wait_for_credits,
    read_email,
    find_orders,
    recall_thread,
    select_knowledge,
    find_products,
    reserve_credit,
    answer,
    decide_hold,
    save_reply,
    deliver,
)
