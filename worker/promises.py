"""Whether a reply promises that a person will follow up; pure (issue 12, promises that are kept).

A reply sent automatically may say that someone at the store will review, check or get back to
the customer only when that is true: when the conversation also waits in the needs-a-person
queue. Nothing is queued behind an automatic reply, so such a reply is held for a person instead
(the pipeline's decide_hold), which makes the promise true. The model is told up front whether
a person follows up (ReplyContext.handoff); this check catches what it writes regardless, and
the offline responder's templates that promise a person's work.

The phrases are deliberately plain, in English, Portuguese and Spanish (the languages the
offline responder writes): a phrase missed here is a promise left unkept, a phrase matched too
eagerly only holds a reply for a person.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

FOLLOW_UP_PROMISED: Final = "follow_up_promised"  # the hold reason

# Accent-free, lower case; matched as whole words.
_PHRASES: Final = (
    # English
    "our team will",
    "the team will",
    "a member of our team will",
    "someone from our team will",
    "a person will",
    "we will get back to you",
    "we'll get back to you",
    "will get back to you",
    "will reply personally",
    "will review it and reply",
    "will review your request",
    "will look into it",
    "has been passed to our team",
    "has been forwarded",
    "forwarded to our team",
    "escalated to",
    # Portuguese
    "nossa equipe vai",
    "nossa equipe ira",
    "a equipe vai",
    "a equipe ira",
    "nosso time vai",
    "vamos verificar e retornar",
    "retornaremos",
    "entraremos em contato",
    "foi encaminhada",
    "foi encaminhado",
    "encaminhamos sua",
    "vai analisar e responder",
    # Spanish
    "nuestro equipo lo revisara",
    "nuestro equipo la revisara",
    "nuestro equipo revisara",
    "nuestro equipo lo consultara",
    "te respondera",
    "ha pasado a nuestro equipo",
    "nos pondremos en contacto",
)

_PATTERN: Final = re.compile(
    "|".join(rf"(?<![a-z0-9]){re.escape(p)}(?![a-z0-9])" for p in _PHRASES)
)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower().replace("\u2019", "'"))
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).split())


def promises_follow_up(text: str) -> bool:
    """True when the text says a person at the store will act on the message later."""
    return _PATTERN.search(_fold(text)) is not None
