"""The offline responder: deterministic keyword classification and templated replies (pt, en, es).

Used when no ANTHROPIC_API_KEY is configured (the local demo, tests, benchmarks). It is clearly
labelled: every reply it drafts records the model name 'offline-responder'. Like the Claude
responder it states only the order and product facts it is given and never promises an action.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from worker.prompts import with_signature
from worker.responder import (
    HOLD_NEEDS_HUMAN,
    Answer,
    Classification,
    Draft,
    EmailFacts,
    Intent,
    KnowledgeEntry,
    OrderFacts,
    ProductFacts,
    ReplyContext,
    Sentiment,
    reply_language,
)

MODEL_NAME = "offline-responder"

# Confidence the rules claim: one clear family of keywords, several competing ones, or none.
CONFIDENCE_CLEAR = 0.85
CONFIDENCE_MIXED = 0.7
CONFIDENCE_NONE = 0.4
CONFIDENCE_SPAM = 0.9

# Keywords are matched on lower-cased, accent-stripped text, as whole words or phrases.
# The first intent (in this order) whose keywords appear wins: a refund request that also
# mentions tracking is a refund request.
# fmt: off
INTENT_KEYWORDS: tuple[tuple[Intent, tuple[str, ...]], ...] = (
    (
        "spam",
        (
            "viagra", "casino", "bitcoin", "crypto", "seo services", "backlinks",
            "you have won", "lottery", "click here to claim", "ganhe dinheiro", "renda extra",
            "investment opportunity", "guest post", "increase your traffic",
        ),
    ),
    (
        "cancellation",
        ("cancelar", "cancelamento", "cancele", "cancela", "cancel", "cancellation", "cancelled"),
    ),
    (
        "return_refund",
        (
            "reembolso", "devolucao", "devolver", "estorno", "estornar", "troca", "trocar",
            "dinheiro de volta", "refund", "return", "returns", "exchange", "money back",
            "devolucion", "cambiar", "cambio",
        ),
    ),
    (
        "shipping_delay",
        (
            "atraso", "atrasado", "atrasada", "nao chegou", "ainda nao recebi", "demorando",
            "demora", "prazo", "late", "delay", "delayed", "hasn't arrived", "has not arrived",
            "not arrived", "still waiting", "still hasn't", "never arrived", "overdue",
            "retraso", "retrasado", "no ha llegado", "no me ha llegado", "todavia no",
        ),
    ),
    (
        "order_status",
        (
            "rastreio", "rastrear", "rastreamento", "codigo de rastreio", "status do pedido",
            "onde esta", "cade", "entrega", "enviado", "quando chega", "meu pedido",
            "where is my order", "tracking", "track", "shipped", "order status", "my order",
            "delivery", "when will", "donde esta", "mi pedido", "seguimiento", "cuando llega",
        ),
    ),
    (
        "complaint",
        (
            "reclamacao", "pessimo", "horrivel", "absurdo", "decepcionado", "decepcionada",
            "quebrado", "defeito", "danificado", "reclame aqui", "procon", "terrible", "awful",
            "worst", "unacceptable", "disappointed", "broken", "defective", "damaged",
            "queja", "roto", "rota", "defectuoso", "inaceptable",
        ),
    ),
    (
        "product_question",
        (
            "tamanho", "estoque", "voces tem", "tem disponivel", "disponivel", "material",
            "medidas", "cor", "size", "in stock", "do you have", "available", "colour", "color",
            "does it", "which model", "quanto custa", "preco", "how much", "price",
            "tienen", "talla", "disponible", "precio", "cuanto cuesta",
        ),
    ),
)

NEEDS_HUMAN_KEYWORDS = (
    "atendente", "humano", "pessoa real", "falar com alguem", "gerente", "supervisor",
    "advogado", "procon", "reclame aqui", "processo judicial", "processar", "chargeback",
    "human", "real person",
    "speak to someone", "talk to someone", "manager", "lawyer", "legal action", "attorney",
)

NEGATIVE_WORDS = (
    "pessimo", "horrivel", "absurdo", "decepcionado", "decepcionada", "raiva", "irritado",
    "irritada", "nunca mais", "inaceitavel", "descaso", "terrible", "awful", "worst",
    "unacceptable", "disappointed", "angry", "furious", "ridiculous", "never again",
    "frustrated", "atraso", "atrasado", "late", "delayed", "broken", "quebrado", "defeito",
    "defective", "damaged",
)
POSITIVE_WORDS = (
    "obrigado", "obrigada", "adorei", "amei", "perfeito", "excelente", "otimo", "parabens",
    "thanks", "thank you", "love", "great", "perfect", "excellent", "awesome", "amazing",
)
# fmt: on

PT_MARKERS = frozenset(
    """nao sim pedido obrigado obrigada ola oi bom boa dia tarde noite meu minha esta estou voce
    voces quando entrega rastreio compra ainda chegou por favor produto quero gostaria de do da
    que com um uma para os as no na seu sua mas porque ja foi muito""".split()
)
EN_MARKERS = frozenset(
    """the my order is where hello hi thanks thank please when still not have was it you and to
    of for with this that but did has arrived would like your what can could""".split()
)
# Words Spanish has and Portuguese does not ("pedido", "de", "que" are both's).
ES_MARKERS = frozenset(
    """el los las del y en un una con mi mis su sus hola gracias donde cuando tienen tiene tengo
    quiero quisiera puedo usted ustedes muy pero hay todavia ya lo le les buenos buenas dias
    tardes noches saludos cual esta estoy llegado compre talla precio""".split()
)

ORDER_NUMBER_PATTERNS = (
    re.compile(r"#\s?(\d{3,10})\b"),
    re.compile(
        r"\b(?:pedido|encomenda|compra|order)\s*(?:n[o.]?\s*|numero\s*|number\s*|no\.\s*)?"
        r"[:#]?\s*(\d{3,10})\b"
    ),
)


def fold(text: str) -> str:
    """Lower-case and strip accents so 'Devolução' matches 'devolucao'."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _contains(folded: str, phrase: str) -> bool:
    return re.search(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", folded) is not None


def _matches(folded: str, phrases: Iterable[str]) -> int:
    return sum(1 for phrase in phrases if _contains(folded, phrase))


def detect_language(text: str, hint: str | None = None) -> str:
    """'pt-BR', 'es' or 'en' by counting common words; ties go to the hint, then to English."""
    folded = fold(text)
    words = re.findall(r"[a-z']+", folded)
    pt = sum(1 for w in words if w in PT_MARKERS and w not in ES_MARKERS)
    es = sum(1 for w in words if w in ES_MARKERS and w not in PT_MARKERS)
    en = sum(1 for w in words if w in EN_MARKERS)
    # Letters only one of the languages has are strong evidence even in a two-word email.
    pt += 2 * sum(1 for ch in text.lower() if ch in "ãõç")
    es += 2 * sum(1 for ch in text.lower() if ch in "ñ¿¡")
    best = max(pt, es, en)
    leaders = [lang for lang, count in (("pt-BR", pt), ("es", es), ("en", en)) if count == best]
    if len(leaders) == 1:
        return leaders[0]
    for lang in leaders:
        if hint and hint.lower().startswith(lang[:2]):
            return lang
    return "en" if "en" in leaders else leaders[0]


def find_order_numbers(text: str) -> list[str]:
    """Order numbers like '#1234', 'pedido 1234', 'order no. 1234' (digits only, in order)."""
    folded = fold(text)
    found: list[tuple[int, str]] = []
    for pattern in ORDER_NUMBER_PATTERNS:
        found.extend((m.start(1), m.group(1)) for m in pattern.finditer(folded))
    numbers: list[str] = []
    for _, number in sorted(found):
        if number not in numbers:
            numbers.append(number)
    return numbers


def classify_text(subject: str, body: str, language_hint: str | None = None) -> Classification:
    """The rule-based classification of one email (pure)."""
    text = f"{subject}\n{body}"
    folded = fold(text)
    matched = [intent for intent, words in INTENT_KEYWORDS if _matches(folded, words)]
    intent: Intent = matched[0] if matched else "other"
    is_spam = intent == "spam"

    if is_spam:
        confidence = CONFIDENCE_SPAM
    elif not matched:
        confidence = CONFIDENCE_NONE
    elif len(matched) == 1:
        confidence = CONFIDENCE_CLEAR
    else:
        confidence = CONFIDENCE_MIXED

    negative = _matches(folded, NEGATIVE_WORDS)
    positive = _matches(folded, POSITIVE_WORDS)
    sentiment: Sentiment = (
        "negative" if negative > positive else "positive" if positive > negative else "neutral"
    )
    needs_human = not is_spam and (
        intent == "complaint" or _matches(folded, NEEDS_HUMAN_KEYWORDS) > 0
    )
    return Classification(
        intent=intent,
        language=detect_language(text, language_hint),
        sentiment=sentiment,
        needs_human=needs_human,
        confidence=confidence,
        order_numbers=find_order_numbers(text),
        is_spam=is_spam,
    )


class OfflineResponder:
    """Rule-based Responder with the same contract as ClaudeResponder, no network."""

    @property
    def model(self) -> str:
        """Always 'offline-responder', so replies show they were not written by a model."""
        return MODEL_NAME

    def answer(self, email: EmailFacts, context: ReplyContext) -> Answer:
        """The classification and, unless spam, the templated reply (no tokens spent)."""
        classification = self.classify(email)
        if classification.is_spam:
            return Answer(classification, None)
        return Answer(classification, self.draft(email, classification, context))

    def classify(self, email: EmailFacts) -> Classification:
        """Keyword classification in Portuguese and English."""
        return classify_text(email.subject, email.body, email.language_hint)

    def draft(
        self,
        email: EmailFacts,
        classification: Classification,
        context: ReplyContext,
    ) -> Draft:
        """A templated reply in pt, en or es, stating only the given order and product facts."""
        store = context.store
        language = reply_language(classification, store)
        body = templated_body(
            classification,
            language,
            store.tone,
            orders=context.orders,
            products=context.products,
            knowledge=context.knowledge,
            handoff=context.handoff,
        )
        return Draft(
            body_text=with_signature(body, store),
            language=language,
            model=MODEL_NAME,
            hold_reason=HOLD_NEEDS_HUMAN if classification.needs_human else None,
        )


_TEXT = {
    "pt": {
        "greeting_formal": "Prezado(a) cliente,",
        "greeting": "Olá!",
        "thanks": "Obrigado por entrar em contato.",
        "orders_intro": "Estas são as informações do seu pedido:",
        "no_orders": (
            "Não conseguimos localizar um pedido com as informações desta mensagem. Por favor, "
            "responda a partir do e-mail usado na compra, informando o número do pedido "
            "(por exemplo, #1001), e nossa equipe vai verificar."
        ),
        "no_orders_auto": (
            "Não conseguimos localizar um pedido com as informações desta mensagem. Por favor, "
            "responda a partir do e-mail usado na compra, informando o número do pedido "
            "(por exemplo, #1001)."
        ),
        "delay": (
            "Sentimos muito pela demora. Se o prazo de entrega já passou, nossa equipe vai "
            "verificar com a transportadora e retornar."
        ),
        "delay_auto": (
            "Sentimos muito pela demora. Se o prazo de entrega já passou, responda a este "
            "e-mail para nos avisar."
        ),
        "return_refund": (
            "Recebemos sua solicitação de troca, devolução ou reembolso. Nossa equipe vai "
            "analisar o pedido e responder com os próximos passos."
        ),
        "cancellation": (
            "Recebemos seu pedido de cancelamento. Nossa equipe vai analisar e responder por "
            "e-mail; até lá, nenhuma alteração foi feita no pedido."
        ),
        "product_question": (
            "Recebemos sua pergunta sobre nossos produtos. Nossa equipe vai verificar os "
            "detalhes e responder em breve."
        ),
        "complaint": (
            "Sentimos muito pela sua experiência. Sua mensagem foi encaminhada à nossa equipe, "
            "que vai analisar e responder pessoalmente."
        ),
        "other": "Recebemos sua mensagem. Nossa equipe vai analisar e responder em breve.",
        "closing": "Se precisar de mais alguma coisa, é só responder a este e-mail.",
        "knowledge": "{title}:\n{text}",
        "order_line": "Pedido {name}",
        "placed": "feito em {date}",
        "payment": "Pagamento: {status}",
        "fulfillment": "Envio: {status}",
        "items": "Itens: {items}",
        "tracking": "Rastreio: {tracking}",
        "eta": "Previsão de entrega: {date}",
        "delivered": "Entregue em {date}",
        "latest_event": "Última atualização ({date}): {status}",
        "cancelled": "Pedido cancelado em {date}",
        "refund": "Reembolso de {amount} em {date}",
        "products_intro": "Encontramos em nosso catálogo:",
        "product_available": "disponível",
        "product_sold_out": "esgotado",
        "variants": "Opções: {variants}",
        "product_link": "Veja na loja: {url}",
    },
    "en": {
        "greeting_formal": "Dear customer,",
        "greeting": "Hi there,",
        "thanks": "Thank you for getting in touch.",
        "orders_intro": "Here is the latest on your order:",
        "no_orders": (
            "We could not find an order from the details in this message. Please reply from the "
            "email address used for the purchase and include the order number (for example "
            "#1001), and our team will check."
        ),
        "no_orders_auto": (
            "We could not find an order from the details in this message. Please reply from the "
            "email address used for the purchase and include the order number (for example "
            "#1001)."
        ),
        "delay": (
            "We are sorry for the wait. If the delivery date has passed, our team will check "
            "with the carrier and get back to you."
        ),
        "delay_auto": (
            "We are sorry for the wait. If the delivery date has passed, please reply to this "
            "email to let us know."
        ),
        "return_refund": (
            "We have received your return, exchange or refund request. Our team will review "
            "it and reply with the next steps."
        ),
        "cancellation": (
            "We have received your cancellation request. Our team will review it and reply by "
            "email; until then, nothing has been changed on the order."
        ),
        "product_question": (
            "We have received your question about our products. Our team will check the details "
            "and reply soon."
        ),
        "complaint": (
            "We are sorry about your experience. Your message has been passed to our team, who "
            "will review it and reply personally."
        ),
        "other": "We have received your message. Our team will review it and reply soon.",
        "closing": "If there is anything else, just reply to this email.",
        "knowledge": "{title}:\n{text}",
        "order_line": "Order {name}",
        "placed": "placed on {date}",
        "payment": "Payment: {status}",
        "fulfillment": "Shipping: {status}",
        "items": "Items: {items}",
        "tracking": "Tracking: {tracking}",
        "eta": "Estimated delivery: {date}",
        "delivered": "Delivered on {date}",
        "latest_event": "Latest update ({date}): {status}",
        "cancelled": "Order cancelled on {date}",
        "refund": "Refund of {amount} on {date}",
        "products_intro": "Here is what we found in our catalogue:",
        "product_available": "available",
        "product_sold_out": "sold out",
        "variants": "Options: {variants}",
        "product_link": "See it in the shop: {url}",
    },
    "es": {
        "greeting_formal": "Estimado/a cliente:",
        "greeting": "¡Hola!",
        "thanks": "Gracias por escribirnos.",
        "orders_intro": "Esta es la información de tu pedido:",
        "no_orders": (
            "No hemos encontrado un pedido con los datos de este mensaje. Por favor, responde "
            "desde el correo electrónico usado en la compra, indicando el número del pedido "
            "(por ejemplo, #1001), y nuestro equipo lo revisará."
        ),
        "no_orders_auto": (
            "No hemos encontrado un pedido con los datos de este mensaje. Por favor, responde "
            "desde el correo electrónico usado en la compra, indicando el número del pedido "
            "(por ejemplo, #1001)."
        ),
        "delay": (
            "Sentimos mucho la espera. Si el plazo de entrega ya ha pasado, nuestro equipo lo "
            "consultará con la transportista y te responderá."
        ),
        "delay_auto": (
            "Sentimos mucho la espera. Si el plazo de entrega ya ha pasado, responde a este "
            "correo para avisarnos."
        ),
        "return_refund": (
            "Hemos recibido tu solicitud de cambio, devolución o reembolso. Nuestro equipo la "
            "revisará y te responderá con los próximos pasos."
        ),
        "cancellation": (
            "Hemos recibido tu solicitud de cancelación. Nuestro equipo la revisará y te "
            "responderá por correo; hasta entonces, no se ha hecho ningún cambio en el pedido."
        ),
        "product_question": (
            "Hemos recibido tu pregunta sobre nuestros productos. Nuestro equipo revisará los "
            "detalles y te responderá pronto."
        ),
        "complaint": (
            "Sentimos mucho tu experiencia. Tu mensaje ha pasado a nuestro equipo, que lo "
            "revisará y te responderá personalmente."
        ),
        "other": "Hemos recibido tu mensaje. Nuestro equipo lo revisará y te responderá pronto.",
        "closing": "Si necesitas algo más, solo tienes que responder a este correo.",
        "knowledge": "{title}:\n{text}",  # a store's own answer, quoted (s2-knowledge)
        "order_line": "Pedido {name}",
        "placed": "realizado el {date}",
        "payment": "Pago: {status}",
        "fulfillment": "Envío: {status}",
        "items": "Artículos: {items}",
        "tracking": "Seguimiento: {tracking}",
        "eta": "Entrega prevista: {date}",
        "delivered": "Entregado el {date}",
        "latest_event": "Última actualización ({date}): {status}",
        "cancelled": "Pedido cancelado el {date}",
        "refund": "Reembolso de {amount} el {date}",
        "products_intro": "Esto es lo que encontramos en nuestro catálogo:",
        "product_available": "disponible",
        "product_sold_out": "agotado",
        "variants": "Opciones: {variants}",
        "product_link": "Míralo en la tienda: {url}",
    },
}

_STATUS = {
    "pt": {
        "FULFILLED": "enviado",
        "UNFULFILLED": "ainda não enviado",
        "PARTIALLY_FULFILLED": "parcialmente enviado",
        "IN_PROGRESS": "em preparação",
        "PENDING_FULFILLMENT": "em preparação",
        "OPEN": "ainda não enviado",
        "ON_HOLD": "em espera",
        "SCHEDULED": "agendado",
        "RESTOCKED": "cancelado",
        "PAID": "confirmado",
        "PENDING": "pendente",
        "AUTHORIZED": "autorizado",
        "PARTIALLY_PAID": "parcialmente pago",
        "REFUNDED": "reembolsado",
        "PARTIALLY_REFUNDED": "parcialmente reembolsado",
        "VOIDED": "cancelado",
        "EXPIRED": "expirado",
        "IN_TRANSIT": "em trânsito",
        "OUT_FOR_DELIVERY": "saiu para entrega",
        "DELIVERED": "entregue",
        "ATTEMPTED_DELIVERY": "tentativa de entrega",
        "LABEL_PRINTED": "etiqueta emitida",
        "CONFIRMED": "confirmado",
        "READY_FOR_PICKUP": "pronto para retirada",
        "PICKED_UP": "retirado",
        "DELAYED": "atrasado",
        "FAILURE": "problema na entrega",
        "CARRIER_PICKED_UP": "coletado pela transportadora",
    },
    "en": {},
    "es": {
        "FULFILLED": "enviado",
        "UNFULFILLED": "todavía no enviado",
        "PARTIALLY_FULFILLED": "enviado en parte",
        "IN_PROGRESS": "en preparación",
        "PENDING_FULFILLMENT": "en preparación",
        "OPEN": "todavía no enviado",
        "ON_HOLD": "en espera",
        "SCHEDULED": "programado",
        "RESTOCKED": "cancelado",
        "PAID": "confirmado",
        "PENDING": "pendiente",
        "AUTHORIZED": "autorizado",
        "PARTIALLY_PAID": "pagado en parte",
        "REFUNDED": "reembolsado",
        "PARTIALLY_REFUNDED": "reembolsado en parte",
        "VOIDED": "anulado",
        "EXPIRED": "caducado",
        "IN_TRANSIT": "en tránsito",
        "OUT_FOR_DELIVERY": "en reparto",
        "DELIVERED": "entregado",
        "ATTEMPTED_DELIVERY": "intento de entrega",
        "LABEL_PRINTED": "etiqueta creada",
        "CONFIRMED": "confirmado",
        "READY_FOR_PICKUP": "listo para recoger",
        "PICKED_UP": "recogido",
        "DELAYED": "con retraso",
        "FAILURE": "problema en la entrega",
        "CARRIER_PICKED_UP": "recogido por la transportista",
    },
}

# Currency symbols for prices in a reply; any other currency is written by its code.
_CURRENCY_SYMBOLS = {"BRL": "R$", "USD": "US$", "EUR": "€", "GBP": "£"}
_PRICE = re.compile(
    r"^(?P<low>\d+(?:\.\d+)?)(?:-(?P<high>\d+(?:\.\d+)?))?(?: (?P<code>[A-Z]{3}))?$"
)

_MONTHS_EN = ("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec").split()

ORDER_INTENTS = frozenset({"order_status", "shipping_delay", "return_refund", "cancellation"})
# Intents a store's knowledge entry can answer by itself (without a person following up).
POLICY_ANSWERS = frozenset({"return_refund", "product_question", "other"})
# The knowledge topics that answer an intent; an intent not listed ('other': a question the
# rules cannot place) takes the best entry of any topic, one listed with an empty set never
# quotes one (an order's own facts answer its status; a complaint is for a person).
INTENT_TOPICS: dict[str, frozenset[str]] = {
    "return_refund": frozenset({"returns"}),
    "shipping_delay": frozenset({"shipping"}),
    "order_status": frozenset(),
    "product_question": frozenset({"faq"}),
    "cancellation": frozenset({"returns", "faq"}),
    "complaint": frozenset(),
    "spam": frozenset(),
}


def _lang_key(language: str) -> str:
    prefix = language.lower()[:2]
    return prefix if prefix in ("pt", "es") else "en"


def format_date(value: str | None, language: str) -> str | None:
    """'2025-03-04T10:00:00Z' -> '04/03/2025' (pt) or 'Mar 4, 2025' (en); junk passes through."""
    if not value:
        return None
    match = re.match(r"(\d{4})-(\d{2})-(\d{2})", value)
    if not match:
        return value
    year, month, day = (int(part) for part in match.groups())
    if not 1 <= month <= 12:
        return value
    if _lang_key(language) in ("pt", "es"):
        return f"{day:02d}/{month:02d}/{year}"
    return f"{_MONTHS_EN[month - 1]} {day}, {year}"


def format_price(price: str | None, language: str) -> str | None:
    """'129.00 BRL' -> 'R$ 129,00' (pt, es) or 'R$ 129.00' (en); a range keeps both ends."""
    if not price:
        return None
    match = _PRICE.match(price.strip())
    if not match:
        return price
    code = match.group("code")
    symbol = _CURRENCY_SYMBOLS.get(code or "", code or "")

    def one(amount: str) -> str:
        text = amount.replace(".", ",") if _lang_key(language) in ("pt", "es") else amount
        return f"{symbol} {text}".strip()

    low, high = match.group("low"), match.group("high")
    return f"{one(low)} - {one(high)}" if high else one(low)


def describe_product(product: ProductFacts, language: str) -> list[str]:
    """The lines that describe one product: title, price, availability, options, link."""
    text = _TEXT[_lang_key(language)]
    parts = [product.title]
    price = format_price(product.price, language)
    if price:
        parts.append(price)
    if product.available is not None:
        parts.append(text["product_available" if product.available else "product_sold_out"])
    lines = [" - ".join(parts)]
    options = []
    for variant in product.variants:
        label = variant.title
        if variant.available is not None:
            state = text["product_available" if variant.available else "product_sold_out"]
            label = f"{label} ({state})"
        if variant.price and variant.price != product.price:
            label = f"{label} {format_price(variant.price, language)}"
        options.append(label)
    if options:
        lines.append("  " + text["variants"].format(variants=", ".join(options)))
    if product.url:
        lines.append("  " + text["product_link"].format(url=product.url))
    return lines


def format_status(status: str | None, language: str) -> str | None:
    """Shopify's enum ('PARTIALLY_FULFILLED') in words of the reply's language."""
    if not status:
        return None
    table = _STATUS[_lang_key(language)]
    return table.get(status.upper(), status.replace("_", " ").lower())


def describe_order(order: OrderFacts, language: str) -> list[str]:
    """The lines that describe one order; only fields the order actually has."""
    text = _TEXT[_lang_key(language)]
    headline = text["order_line"].format(name=order.name)
    placed = format_date(order.created_at, language)
    if placed:
        headline += " (" + text["placed"].format(date=placed) + ")"
    lines = [headline]
    payment = format_status(order.financial_status, language)
    if payment:
        lines.append("  " + text["payment"].format(status=payment))
    shipping = format_status(order.fulfillment_status, language)
    if shipping:
        lines.append("  " + text["fulfillment"].format(status=shipping))
    if order.line_items:
        lines.append("  " + text["items"].format(items="; ".join(order.line_items)))
    for fulfillment in order.fulfillments:
        for tracking in fulfillment.tracking:
            parts = [p for p in (tracking.company, tracking.number) if p]
            label = " ".join(parts)
            if tracking.url:
                label = f"{label} - {tracking.url}" if label else tracking.url
            if label:
                lines.append("  " + text["tracking"].format(tracking=label))
        delivered = format_date(fulfillment.delivered_at, language)
        if delivered:
            lines.append("  " + text["delivered"].format(date=delivered))
        elif fulfillment.events:
            latest = fulfillment.events[0]  # newest first
            status = format_status(latest.status, language) or ""
            if latest.message:
                # The carrier's message often says the status itself ("Objeto em trânsito
                # ..."): then it stands alone.
                repeats = bool(status) and fold(status) in fold(latest.message)
                status = latest.message if repeats or not status else f"{status} - {latest.message}"
            when = format_date(latest.happened_at, language)
            if status and when:
                lines.append("  " + text["latest_event"].format(date=when, status=status))
    eta = format_date(order.estimated_delivery_at, language)
    if eta and not any(f.delivered_at for f in order.fulfillments) and not order.cancelled_at:
        lines.append("  " + text["eta"].format(date=eta))
    cancelled = format_date(order.cancelled_at, language)
    if cancelled:
        lines.append("  " + text["cancelled"].format(date=cancelled))
    for refund in order.refunds:
        amount = format_price(refund.amount, language)
        when = format_date(refund.created_at, language)
        if amount and when:
            lines.append("  " + text["refund"].format(amount=amount, date=when))
    return lines


def matching_entry(intent: str, knowledge: Sequence[KnowledgeEntry]) -> KnowledgeEntry | None:
    """The store's entry that answers this email: the best-ranked one (worker.knowledge ranks
    them) when it is on the intent's topic, or any topic for a question the rules cannot place.
    """
    if not knowledge:
        return None
    best = knowledge[0]
    topics = INTENT_TOPICS.get(intent)
    if topics is None or best.topic in topics:
        return best
    return next((entry for entry in knowledge if entry.topic in topics), None)


def templated_body(
    classification: Classification,
    language: str,
    tone: str,
    *,
    orders: Sequence[OrderFacts],
    products: Sequence[ProductFacts],
    knowledge: Sequence[KnowledgeEntry],
    handoff: bool,
) -> str:
    """The reply body the rules write for a classified email (pure): a person follows up when
    the context says so or when the email itself needs one (the reply is then held)."""
    return compose_reply(
        classification.intent,
        list(orders),
        language,
        tone,
        products=products,
        knowledge=knowledge,
        handoff=handoff or classification.needs_human,
    )


def compose_reply(
    intent: str,
    orders: list[OrderFacts],
    language: str,
    tone: str,
    products: Sequence[ProductFacts] = (),
    knowledge: Sequence[KnowledgeEntry] = (),
    *,
    handoff: bool = False,
) -> str:
    """The reply body (no signature) for an intent, in pt, en or es (pure); the store's own
    answer (a knowledge entry) quoted as it wrote it when one fits.

    Without a handoff (nobody at the store will read the conversation) the reply promises no
    follow-up when it has an answer: the order facts, the catalogue's, or the store's own policy
    for a return or a general question. The texts of requests only the team can settle (a
    cancellation, a complaint, a question nothing here answers) say the team will act, and the
    pipeline holds them for a person (worker.promises), which makes the promise true.
    """
    auto = "" if handoff else "_auto"
    text = _TEXT[_lang_key(language)]
    formal = tone.strip().lower() in {"formal", "professional"}
    paragraphs = [text["greeting_formal" if formal else "greeting"], text["thanks"]]

    entry = matching_entry(intent, knowledge)
    # Rules cannot translate: a policy written in another language than the reply's stays out.
    if entry is not None and _lang_key(detect_language(f"{entry.title}\n{entry.body}")) != (
        _lang_key(language)
    ):
        entry = None
    # The store's policy answers a return or a general question; it cannot cancel an order.
    policy_answers = entry is not None and not handoff and intent in POLICY_ANSWERS

    if products:
        details = [text["products_intro"]]
        for product in products:
            details.extend(describe_product(product, language))
        paragraphs.append("\n".join(details))
    if intent == "product_question" and products:
        pass  # the catalogue facts are the answer, not "our team will check"
    elif policy_answers:
        pass  # the store's own answer, quoted below, is the reply
    elif intent in ("return_refund", "cancellation", "product_question", "complaint"):
        paragraphs.append(text[intent])
    elif intent == "shipping_delay":
        paragraphs.append(text["delay" + auto])
    elif intent not in ORDER_INTENTS:
        paragraphs.append(text["other"])

    if entry is not None:
        paragraphs.append(text["knowledge"].format(title=entry.title, text=entry.body.strip()))

    if orders:
        details = [text["orders_intro"]]
        for order in orders:
            details.extend(describe_order(order, language))
        paragraphs.append("\n".join(details))
    elif intent in ORDER_INTENTS:
        # Identical whether the sender has no orders, gave an unknown number or someone else's:
        # the reply must not reveal which.
        paragraphs.append(text["no_orders" + auto])

    paragraphs.append(text["closing"])
    return "\n\n".join(paragraphs)
