"""The demo's store and mailbox: realistic customer emails in Portuguese and English.

Customer addresses match the fake Shopify demo catalogue (worker/devstack/fake_shopify.py), so order
questions are answered with real tracking data. Three samples from tests/unit/data are reused as
they are (an Outlook out-of-office, a Postfix bounce, a prize scam): they already carry the store
address these samples share, support@lojaexemplo.com.br.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "unit" / "data"
# The store's policies and answers (pt-BR): the returns question is answered from it.
KNOWLEDGE_FILE = Path(__file__).resolve().parent / "knowledge.json"

STORE_NAME = "Loja Exemplo"
STORE_EMAIL = "support@lojaexemplo.com.br"
STORE_SHOP_DOMAIN = "loja-exemplo.myshopify.com"
STORE_SIGNATURE = "Equipe Loja Exemplo"
STORE_CREDITS = 20
# The support console's people (their passwords are made up per run).
CONSOLE_OWNER_EMAIL = "dona@lojaexemplo.com.br"
CONSOLE_OPERATOR_EMAIL = "operator@support-worker.example"
# The SMTP sink refuses this recipient with 550, so the reply to it ends in the dead-letter queue.
REFUSED_RECIPIENT = "olivia.brown@example.net"


@dataclass(frozen=True)
class SeedEmail:
    """One email put into the demo mailbox, with the outcome the demo expects for it."""

    key: str
    expected: str  # answered | held | skipped | spam | dead_letter
    language: str
    raw: bytes


def _email(
    key: str,
    expected: str,
    language: str,
    sender: str,
    subject: str,
    body: str,
    *,
    minutes_ago: int,
    now: datetime,
) -> SeedEmail:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = f"{STORE_NAME} <{STORE_EMAIL}>"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now - timedelta(minutes=minutes_ago))
    # A fresh Message-ID per run: the same mailbox content seeded twice is two sets of mail.
    msg["Message-ID"] = make_msgid(key, domain=sender.rpartition("@")[2].rstrip(">"))
    msg.set_content(body)
    return SeedEmail(key, expected, language, bytes(msg))


def _sample(key: str, expected: str, language: str, name: str) -> SeedEmail:
    return SeedEmail(key, expected, language, (SAMPLES / name).read_bytes())


def seed_emails(now: datetime | None = None) -> list[SeedEmail]:
    """The demo mailbox, oldest first."""
    now = now or datetime.now(UTC)
    return [
        _email(
            "order-status-pt",
            "answered",
            "pt",
            "Ana Souza <ana.souza@example.com.br>",
            "Onde está meu pedido #1001?",
            "Olá, boa tarde!\n\nComprei duas camisetas na semana passada (pedido #1001). "
            "Vocês podem me dizer onde está o meu pedido e quando chega?\n\n"
            "Obrigada,\nAna Souza\n",
            minutes_ago=58,
            now=now,
        ),
        _email(
            "delay-en",
            "answered",
            "en",
            "John Miller <john.miller@example.com>",
            "Order #1002 still hasn't shipped",
            "Hi there,\n\nI placed order #1002 almost a week ago and it is still not shipped. "
            "The tote bag is a birthday present, so the delay is a problem for me. Can you "
            "tell me when it will go out?\n\nThanks,\nJohn\n",
            minutes_ago=51,
            now=now,
        ),
        _email(
            "refund-pt",
            "answered",
            "pt",
            "Carlos Lima <carlos.lima@example.com.br>",
            "Devolução do tênis - pedido #1003",
            "Oi, tudo bem?\n\nRecebi o tênis do pedido #1003, mas ficou apertado. Gostaria "
            "de devolver e receber o reembolso. Como faço?\n\nAbraço,\nCarlos Lima\n",
            minutes_ago=44,
            now=now,
        ),
        _email(
            "product-en",
            "answered",
            "en",
            "Emma Jones <emma.jones@example.co.uk>",
            "Is the wool scarf available in navy?",
            "Hello,\n\nI love the grey wool scarf I bought from you. Do you have the same "
            "scarf in navy, and is it in stock at the moment?\n\nKind regards,\nEmma Jones\n",
            minutes_ago=37,
            now=now,
        ),
        _email(
            "complaint-pt",
            "held",
            "pt",
            "Beatriz Rocha <beatriz.rocha@example.com.br>",
            "Produto chegou quebrado",
            "Boa noite.\n\nA caneca que comprei chegou quebrada, com a alça solta. Estou muito "
            "decepcionada, é um absurdo pagar por um produto com defeito.\n\nBeatriz\n",
            minutes_ago=30,
            now=now,
        ),
        _email(
            "order-status-refused-en",
            "dead_letter",
            "en",
            f"Olivia Brown <{REFUSED_RECIPIENT}>",
            "Where is my order?",
            "Hi,\n\nI ordered a mug last week. Where is my order? Could you send me the "
            "tracking number?\n\nOlivia\n",
            minutes_ago=23,
            now=now,
        ),
        _sample("spam-pt", "spam", "pt", "spam_pt.eml"),
        _sample("out-of-office-pt", "skipped", "pt", "outlook_oof_pt.eml"),
        _sample("bounce", "skipped", "en", "postfix_bounce.eml"),
    ]


def new_mail_example(drop_dir: Path) -> str:
    """Shell lines an operator can paste to drop a new customer email into the running demo."""
    return (
        f"cat > {drop_dir}/new.eml <<'EOF'\n"
        "From: Ana Souza <ana.souza@example.com.br>\n"
        f"To: {STORE_EMAIL}\n"
        "Subject: Qual o código de rastreio do pedido #1001?\n"
        "\n"
        "Oi! Pode me mandar o código de rastreio do meu pedido #1001? Obrigada!\n"
        "EOF"
    )
