"""Model calls, tokens, cost and processing time per email over the answer-quality set (issue 15).

    .venv/bin/python bench/answers.py [--repeat 2] [--only id,id] [--json F]
    .venv/bin/python bench/answers.py --live      # real Claude: needs ANTHROPIC_API_KEY

Runs every case of tests/answers/cases through the real pipeline in this process
(worker.devstack.answer_set: a store per case, Postgres, the real anthropic SDK and Shopify
client, an SMTP sink), one email at a time, and prints one table: model calls and tokens per
email (uncached input, cache writes, cache reads, output), the cost per 1,000 emails at the
configured model's list price (worker/model_cost.py), and p50/p95 processing time (a job's claim
to its completion).

With the fakes (the default) Claude answers after `--claude-latency` seconds plus
`--claude-per-token` seconds per output token, and reports `usage` as the API does, token
counts estimated from the request (worker/devstack/fake_claude.py says how); its prompt cache
lives as long as the run, so the first email pays the cache writes a running worker pays once
per 5 minutes. With `--live` it calls the real API and also scores each reply: the case's
must-contain facts present, must-not facts absent, the language right.
"""

from __future__ import annotations

from script_path import ROOT  # first: swaps bench/ for the repository root on sys.path

# isort: split

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import DEFAULT_PGPORT, percentile, prepare_database, render_table
from worker.config import DEFAULTS
from worker.devstack import answer_set
from worker.devstack.fake_claude import TEST_API_KEY, FakeClaude
from worker.devstack.fake_shopify import Catalogue, FakeShopify
from worker.devstack.smtp_sink import SmtpSink
from worker.devstack.tls import create_test_ca
from worker.model_cost import PRICES_READ_ON, ModelUsage, cost_usd

DATABASE = "bench_answers"
# Haiku 4.5 as measured from Europe/US: ~0.6 s to the first token, ~150 output tokens a second.
CLAUDE_LATENCY = 0.6  # seconds per call
CLAUDE_PER_TOKEN = 1 / 150  # seconds per output token
SHOPIFY_LATENCY = 0.3  # seconds per GraphQL call, as in bench/pipeline.py
PER_THOUSAND = 1000


@dataclass
class Tally:
    """Per-email usage, times and outcomes of one pass over the set."""

    usage: list[ModelUsage] = field(default_factory=list)
    processing_ms: list[float] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    scores: list[dict[str, Any]] = field(default_factory=list)

    def add(self, run: answer_set.CaseRun, usage: ModelUsage) -> None:
        self.usage.append(usage)
        self.processing_ms.append(run.processing_ms)
        self.outcomes[run.outcome] = self.outcomes.get(run.outcome, 0) + 1


def usage_from_events(run: answer_set.CaseRun) -> ModelUsage:
    """The tokens the worker recorded for this email (process.model_usage events)."""
    total = ModelUsage()
    for event in run.events:
        if event["event_type"] == "process.model_usage":
            detail = event["detail"] or {}
            total += ModelUsage(**{k: int(detail.get(k) or 0) for k in ModelUsage().as_event()})
    return total


