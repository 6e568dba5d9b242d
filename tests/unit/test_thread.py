"""worker.thread: the conversation's earlier messages as the model sees them."""

from __future__ import annotations

from worker.thread import MESSAGE_CHARS, THREAD_BUDGET_CHARS, thread_messages


def row(author: str, text: str, at: str = "2026-11-30T10:00:00+00:00") -> dict[str, str]:
    return {"author": author, "at": at, "text": text}


def test_messages_keep_their_order_and_lose_quotes() -> None:
    rows = [
        row("customer", "Quero trocar a camiseta P por M.", "2026-11-30T10:00:00+00:00"),
        row(
            "store",
            "Olá! A troca é grátis em até 30 dias.\n\nEm seg., 30 de nov. de 2026 às 10:00, "
            "Ana <ana@x.test> escreveu:\n> Quero trocar a camiseta P por M.",
            "2026-11-30T11:00:00+00:00",
        ),
    ]
    thread = thread_messages(rows)
    assert [(m.author, m.text) for m in thread] == [
        ("customer", "Quero trocar a camiseta P por M."),
        ("store", "Olá! A troca é grátis em até 30 dias."),
    ]
    assert thread[1].sent_at == "2026-11-30T11:00:00+00:00"
    assert thread[1].as_prompt_data() == {
        "from": "store",
        "sent_at": "2026-11-30T11:00:00+00:00",
        "text": "Olá! A troca é grátis em até 30 dias.",
    }


def test_the_newest_messages_that_fit_the_budget_are_kept() -> None:
    rows = [row("customer", f"message {i} " + "x" * 1_400) for i in range(10)]
    thread = thread_messages(rows)
    assert sum(len(m.text) for m in thread) <= THREAD_BUDGET_CHARS
    assert thread[-1].text.startswith("message 9")  # newest last, always kept
    assert thread[0].text.startswith(f"message {10 - len(thread)}")
    assert len(thread) == THREAD_BUDGET_CHARS // 1_411


def test_one_long_message_is_cut_not_dropped() -> None:
    [message] = thread_messages([row("customer", "y" * 10_000)])
    assert len(message.text) == MESSAGE_CHARS and message.text.endswith("…")


def test_empty_and_unknown_rows_are_left_out() -> None:
    rows = [row("customer", "> only a quote"), row("robot", "hi"), {"author": "store"}]
    assert thread_messages(rows) == []
