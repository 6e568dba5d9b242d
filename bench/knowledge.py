"""How well, and at what cost, each way of picking a store's knowledge finds what an email needs.

The labelled set (tests/unit/data/knowledge_queries.json: 37 questions in pt, en and es, each
labelled with the entries of the demo store's knowledge base, scripts/demo.d/knowledge.json, that
a good answer needs) is asked of every method:

    all      every entry (what a small store could do without picking)
    topic    entries of the topics the email's wording names (pt/en/es keyword lists)
    bm25     BM25 over folded 5-letter stems and the cross-language concept groups
    combined bm25 plus the topic boost: worker.knowledge.select as the worker runs it

For each: recall (needed entries given), precision (given entries needed), entries and characters
given per email (what the prompt pays: ~4 characters a token), and the median time of one pick.
`--scale N` pads the knowledge base with up to 96 generated FAQ entries about products, to see
recall and time when a store's knowledge is large (the table's bound is 200 entries).

    python -m bench.knowledge [--scale 96] [--repeat 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from worker import knowledge
from worker.responder import KnowledgeEntry

ROOT = Path(__file__).resolve().parents[1]
STORE_FILE = ROOT / "scripts" / "demo.d" / "knowledge.json"
QUERIES_FILE = ROOT / "tests" / "unit" / "data" / "knowledge_queries.json"

Picker = Callable[[Sequence[KnowledgeEntry], str, str], list[KnowledgeEntry]]

PRODUCTS = (
    "camiseta básica",
    "moletom canguru",
    "calça jeans",
    "tênis de corrida",
    "bolsa de couro",
    "caneca de cerâmica",
    "cachecol de lã",
    "boné aba reta",
    "jaqueta corta-vento",
    "vestido midi",
    "meia esportiva",
    "mochila escolar",
)
ASPECTS = (
    ("Composição", "é feito de algodão orgânico e poliéster reciclado, com costura reforçada."),
    ("Cores", "está disponível nas cores preto, branco, areia e verde-oliva."),
    (
        "Modelagem",
        "tem modelagem regular; quem prefere mais folgado pode escolher um número acima.",
    ),
    ("Origem", "é fabricado em Santa Catarina por uma confecção parceira."),
    ("Garantia", "tem garantia de fábrica de 90 dias contra defeitos de costura."),
    ("Lavagem", "pode ser lavado na máquina em ciclo delicado, sem alvejante."),
    ("Reposição", "volta ao estoque a cada seis semanas, em média."),
    ("Estampa", "tem estampa em serigrafia à base d'água, que não desbota."),
)


@dataclass(frozen=True)
class Result:
    """One method's scores on the labelled set."""

    method: str
    entries_in_store: int
    recall: float
    precision: float
    entries_per_email: float
    chars_per_email: float
    pick_median_us: float


def load_store(scale: int) -> list[KnowledgeEntry]:
    """The demo store's entries plus `scale` generated product FAQ entries."""
    store = [KnowledgeEntry(**e) for e in json.loads(STORE_FILE.read_text(encoding="utf-8"))]
    generated = [
        KnowledgeEntry("faq", f"{aspect}: {product}", f"O produto {product} {text}")
        for product in PRODUCTS
        for aspect, text in ASPECTS
    ]
    return store + generated[:scale]


def pick_all(entries: Sequence[KnowledgeEntry], subject: str, body: str) -> list[KnowledgeEntry]:
    return list(entries)


def pick_topic(entries: Sequence[KnowledgeEntry], subject: str, body: str) -> list[KnowledgeEntry]:
    return knowledge.select(entries, subject, body, bm25_weight=0.0)


def pick_bm25(entries: Sequence[KnowledgeEntry], subject: str, body: str) -> list[KnowledgeEntry]:
    return knowledge.select(entries, subject, body, topic_boost=0.0)


def pick_combined(
    entries: Sequence[KnowledgeEntry], subject: str, body: str
) -> list[KnowledgeEntry]:
    return knowledge.select(entries, subject, body)


METHODS: dict[str, Picker] = {
    "all": pick_all,
    "topic": pick_topic,
    "bm25": pick_bm25,
    "combined": pick_combined,
}


def measure(
    name: str, pick: Picker, store: list[KnowledgeEntry], queries: list[dict[str, Any]], repeat: int
) -> Result:
    needed = found = given = chars = 0
    for query in queries:
        titles = [e.title for e in pick(store, query["subject"], query["body"])]
        chosen = [e for e in store if e.title in titles]
        needed += len(query["expected"])
        found += sum(1 for title in query["expected"] if title in titles)
        given += len(titles)
        chars += sum(len(e.title) + len(e.body) for e in chosen)
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        for query in queries:
            pick(store, query["subject"], query["body"])
        timings.append((time.perf_counter() - started) / len(queries))
    useful = sum(
        1
        for query in queries
        for title in {e.title for e in pick(store, query["subject"], query["body"])}
        if title in query["expected"]
    )
    return Result(
        method=name,
        entries_in_store=len(store),
        recall=found / needed if needed else 1.0,
        precision=useful / given if given else 1.0,
        entries_per_email=given / len(queries),
        chars_per_email=chars / len(queries),
        pick_median_us=statistics.median(timings) * 1e6,
    )


def table(results: list[Result]) -> str:
    head = (
        f"{'method':<9} {'entries':>7} {'recall':>7} {'precision':>9} {'given/email':>11} "
        f"{'chars/email':>11} {'pick µs':>8} {'vs combined':>11}"
    )
    combined = next(r for r in results if r.method == "combined")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.method:<9} {r.entries_in_store:>7} {r.recall:>7.2f} {r.precision:>9.2f} "
            f"{r.entries_per_email:>11.2f} {r.chars_per_email:>11.0f} {r.pick_median_us:>8.0f} "
            f"{r.pick_median_us / combined.pick_median_us:>10.2f}x"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=0, help="generated entries to add")
    parser.add_argument("--repeat", type=int, default=50, help="timing repetitions (median)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    queries = json.loads(QUERIES_FILE.read_text(encoding="utf-8"))
    store = load_store(args.scale)
    results = [measure(n, p, store, queries, args.repeat) for n, p in METHODS.items()]
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(f"{len(queries)} labelled questions (pt, en, es), {len(store)} entries in the store")
        print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