def run_set(args: argparse.Namespace, cases: list[answer_set.Case], url: str) -> Tally:
    tally = Tally()
    with ExitStack() as stack:
        ca = create_test_ca(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        sink = stack.enter_context(SmtpSink(ca))
        shopify = stack.enter_context(
            FakeShopify(
                Catalogue(),
                access_token=answer_set.SHOPIFY_TOKEN,
                latency_seconds=args.shopify_latency,
            )
        )
        claude: FakeClaude | None = None
        if not args.live:
            claude = stack.enter_context(
                FakeClaude(
                    api_key=TEST_API_KEY,
                    latency_seconds=args.claude_latency,
                    seconds_per_output_token=args.claude_per_token,
                )
            )
        config = answer_set.HarnessConfig(
            database_url=url,
            anthropic_key=os.environ["ANTHROPIC_API_KEY"] if args.live else TEST_API_KEY,
            anthropic_base_url=None if claude is None else claude.base_url,
            shopify_base_url=shopify.base_url,
            smtp_host=sink.host,
            smtp_port=sink.port,
            smtp_user=str(sink.username),
            smtp_password=str(sink.password),
            smtp_tls=sink.tls_mode,
            ca_file=str(ca.ca_file),
            model=args.model,
        )
        harness = answer_set.AnswerHarness(config, shopify)
        stack.callback(harness.close)
        for repeat in range(args.repeat):
            for case in cases:
                seen = len(claude.messages) if claude else 0
                run = harness.run_case(case)
                if claude is not None:
                    usage = ModelUsage()
                    for request in claude.messages[seen:]:
                        usage += ModelUsage.from_api(request.usage or {})
                else:
                    usage = usage_from_events(run)
                tally.add(run, usage)
                if args.live and repeat == 0:
                    tally.scores.append(answer_set.score_reply(run))
                print(
                    f"{case.id:<40} {run.outcome:<8} calls {usage.calls} "
                    f"in {usage.input_tokens} out {usage.output_tokens} "
                    f"cache w/r {usage.cache_creation_input_tokens}/"
                    f"{usage.cache_read_input_tokens} {run.processing_ms:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    return tally


def summary(tally: Tally, model: str) -> dict[str, Any]:
    """Per-email means, cost per 1,000 emails and processing-time percentiles."""
    emails = len(tally.usage)
    total = ModelUsage()
    for usage in tally.usage:
        total += usage
    cost = cost_usd(model, total)
    return {
        "emails": emails,
        "model": model,
        "prices_read_on": PRICES_READ_ON,
        "calls_per_email": total.calls / emails,
        "input_per_email": total.input_tokens / emails,
        "cache_write_per_email": total.cache_creation_input_tokens / emails,
        "cache_read_per_email": total.cache_read_input_tokens / emails,
        "output_per_email": total.output_tokens / emails,
        "usd_per_1000_emails": None if cost is None else cost / emails * PER_THOUSAND,
        "p50_ms": percentile(tally.processing_ms, 0.50),
        "p95_ms": percentile(tally.processing_ms, 0.95),
        "outcomes": dict(sorted(tally.outcomes.items())),
        "totals": total.as_event(),
    }


def git_label() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()[:60] or "this checkout"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="the real Claude API, scored")
    parser.add_argument("--repeat", type=int, default=1, help="passes over the set")
    parser.add_argument("--only", default="", help="comma-separated case ids")
    parser.add_argument("--model", default=None, help=f"default: {DEFAULTS.claude_model}")
    parser.add_argument("--claude-latency", type=float, default=CLAUDE_LATENCY)
    parser.add_argument("--claude-per-token", type=float, default=CLAUDE_PER_TOKEN)
    parser.add_argument("--shopify-latency", type=float, default=SHOPIFY_LATENCY)
    parser.add_argument("--pgport", type=int, default=int(os.environ.get("PGPORT", DEFAULT_PGPORT)))
    parser.add_argument("--url", help="an already prepared database (shared is fine)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--label", help="the table's name for this checkout (default: git log)")
    args = parser.parse_args(argv)

    if args.live and not os.environ.get("ANTHROPIC_API_KEY"):
        print(
            "bench/answers.py --live needs ANTHROPIC_API_KEY (a real key); nothing was run.",
            file=sys.stderr,
        )
        return 2
    cases = answer_set.load_cases()
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in cases if c.id in wanted]
        if len(cases) != len(wanted):
            print(f"unknown case ids: {sorted(wanted - {c.id for c in cases})}", file=sys.stderr)
            return 2
    url = args.url or prepare_database(args.pgport, DATABASE)
    model = args.model or DEFAULTS.claude_model
    tally = run_set(args, cases, url)
    result = summary(tally, model)
    result["label"] = args.label or git_label()
    result["claude"] = (
        "live"
        if args.live
        else (f"fake, {args.claude_latency} s + {args.claude_per_token * 1000:.1f} ms/output token")
    )
    cost = result["usd_per_1000_emails"]
    print(
        f"{len(cases)} cases x {args.repeat}: {result['emails']} emails, {result['claude']}, "
        f"Shopify {args.shopify_latency} s; {model} list prices of {PRICES_READ_ON}"
    )
    print(
        render_table(
            [
                "checkout",
                "calls/email",
                "input",
                "cache write",
                "cache read",
                "output",
                "$ per 1,000 emails",
                "p50 ms",
                "p95 ms",
            ],
            [
                [
                    result["label"][:40],
                    f"{result['calls_per_email']:.2f}",
                    f"{result['input_per_email']:.0f}",
                    f"{result['cache_write_per_email']:.0f}",
                    f"{result['cache_read_per_email']:.0f}",
                    f"{result['output_per_email']:.0f}",
                    "n/a" if cost is None else f"{cost:.2f}",
                    f"{result['p50_ms']:.0f}",
                    f"{result['p95_ms']:.0f}",
                ]
            ],
        )
    )
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in result["outcomes"].items()))
    if tally.scores:
        result["scores"] = tally.scores
        good = [
            s for s in tally.scores if s["all_present"] and not s["leaked"] and s["language_ok"]
        ]
        print(
            f"live score: {len(good)}/{len(tally.scores)} replies with every fact, no leak, "
            "right language"
        )
        for s in tally.scores:
            if s not in good:
                print(
                    f"  {s['id']}: facts {s['must_contain']} leaked {s['leaked']} "
                    f"language_ok {s['language_ok']} outcome {s['outcome']}"
                )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
