"""Which of a store's knowledge entries an email needs (pure; decision 0023).

Every entry is scored against the customer's own text (subject and body, quotes stripped) with
BM25 over light stems (accent-folded, the first five letters: 'devolução', 'devolver' and
'devolución' meet at 'devol'), plus a boost when the email's wording names the entry's topic
(pt, en, es keyword lists: an English question finds the Portuguese returns policy through its
topic even when no word is shared). The best entries that fit the budget are given to the
model; an entry that scores nothing is never given, so an unrelated FAQ does not reach it.
Measured on a labelled set by bench/knowledge.py.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.responder import KnowledgeEntry

TOPICS = ("shipping", "returns", "payment", "contact", "faq")

MAX_ENTRIES = 3  # entries given to the model for one email
BUDGET_CHARS = 4_000  # their text together (~1,000 tokens)
TOPIC_BOOST = 2.0  # added to an entry's score when the email names its topic
STEM_CHARS = 5
MIN_SHARED_STEMS = 2  # words an entry must share with an email whose wording names no topic
BM25_K1 = 1.2
BM25_B = 0.75
# An entry scoring below this share of the best one is noise, not a second answer.
RELATIVE_FLOOR = 0.5

# Folded (lower-case, no accents) words and phrases that name a topic, pt / en / es.
# fmt: off
TOPIC_WORDS: dict[str, tuple[str, ...]] = {
    "shipping": (
        "frete", "entrega", "entregas", "prazo", "envio", "enviar", "enviam", "chega", "chegar",
        "correios", "sedex", "transportadora", "rastreio", "rastreamento",
        "shipping", "ship", "ships", "delivery", "deliver", "arrive", "carrier", "postage",
        "tracking", "how long", "shipped", "delay", "delayed", "late",
        "envios", "plazo", "llega", "llegar", "gastos de envio", "paqueteria",
    ),
    "returns": (
        "troca", "trocar", "trocas", "devolucao", "devolver", "devolvo", "reembolso", "estorno",
        "arrependimento", "nao serviu", "nao gostei", "defeito",
        "return", "returns", "refund", "exchange", "send back", "money back", "doesn't fit",
        "does not fit", "wrong size",
        "devolucion", "devoluciones", "cambio", "cambiar", "reembolsar", "no me queda",
    ),
    "payment": (
        "pagamento", "pagar", "pago", "pix", "boleto", "cartao", "parcela", "parcelas",
        "parcelar", "parcelado", "juros",
        "payment", "pay", "paying", "card", "credit card", "paypal", "installment",
        "installments",
        "pagos", "tarjeta", "cuotas", "transferencia",
    ),
    "contact": (
        "horario", "horario de atendimento", "telefone", "whatsapp", "ligar", "loja fisica",
        "hours", "opening", "phone", "call", "contact", "address", "open on",
        "horarios", "telefono", "llamar", "direccion", "atencion",
    ),
}
# Words of one meaning across pt / en / es (folded): each adds its group's name to the stems of
# a text, on both sides, so "refund" meets "reembolso" and "installments" meets "parcelas".
CONCEPTS: dict[str, tuple[str, ...]] = {
    "~return": ("devolver", "devolucao", "devolvo", "return", "returns", "returning",
                "send back", "devolucion", "devoluciones"),
    "~refund": ("reembolso", "estorno", "refund", "refunds", "money back", "reembolsar"),
    "~exchange": ("troca", "trocar", "trocas", "exchange", "swap", "cambio", "cambiar"),
    "~freight": ("frete", "shipping cost", "shipping costs", "postage", "free shipping",
                 "gastos de envio", "envio gratis", "costo de envio"),
    "~deliverytime": ("prazo", "prazos", "quantos dias", "how long", "delivery time",
                      "how many days", "delay", "delayed", "late", "arrive", "atraso",
                      "atrasado", "plazo", "cuantos dias", "tarda", "retraso"),
    "~abroad": ("internacional", "internacionais", "exterior", "international", "abroad",
                "overseas", "internacionales", "extranjero"),
    "~installments": ("parcela", "parcelas", "parcelar", "parcelado", "installment",
                      "installments", "cuotas", "meses sin intereses"),
    "~card": ("cartao", "credito", "card", "credit", "tarjeta"),
    "~pay": ("pagamento", "pagar", "pago", "payment", "payments", "pay", "pagos"),
    "~hours": ("horario", "horarios", "hours", "opening", "customer service", "atencion"),
    "~phone": ("telefone", "whatsapp", "phone", "call", "telefono", "llamar"),
    "~cancel": ("cancelar", "cancelamento", "cancele", "cancel", "cancellation", "cancelacion",
                "anular"),
    "~address": ("endereco", "address", "direccion"),
    "~defect": ("defeito", "quebrado", "quebrada", "defect", "defective", "broken", "damaged",
                "defectuoso", "roto"),
    "~size": ("tamanho", "medidas", "size", "sizes", "measurements", "talla", "medidas"),
    "~invoice": ("nota fiscal", "invoice", "receipt", "factura"),
    "~gift": ("presente", "gift", "regalo"),
    "~coupon": ("cupom", "coupon", "discount code", "cupon"),
    "~wash": ("lavar", "lave", "wash", "washing", "lavado"),
}
STOP_WORDS = frozenset(
    """a o e de da do das dos em no na nos nas um uma para por com que se ao aos meu minha
    voce voces ola oi bom boa dia tarde noite obrigado obrigada gostaria quero queria saber
    pode podem como qual quais quando isso esse essa este esta ja mais muito sobre ainda
    the and for you your with this that have has are was were can could would what when how
    does did please thanks thank hello there from about want know
    el la los las del por con que una unos para como cual cuando esto este esta hola gracias
    quiero saber puedo pueden sobre muy mas""".split()
)
# fmt: on


def _alternation(phrases: Iterable[str]) -> re.Pattern[str]:
    # Longest first, so "gastos de envio" wins over a shorter phrase at the same place.
    ordered = sorted(set(phrases), key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, ordered)) + r")(?![a-z0-9])")


_CONCEPT_OF = {phrase: concept for concept, phrases in CONCEPTS.items() for phrase in phrases}
_CONCEPT_PHRASES = _alternation(_CONCEPT_OF)
_TOPIC_PHRASES = {topic: _alternation(words) for topic, words in TOPIC_WORDS.items()}


@dataclass(frozen=True)
class Scored:
    """One entry with its score for an email (kept for the benchmark and the trace)."""

    entry: KnowledgeEntry
    score: float
    matched: int = 0  # distinct query stems found in the entry
    boosted: bool = False  # the email names the entry's topic


def fold(text: str) -> str:
    """Lower-case without accents: 'Devolução' -> 'devolucao'."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def stems(text: str) -> list[str]:
    """The text's content words, folded and cut to their first letters (a light stem), and the
    names of the CONCEPTS it mentions."""
    folded = fold(text)
    words = [
        word[:STEM_CHARS]
        for word in re.findall(r"[a-z0-9]+", folded)
        if len(word) >= 3 and word not in STOP_WORDS
    ]
    return words + [_CONCEPT_OF[m.group(1)] for m in _CONCEPT_PHRASES.finditer(folded)]


