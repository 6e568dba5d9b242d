"""The thread and the store's knowledge reach the model (issue 15 items 1, 2), end to end.

Real Postgres, SMTP sink and the HTTP fakes (worker/devstack): the fake Claude records every
request, so each test reads what the model was actually shown, from the data blocks of the
draft request, and what the customer actually got.
"""

# The harness's fixtures are imported by name, which ruff reads as redefinitions (F811).
# ruff: noqa: F811

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.test_process_pipeline import (
    ANA,
    Pipeline,
    make_email,
    make_pipeline,
    pipeline,  # noqa: F401  (a fixture)
    pipeline_dsn,  # noqa: F401  (a fixture)
    sql,  # noqa: F401  (a fixture)
)
from worker import prompts
from worker.devstack.dovecot import DovecotServer
from worker.devstack.fake_claude import FakeClaude, data_blocks
from worker.devstack.fake_shopify import FakeShopify
from worker.devstack.smtp_sink import SmtpSink

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO_KNOWLEDGE = json.loads((ROOT / "scripts/demo.d/knowledge.json").read_text(encoding="utf-8"))
NEIGHBOUR_POLICY = "Neighbour store: returns within 7 days, restocking fee 15%."


def draft_context(claude: FakeClaude) -> tuple[dict[str, Any], dict[str, Any]]:
    """The email block of the last request the model got, and what it was given beside it: the
    reply context and the store's block (voice and knowledge), as one dict."""
    answers = [r for r in claude.messages if r.tool_name == prompts.ANSWER_TOOL_NAME]
    assert answers, "no request reached the model"
    blocks = data_blocks(answers[-1].user_text)
    return blocks[prompts.EMAIL_BLOCK], {
        **blocks[prompts.CONTEXT_BLOCK],
        **blocks[prompts.STORE_BLOCK],
    }


def test_a_follow_up_sees_the_earlier_messages_and_our_reply_without_quotes(
    pipeline: Pipeline,
) -> None:
    first_id = "<troca-ana-1@mail.example.com.br>"
    # The store's returns policy answers the exchange question (without it the request would
    # wait for a person: a reply may not promise that the team follows up, decision 0020).
    pipeline.db.import_knowledge(pipeline.store_id, DEMO_KNOWLEDGE)
    first_job = pipeline.one(
        make_email(
            f"Ana Souza <{ANA}>",
            "Troca de tamanho",
            "Oi! Quero trocar a camiseta P por uma M. Como faço?\n\nObrigada,\nAna",
            message_id=first_id,
        )
    )
    assert pipeline.run()["outcomes"] == {"replied": 1}
    our_reply = pipeline.reply(first_job)
    assert our_reply is not None and our_reply["status"] == "sent"
    _, first_context = draft_context(pipeline.claude)
    assert "earlier_messages" not in first_context  # a new conversation has no thread

    quoted = "\n".join(f"> {line}" for line in our_reply["body_text"].splitlines())
    pipeline.one(
        make_email(
            f"Ana Souza <{ANA}>",
            "Re: Troca de tamanho",
            "E o prazo da troca, qual é?\n\n"
            "Em seg., 30 de nov. de 2026 às 10:00, Loja Demo <support@shop.test> escreveu:\n"
            + quoted
            + "\n",
            in_reply_to=our_reply["smtp_message_id"],
            references=f"{first_id} {our_reply['smtp_message_id']}",
        )
    )
    assert pipeline.run()["outcomes"] == {"replied": 1}

    email, context = draft_context(pipeline.claude)
    # The current email reaches the model as the customer wrote it now, without the quote.
    assert email["body"] == "E o prazo da troca, qual é?"
    thread = context["earlier_messages"]
    assert [m["from"] for m in thread] == ["customer", "store"]
    # Her first message without its sign-off, and our reply as it went out (newest last).
    assert thread[0]["text"] == "Oi! Quero trocar a camiseta P por uma M. Como faço?"
    # (Lines lose their indentation on the way: worker.quotes' normalisation.)
    sent_lines = [line.strip() for line in our_reply["body_text"].strip().splitlines()]
    assert thread[1]["text"].splitlines() == sent_lines
    assert all("escreveu" not in m["text"] and "\n>" not in m["text"] for m in thread)


def test_a_returns_question_gets_the_stores_policy_and_never_another_stores(
    pipeline: Pipeline,
    sql: psycopg.Connection[dict[str, Any]],
    pipeline_dsn: str,
    dovecot: DovecotServer,
    mail_user: Any,
    smtp_sink: SmtpSink,
    fake_claude: FakeClaude,
    fake_shopify: FakeShopify,
) -> None:
    pipeline.db.import_knowledge(pipeline.store_id, DEMO_KNOWLEDGE)
    neighbour = make_pipeline(
        sql,
        pipeline_dsn,
        dovecot,
        mail_user,
        smtp_sink,
        fake_claude,
        fake_shopify,
        store={"name": "Vizinha", "support_email": "help@neighbour.test"},
    )
    try:
        neighbour.db.import_knowledge(
            neighbour.store_id,
            [{"topic": "returns", "title": "Trocas e devoluções", "body": NEIGHBOUR_POLICY}],
        )
        job_id = pipeline.one(
            make_email(
                "Carlos Lima <carlos.lima@example.com.br>",
                "Devolução do tênis",
                "Recebi o tênis, mas ficou apertado. Gostaria de devolver e receber o "
                "reembolso. Como faço?",
            )
        )
        assert pipeline.run()["outcomes"] == {"replied": 1}
    finally:
        neighbour.worker.close()
        sql.execute("update public.stores set active = false where id = %s", (neighbour.store_id,))

    _, context = draft_context(pipeline.claude)
    titles = [k["title"] for k in context["store_knowledge"]]
    assert titles[0] == "Trocas e devoluções"
    assert "em até 30 dias corridos" in context["store_knowledge"][0]["text"]
    # Nothing unrelated (sizes, gift wrap, payment) and nothing of the neighbour store.
    assert not {"Tabela de medidas", "Embalagem para presente", "Formas de pagamento"} & set(titles)
    request_text = json.dumps([r.body for r in pipeline.claude.messages], ensure_ascii=False)
    assert NEIGHBOUR_POLICY not in request_text

    reply = pipeline.reply(job_id)
    assert reply is not None and reply["status"] == "sent"
    assert "em até 30 dias corridos" in reply["body_text"]
    [event] = [e for e in pipeline.events(job_id) if e["event_type"] == "process.context"]
    assert event["detail"]["knowledge"][0] == "Trocas e devoluções"
    assert event["detail"]["knowledge_available"] == len(DEMO_KNOWLEDGE)


def test_a_store_without_knowledge_sends_none_to_the_model(pipeline: Pipeline) -> None:
    pipeline.one(
        make_email("Carlos Lima <carlos.lima@example.com.br>", "Devolução", "Quero devolver.")
    )
    # Without a returns policy only the team can settle it: held for a person (decision 0020).
    assert pipeline.run()["outcomes"] == {"held": 1}
    _, context = draft_context(pipeline.claude)
    assert "store_knowledge" not in context and "earlier_messages" not in context
