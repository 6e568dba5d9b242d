"""A message's own text: quoted history and signature removed before any model sees it (pure).

The splitting is mail-parser-reply's (multi-language "On ... wrote:" / Outlook "From:" headers,
signatures, "Sent from my" lines). It has no Portuguese, so this module registers Portuguese
patterns in its language table, and it leaves bare "> " quoted lines in place, so those are
dropped here. Input is bounded first: the library's patterns are regular expressions, and a
hostile email must not make them slow (decision 0012). Lines come back without their leading
indentation (the library normalises them): the model needs the words, not the layout.
"""

from __future__ import annotations

import re

from mailparser_reply.constants import MAIL_LANGUAGES, QUOTED_MATCH_INCLUDE
from mailparser_reply.parser import EmailMessage

# More than any customer writes above a quote; the rest of a long body is history or noise.
MAX_INPUT_CHARS = 20_000
# The languages whose reply headers and sign-offs are recognised (English is always included).
LANGUAGES = ("pt", "es", "en")

_PORTUGUESE = {
    # Gmail/Apple: "Em seg., 30 de nov. de 2026 às 10:00, Loja <x@y> escreveu:"
    "wrote_header": r"^(" + QUOTED_MATCH_INCLUDE + r"Em\s.+\sescreveu:)$",
    # Outlook: "De: ... / Enviado: ... / Para: ... / Assunto: ..." (two or more header lines)
    "from_header": r"((?:(?:^|\n|\n"
    + QUOTED_MATCH_INCLUDE
    + r")[* ]*(?:De|Enviad[oa]|Para|Assunto|Data|Cc|Cco):[ *]*(?:\s{,2}).*){2,}(?:\n.*){,1})",
    "disclaimers": ["Aviso legal:", "Confidencialidade:", "AVISO DE CONFIDENCIALIDADE"],
    "signatures": [
        "Atenciosamente,",
        "Atenciosamente",
        "Att,",
        "Att\\.",
        "Abraços?,",
        "Abs,",
        "Beijos?,",
        "Bjs,",
        "Cordialmente,",
        "Obrigad[oa],",
        "Grat[oa],",
    ],
    "sent_from": r"Enviado do meu.*|Enviado do (?:Outlook|Gmail|Yahoo).*",
}
# The library's Spanish header wants two spaces before "escribió"; Gmail writes one.
_SPANISH_WROTE = r"^(" + QUOTED_MATCH_INCLUDE + r"El\s.+\sescribió:)$"

MAIL_LANGUAGES.setdefault("pt", _PORTUGUESE)

_QUOTED_LINE = re.compile(r"^[ \t]*>")
# "On Mon, 30 Nov 2026 at 10:00, Shop <s@x>" + newline + "wrote:": Gmail folds long header lines.
_FOLDED_HEADER = re.compile(
    r"^((?:On|Em|El)\s[^\n]{8,300})\n[ \t]*((?:wrote|escreveu|escribió):)[ \t]*$",
    re.MULTILINE,
)
_SPANISH_HEADER = re.compile(_SPANISH_WROTE, re.MULTILINE | re.IGNORECASE)


def own_text(body: str | None) -> str:
    """The text the sender wrote in this message, without quoted history or signature."""
    if not body:
        return ""
    text = body[:MAX_INPUT_CHARS].replace("\r\n", "\n").replace("\r", "\n")
    text = _FOLDED_HEADER.sub(r"\1 \2", text)
    spanish = _SPANISH_HEADER.search(text)
    if spanish:
        text = text[: spanish.start()]
    # keep_hyphen_lists: a customer's "- item" list is not a signature.
    message = EmailMessage(text=text, languages=list(LANGUAGES), keep_hyphen_lists=True)
    latest = message.read().replies
    own = latest[0].body if latest else text
    lines = [line for line in own.split("\n") if not _QUOTED_LINE.match(line)]
    cleaned = "\n".join(lines).strip()
    # Blank-line runs left behind by removed blocks collapse to one paragraph break.
    return re.sub(r"\n{3,}", "\n\n", cleaned)