@functools.lru_cache(maxsize=4096)
def _entry_stems(entry: KnowledgeEntry) -> Counter[str]:
    # The title counts twice: it names what the entry is about. Cached: a store's entries come
    # back with every job, unchanged.
    return Counter(stems(f"{entry.title} {entry.title} {entry.body}"))


def topics_named(text: str) -> set[str]:
    """The topics whose words appear in the text (whole words or phrases, folded)."""
    folded = fold(text)
    return {topic for topic, pattern in _TOPIC_PHRASES.items() if pattern.search(folded)}


def entries_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[KnowledgeEntry]:
    """load_job_context's knowledge rows as entries (rows missing a field are skipped)."""
    return [
        KnowledgeEntry(topic=str(r["topic"]), title=str(r["title"]), body=str(r["body"]))
        for r in rows
        if r.get("topic") and r.get("title") and r.get("body")
    ]


def score(
    entries: Sequence[KnowledgeEntry],
    query: str,
    *,
    topic_boost: float = TOPIC_BOOST,
    bm25_weight: float = 1.0,
) -> list[Scored]:
    """Every entry's BM25 score for the query plus its topic boost, best first (the weights
    let bench/knowledge.py measure each signal alone)."""
    query_stems = set(stems(query))
    named = topics_named(query)
    docs = [_entry_stems(e) for e in entries]
    if not docs:
        return []
    average = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
    frequency = Counter(stem for d in docs for stem in d)
    scored: list[Scored] = []
    for entry, doc in zip(entries, docs, strict=True):
        length = sum(doc.values())
        bm25 = 0.0
        shared = query_stems & doc.keys()
        for stem in shared:
            idf = math.log(1 + (len(docs) - frequency[stem] + 0.5) / (frequency[stem] + 0.5))
            tf = doc[stem]
            bm25 += (
                idf * tf * (BM25_K1 + 1) / (tf + BM25_K1 * (1 - BM25_B + BM25_B * length / average))
            )
        boosted = entry.topic in named and topic_boost > 0
        score_ = bm25_weight * bm25 + (topic_boost if boosted else 0.0)
        scored.append(Scored(entry, score_, len(shared) if bm25_weight else 0, boosted))
    return sorted(scored, key=lambda s: s.score, reverse=True)


def select(
    entries: Sequence[KnowledgeEntry],
    subject: str,
    body: str,
    *,
    max_entries: int = MAX_ENTRIES,
    budget_chars: int = BUDGET_CHARS,
    topic_boost: float = TOPIC_BOOST,
    bm25_weight: float = 1.0,
) -> list[KnowledgeEntry]:
    """The entries the reply to this email needs, best first, within the budget."""
    query = f"{subject}\n{body}"
    # One shared word is too often a coincidence ('present' and 'presente', 'moment' and
    # 'momento'): an entry needs two, or its topic named by the email.
    ranked = [
        s
        for s in score(entries, query, topic_boost=topic_boost, bm25_weight=bm25_weight)
        if s.score > 0 and (s.boosted or s.matched >= MIN_SHARED_STEMS)
    ]
    if not ranked:
        return []
    # A topic named in the email lifts every entry of it; when some of them also share the
    # email's words, the ones that share none are only the topic's neighbours.
    if any(s.boosted and s.matched for s in ranked):
        ranked = [s for s in ranked if s.matched or not s.boosted]
    floor = ranked[0].score * RELATIVE_FLOOR
    chosen: list[KnowledgeEntry] = []
    used = 0
    for item in ranked:
        size = len(item.entry.title) + len(item.entry.body)
        if item.score < floor or len(chosen) >= max_entries:
            break
        if used + size > budget_chars:
            continue
        chosen.append(item.entry)
        used += size
    return chosen
