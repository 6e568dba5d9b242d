"""Cheap spam heuristics that run before any paid classification.

Deliberately conservative: a false positive means a real customer never gets an answer, while a
false negative only costs one classification call (Claude's verdict counts too). No single
customer-like trait (shouting in capitals, a few links, an angry tone) can reach the threshold
on its own; only an upstream filter's verdict or several spam traits together can.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from worker.mime import ParsedEmail

SPAM_THRESHOLD = 5.0

# Multi-word phrases only, written without accents (text is folded the same way before matching).
# Single words such as "prize" or "sorteio" are left out: a store running a giveaway gets real
# questions about them.
SPAM_PHRASES: tuple[str, ...] = (
    # English
    "you have won",
    "you've won",
    "claim your prize",
    "claim your reward",
    "lottery winner",
    "dear beneficiary",
    "wire transfer fee",
    "inheritance fund",
    "make money fast",
    "guaranteed income",
    "risk-free investment",
    "crypto investment",
    "double your bitcoin",
    "first page of google",
    "rank your website",
    "seo services",
    "buy backlinks",
    "increase your sales by",
    "100% free",
    "cheap viagra",
    # Portuguese (pt-BR)
    "voce ganhou",
    "voce foi sorteado",
    "resgate seu premio",
    "resgatar seu premio",
    "ganhe dinheiro",
    "dinheiro facil",
    "renda extra garantida",
    "lucro garantido",
    "investimento garantido",
    "emprestimo aprovado",
    "emprestimo pre-aprovado",
    "primeira pagina do google",
    "otimizacao de seo",
    "servicos de seo",
    "clique aqui para resgatar",
)
_PHRASE_PATTERNS = tuple(
    (phrase, re.compile(rf"(?<!\w){re.escape(phrase)}(?!\w)")) for phrase in SPAM_PHRASES
)
_PHRASE_WEIGHT = 2.0
_MAX_PHRASE_HITS = 3


@dataclass(frozen=True)
class SpamVerdict:
    """The heuristic score, why, and whether it crosses the threshold."""

    score: float
    reasons: tuple[str, ...]
    is_spam: bool


def spam_verdict(email: ParsedEmail) -> SpamVerdict:
    """Score a message with cheap, conservative heuristics."""
    score = 0.0
    reasons: list[str] = []

    def add(points: float, reason: str) -> None:
        nonlocal score
        score += points
        reasons.append(reason)

    flag = email.headers.get("x-spam-flag", "").strip().lower()
    if flag.startswith("yes"):
        add(SPAM_THRESHOLD, "x_spam_flag")
    status = email.headers.get("x-spam-status", "").strip().lower()
    if status.startswith("yes"):
        add(SPAM_THRESHOLD, "x_spam_status")

    text = fold(f"{email.subject}\n{email.body_text}")
    hits = [phrase for phrase, pattern in _PHRASE_PATTERNS if pattern.search(text)]
    hits = hits[:_MAX_PHRASE_HITS]
    for phrase in hits:
        add(_PHRASE_WEIGHT, f"phrase:{phrase}")

    links = email.link_count
    if links >= 20:
        add(3.0, "many_links")
    elif links >= 10:
        add(2.0, "many_links")

    if _is_shouting(email.subject):
        add(1.0, "all_caps_subject")
    if "!!!" in email.subject or "$$$" in email.subject:
        add(1.0, "punctuation_subject")

    # A reply inside an existing thread is almost always a real conversation.
    if email.in_reply_to and not flag.startswith("yes") and not status.startswith("yes"):
        add(-2.0, "in_thread")

    return SpamVerdict(score=score, reasons=tuple(reasons), is_spam=score >= SPAM_THRESHOLD)


def fold(text: str) -> str:
    """Lower-case text without accents and with single spaces, for phrase matching."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    # Phones type a curly apostrophe (U+2019) in "you've won".
    return " ".join(plain.replace("\u2019", "'").split())


def _is_shouting(subject: str) -> bool:
    letters = [c for c in subject if c.isalpha()]
    if len(letters) < 10:
        return False
    return sum(c.isupper() for c in letters) / len(letters) >= 0.8
